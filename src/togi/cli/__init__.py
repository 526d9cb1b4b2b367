"""The ``togi`` command line: thin typer commands over the library, rendered with rich."""
