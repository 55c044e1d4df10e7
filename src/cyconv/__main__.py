"""`python -m cyconv`: the same as the `cyconv` command (see cyconv.cli)."""

from .cli import main

raise SystemExit(main())
