"""`python -m cyconv`: the same as the `cyconv` command (see cyconv.cli)."""

from .cli import command

raise SystemExit(command())
