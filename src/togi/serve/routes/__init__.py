"""The API's routers, one per resource: files, fine-tuning jobs, and models with their chat completions."""
