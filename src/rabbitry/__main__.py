"""``python -m rabbitry``: the ``rabbitry`` command (``rabbitry run --reload`` restarts itself
so, with the interpreter it runs on)."""

from rabbitry.cli.app import main

main()
