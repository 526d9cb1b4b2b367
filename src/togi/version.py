"""The version of togi, in a module of its own: the run directory and the CLI read it without importing the package root."""

__version__ = "0.1.0"
