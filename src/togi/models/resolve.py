"""Turning the ``--model`` a user gives into something loadable.

A model reference is one of: the embedded default's name (``smollm2-135m-instruct``, used when no
model is given), the embedded text encoder's name (``all-MiniLM-L6-v2``, the default for classification),
a local Hugging Face directory, a ``.gguf`` file, or a hub id that is already in the
local cache (nothing is downloaded unless the hub is reachable and allowed).

A togi run directory is none of these, and this module does not know its layout (``togi.runs``, a layer up,
does): where a user may give a run as a model, the layer that takes it asks ``togi.runs.refuse_run_as_model``
first, which names the way to the run's weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from togi.errors import TogiError
from togi.models.embedded import EMBEDDED_MODEL_NAME, EmbeddedModelMissing, embedded_gguf_path, ensure_embedded_model
from togi.models.encoder import ENCODER_MODEL_NAME, EncoderModelMissing, encoder_model_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class ModelNotFound(TogiError):
    """A model reference that names nothing loadable here."""


@dataclass(frozen=True)
class ModelSource:
    """Where to load a model from: a directory, plus a GGUF file name inside it when it is one."""

    reference: str
    directory: Path | str
    gguf_file: str | None = None

    @property
    def is_embedded(self) -> bool:
        return self.reference == EMBEDDED_MODEL_NAME


def resolve_model(reference: str | None, log: Callable[[str], None] = lambda message: None) -> ModelSource:
    reference = reference or EMBEDDED_MODEL_NAME
    if reference == EMBEDDED_MODEL_NAME:
        try:
            return ModelSource(reference, ensure_embedded_model(log))
        except EmbeddedModelMissing as error:
            raise ModelNotFound(error.message, error.hint) from error
    if reference == ENCODER_MODEL_NAME:
        try:
            return ModelSource(reference, encoder_model_dir())
        except EncoderModelMissing as error:
            raise ModelNotFound(error.message, error.hint) from error
    path = Path(reference).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelNotFound(f"no GGUF file at {path}", "check the path")
        return ModelSource(reference, path.parent, path.name)
    if path.is_dir():
        if not (path / "tokenizer_config.json").is_file() and not (path / "tokenizer.json").is_file():
            raise ModelNotFound(f"{path} holds no tokenizer (tokenizer.json or tokenizer_config.json)",
                                "point --model at a Hugging Face model directory saved with save_pretrained")
        return ModelSource(reference, path)
    if path.exists() or reference.startswith((".", "/", "~")) or reference.count("/") > 1:
        raise ModelNotFound(f"no model directory at {path}", "check the path, or use a hub id such as org/name")
    return ModelSource(reference, reference)  # a hub id, looked up in the local cache first


def load_tokenizer(reference: str | None, log: Callable[[str], None] = lambda message: None) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    source = resolve_model(reference, log)
    try:
        return AutoTokenizer.from_pretrained(source.directory, gguf_file=source.gguf_file)
    except OSError as error:
        raise ModelNotFound(
            f"cannot load the tokenizer of {source.reference!r}: {str(error).splitlines()[0]}",
            "for a hub id, download it once while online (or set HF_HOME to a cache that has it); "
            f"offline, use a local directory, a .gguf file or {EMBEDDED_MODEL_NAME}",
        ) from error


def embedded_model_available() -> bool:
    try:
        embedded_gguf_path()
    except EmbeddedModelMissing:
        return False
    return True
