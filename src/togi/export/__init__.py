"""Export a run for use elsewhere: merged weights, adapter, GGUF, Ollama, ONNX and the Hub."""


class ExportError(Exception):
    """An export that cannot be made; the message says why and what to do."""
