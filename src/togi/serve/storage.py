"""Where the server's files and models live: its data directory (the default), or object storage mirroring it.

``togi serve --storage s3://bucket/prefix`` (any fsspec URL: ``gs://``, ``az://``, ``memory://``) keeps under the prefix
what the data directory holds (``files/<id>.jsonl``, ``jobs/<job>/run/...``, ``jobs/<job>/checkpoints/step-N``), and
each machine's data directory becomes its cache of it. A path under the data directory is named the same everywhere,
so the job records keep the paths they have on a laptop:

- ``publish(path)`` copies a file or directory the server or a job process wrote to the bucket;
- ``materialize(path)`` fetches it into this machine's data directory where it is missing (a replica serving a model
  that another machine trained, a job resumed on another node);
- ``open_read(path)`` streams it, ``delete(path)`` removes both copies.

With the default storage (the data directory itself) ``publish`` and ``materialize`` do nothing, so ``togi serve`` on a
laptop works as it always has. Uploads stream in 1 MiB chunks to a temporary file in the data directory (``files.py``),
then in chunks to the bucket: a file is never held whole in memory. Credentials and endpoints are fsspec's and
botocore's own settings (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL`` for MinIO and other S3-compatible stores).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from togi.errors import TogiError

CHUNK = 1 << 20
PART = 5 << 20  # S3's smallest multipart part: what an upload holds in memory at a time


class StorageUnavailable(TogiError):
    """The bucket refused or failed an operation (credentials, network, a missing bucket)."""

    hint = "check the bucket and its credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL); the server retries"


class Storage:
    def __init__(self, data_dir: Path, url: str | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.url = url or ""
        self.fs = None
        self.sent: dict[Path, tuple[int, int]] = {}  # each file this object published: (size, mtime_ns) when it did
        if url:
            import fsspec

            try:
                self.fs, self.root = fsspec.core.url_to_fs(url)
            except (ImportError, ValueError) as error:
                package = " (pip install 'togi[cluster]' for s3://)" if isinstance(error, ImportError) else ""
                raise TogiError(f"--storage {url}: {str(error).splitlines()[0]}{package}",
                                hint="use a URL fsspec knows, such as s3://bucket/prefix, or leave --storage out to keep "
                                     "everything in --data-dir") from error
            self.root = self.root.rstrip("/")

    @property
    def remote(self) -> bool:
        return self.fs is not None

    def check(self) -> None:
        """Fail with the URL and the reason when the bucket cannot be listed (wrong name, no credentials)."""
        if not self.remote:
            return
        try:
            self.fs.ls(self.root.split("/", 1)[0], detail=False)
        except Exception as error:  # botocore's, aiohttp's and fsspec's errors have no common base
            raise TogiError(f"--storage {self.url}: cannot list the bucket ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})",
                            hint="check the bucket's name and the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                                 "AWS_ENDPOINT_URL for an S3-compatible store such as MinIO)") from error

    def key(self, path: Path) -> str:
        """The object name of a path under the data directory."""
        relative = Path(path).resolve().relative_to(self.data_dir).as_posix()
        return f"{self.root}/{relative}"

    def holds(self, path: Path) -> bool:
        """Whether ``path`` is the storage's to mirror: under the data directory (an adapter the server was started
        with, elsewhere on disk, is not)."""
        return Path(path).resolve().is_relative_to(self.data_dir)

    @contextmanager
    def _bucket(self, doing: str, missing_is_an_answer: bool = True) -> Iterator[None]:
        """Errors of the bucket (botocore's, aiohttp's, fsspec's: they share no base) as ``StorageUnavailable``. s3fs
        says FileNotFoundError both for a missing object (an answer, where reading) and a missing bucket."""
        try:
            yield
        except TogiError:
            raise
        except FileNotFoundError:
            if missing_is_an_answer:
                raise
            raise StorageUnavailable(f"object storage {self.url}: cannot {doing} (the bucket does not exist)") from None
        except Exception as error:
            raise StorageUnavailable(f"object storage {self.url}: cannot {doing} ({type(error).__name__}: {error})") from error

    def publish(self, path: Path, skip: tuple[str, ...] = ()) -> None:
        """Copy a file, or a directory's files (but those whose relative path starts with one of ``skip``), to the bucket."""
        if not self.remote:
            return
        with self._bucket(f"store {Path(path).name}", missing_is_an_answer=False):
            self._publish(Path(path), skip)

    def _publish(self, path: Path, skip: tuple[str, ...]) -> None:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if skip and file.relative_to(path).as_posix().startswith(skip):
                continue
            stat = file.stat()
            if self.sent.get(file) == (stat.st_size, stat.st_mtime_ns):
                continue  # unchanged since it was sent: a run's data/ and card go once, not at every checkpoint
            with open(file, "rb") as source, self.fs.open(self.key(file), "wb", block_size=PART) as target:
                shutil.copyfileobj(source, target, CHUNK)  # s3fs sends each PART as it fills (put_file would read 50 MiB at once)
            self.sent[file] = (stat.st_size, stat.st_mtime_ns)

    def materialize(self, path: Path) -> Path:
        """``path``, fetched from the bucket where this machine does not have it (a file, or all of a directory)."""
        path = Path(path)
        if not self.remote or path.exists() or not self.holds(path):
            return path
        with self._bucket(f"fetch {path.name}"):
            self._materialize(path)
        return path

    def _materialize(self, path: Path) -> None:
        key = self.key(path)
        self.fs.invalidate_cache()  # another machine may have written it since this one last looked
        if self.fs.isfile(key):
            self._fetch_file(key, path)
        elif self.fs.isdir(key):
            for name in self.fs.find(key):
                self._fetch_file(name, path / Path(name).relative_to(key))

    def refresh(self, path: Path) -> None:
        """Replace a local directory with the bucket's copy (a run resumed on another machine)."""
        if not self.remote:
            return
        with self._bucket(f"fetch {path.name}"):
            self.fs.invalidate_cache()
            if self.fs.isdir(self.key(path)):
                shutil.rmtree(path, ignore_errors=True)
                self._materialize(path)

    def _fetch_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.part")
        self.fs.get_file(key, str(partial))
        os.replace(partial, path)

    def remove_missing(self, directory: Path, under: str) -> None:
        """Delete from the bucket what ``directory/under`` no longer holds here (checkpoints the trainer rotated out)."""
        if not self.remote:
            return
        prefix = self.key(directory / under)
        with self._bucket(f"clean {under}"):
            for name in self.fs.ls(prefix, detail=False) if self.fs.isdir(prefix) else []:
                if not (directory / under / Path(name).name).exists():
                    self.fs.rm(name, recursive=True)

    def open_read(self, path: Path) -> IO[bytes]:
        if self.remote and not Path(path).exists():
            with self._bucket(f"read {Path(path).name}"):
                return self.fs.open(self.key(path), "rb")
        return open(path, "rb")

    def chunks(self, path: Path) -> Iterator[bytes]:
        with self.open_read(path) as stream:
            while chunk := stream.read(CHUNK):
                yield chunk

    def delete(self, path: Path) -> None:
        path = Path(path)
        self.sent = {file: sent for file, sent in self.sent.items() if not file.is_relative_to(path)}
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if self.remote:
            with self._bucket(f"delete {path.name}"):
                if self.fs.exists(self.key(path)):
                    self.fs.rm(self.key(path), recursive=True)


def open_storage(url: str | None, data_dir: Path) -> Storage:
    """The storage a server (``--storage``) or its job process (``TOGI_STORAGE``) uses."""
    return Storage(data_dir, url or None)
