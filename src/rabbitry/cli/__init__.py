"""The ``rabbitry`` command line: Typer commands that parse, call one library function, print."""
