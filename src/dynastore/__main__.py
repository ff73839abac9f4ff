"""`python -m dynastore` is the `dynastore` command."""

from dynastore.cli import main

main(prog_name="dynastore")
