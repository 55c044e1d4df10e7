"""Running the `cyconv` command in-process, checking its one-line errors, and interrupting a training run
(shared by the CLI tests)."""

import contextlib
import io
import shlex

import pytest

import cyconv.train as train_module
from cyconv import cli


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    """No test downloads MNIST, and errors are one line (CYCONV_DEBUG unset). Autouse where imported."""
    monkeypatch.setenv(cli.ENV_NO_DOWNLOAD, "1")
    monkeypatch.delenv(cli.ENV_DEBUG, raising=False)


def run(capsys, *argv):
    """cli.main(argv) -> (exit status, stdout, stderr)."""
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def run_captured(*argv):
    """run() for module-scoped fixtures, which cannot use capsys: cli.main(argv) with stdout and stderr
    captured and downloads off -> (exit status, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr), pytest.MonkeyPatch.context() as m:
        m.setenv(cli.ENV_NO_DOWNLOAD, "1")
        status = cli.main([str(a) for a in argv])
    return status, stdout.getvalue(), stderr.getvalue()


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


@contextlib.contextmanager
def ctrl_c_in_the_second_epoch():
    """Ctrl-C as `cyconv train` starts its second epoch, after the first one's checkpoint is written."""
    real = train_module.train_epoch

    def stop_at_second_epoch(model, optimizer, x, y, config, epoch, *args):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(model, optimizer, x, y, config, epoch, *args)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(train_module, "train_epoch", stop_at_second_epoch)
        yield


def continue_command(err):
    """The command an interrupted `cyconv train` gave in its one line on stderr, as argv for cli.main."""
    lines = err.splitlines()
    assert len(lines) == 1 and "; continue with: cyconv " in lines[0], err
    return shlex.split(lines[0].split("; continue with: cyconv ", 1)[1])
