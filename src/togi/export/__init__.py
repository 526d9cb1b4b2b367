"""Export a run for use elsewhere: merged weights, adapter, GGUF, Ollama, ONNX and the Hub."""

from togi.errors import TogiError


class ExportError(TogiError):
    """An export that cannot be made; the message says why, the hint what to do."""

    hint = "see `togi export --help`"
