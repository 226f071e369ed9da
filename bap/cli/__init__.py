"""The ``bap`` command line: thin typer commands over the library."""
