"""`python -m firebox` is the `firebox` command."""

from firebox.cli import main

main()
