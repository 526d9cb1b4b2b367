"""Export: merged weights and portable adapters (GGUF, Ollama, ONNX and hub come next)."""
