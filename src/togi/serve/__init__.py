"""Using a model: interactive chat now, the OpenAI-compatible server next."""
