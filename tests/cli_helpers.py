"""Running the `cyconv` command in-process and checking its one-line errors (shared by the CLI tests)."""

from cyconv import cli


def run(capsys, *argv):
    """cli.main(argv) -> (exit status, stdout, stderr)."""
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_error(result, status, match):
    """The command failed with `status` and exactly one line on stderr, "cyconv: error: ..." containing
    `match`, and no traceback."""
    code, _, err = result
    lines = err.splitlines()
    assert code == status, err
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("cyconv: error: "), lines[0]
    assert match in lines[0], lines[0]
    assert "Traceback" not in err
