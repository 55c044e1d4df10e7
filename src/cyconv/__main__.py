"""`python -m cyconv`: the same as the `cyconv` command (see cyconv.tools.cli)."""

from .tools.cli import command

raise SystemExit(command())
