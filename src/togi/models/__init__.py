"""Resolving model references (embedded default, local directory, GGUF file, hub id) and loading them."""
