"""Files on disk: stored under their id, never under a name the client chose, and written atomically."""

from __future__ import annotations

import os
import re
import tempfile
import time
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from togi.errors import TogiError
from togi.serve.store import Store, new_id

if TYPE_CHECKING:
    from togi.serve.storage import Storage

CHUNK = 1 << 20


class FileTooLarge(TogiError):
    """An upload over the server's size limit."""

    hint = "split the file, or start the server with a larger `togi serve --max-file-mb`"


def clean_filename(name: str | None) -> str:
    """A display name that is safe to show and to echo back: no directories, no control characters, at most 255 characters."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip().lstrip(".")
    return base[:255] or "upload"


def file_record(file_id: str, filename: str, purpose: str, size: int, stored_as: str) -> dict[str, Any]:
    return {"id": file_id, "object": "file", "bytes": size, "created_at": int(time.time()), "filename": filename,
            "purpose": purpose, "status": "processed", "status_details": None, "expires_at": None, "internal": {"stored_as": stored_as}}


def file_path(data_dir: Path, record: dict[str, Any]) -> Path:
    return data_dir / "files" / record["internal"]["stored_as"]


DATA_EXTENSIONS = (".jsonl", ".json", ".csv", ".tsv")


def _stored_name(file_id: str, filename: str, head: bytes) -> str:
    """``<id>.<extension>``: the id keeps it inside files/, the extension tells the data reader the format. A name
    that does not say the format (``train``, ``data.txt``, a name cut at 255 bytes) gets one from the content."""
    extension = Path(filename).suffix.lower()
    if extension not in DATA_EXTENSIONS:
        extension = sniff_extension(head) or (extension if re.fullmatch(r"\.[a-z0-9]{1,8}", extension) else "")
    return file_id + extension


def sniff_extension(head: bytes) -> str | None:
    """The data format the first bytes of a file show: a JSON array, JSON lines, or a CSV/TSV header line."""
    text = head.decode("utf-8", errors="ignore").lstrip("\ufeff \t\r\n")
    if text.startswith("["):
        return ".json"
    if text.startswith("{"):
        return ".jsonl"
    first_line = text.split("\n", 1)[0]
    if "\t" in first_line:
        return ".tsv"
    if "," in first_line:
        return ".csv"
    return None


def store_stream(store: Store, data_dir: Path, organization: str, filename: str | None, purpose: str, stream: BinaryIO,
                 max_bytes: int, storage: Storage | None = None) -> dict[str, Any]:
    """Copy an upload to ``files/<id>`` through a temporary file, in chunks, then to the bucket where ``storage`` is one;
    nothing is kept if it is over ``max_bytes``."""
    directory = data_dir / "files"
    directory.mkdir(parents=True, exist_ok=True)
    file_id, filename = new_id("file"), clean_filename(filename)
    descriptor, temporary = tempfile.mkstemp(prefix=".upload-", dir=directory)
    size, head = 0, b""
    try:
        with os.fdopen(descriptor, "wb") as out:
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise FileTooLarge(f"the file is larger than the server's limit of {max_bytes:,} bytes")
                head = head or chunk[:65536]
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        stored_as = _stored_name(file_id, filename, head)
        os.replace(temporary, directory / stored_as)
        temporary = str(directory / stored_as)  # from here, what to remove should the bucket refuse it
        if storage is not None:
            storage.publish(directory / stored_as)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return store.put("file", file_record(file_id, filename, purpose, size, stored_as), organization)


def store_bytes(store: Store, data_dir: Path, organization: str, filename: str, purpose: str, content: bytes,
                storage: Storage | None = None) -> dict[str, Any]:
    import io

    return store_stream(store, data_dir, organization, filename, purpose, io.BytesIO(content), max_bytes=len(content) + 1, storage=storage)
