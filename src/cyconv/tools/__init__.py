"""The tools: the `cyconv` command (cli.py), `cyconv compare` (compare.py) and `cyconv plots` (plots.py;
needs matplotlib, imported only when used)."""
