"""Writing files atomically: the one place every file cyconv writes goes through
(MNIST downloads, checkpoints, metrics)."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from pathlib import Path

# Test-only: tests/test_robustness.py sets this to a function(point, path) that stops a writer at a known
# point, to kill or interrupt it exactly there: "temp-created", "written" (data fsynced, not yet renamed)
# and "renamed" (in place, the directory not yet fsynced). None otherwise, which costs one comparison per point.
_test_pause = None


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(f) on a temp file in path's directory, fsync it, then rename it over path.

    Readers (and other processes writing the same file) see the old file or the complete new
    one, never a partial one; on any error the temp file is removed and path is untouched.
    A Ctrl-C arriving during the write is held until the file is in place (the write takes
    milliseconds): an interrupt landing between creating the temp file and entering the
    clean-up, or inside np.savez's zip writer, would otherwise leave a stray temp file or
    come out as some other exception.
    """
    path = Path(path)
    with _sigint_deferred():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                if _test_pause is not None:
                    _test_pause("temp-created", path)
                os.fchmod(fd, 0o644)  # mkstemp makes files 0600; outputs and caches are meant to be readable
                write(f)
                f.flush()
                os.fsync(f.fileno())
            if _test_pause is not None:
                _test_pause("written", path)
            os.replace(tmp, path)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            # Where SIGINT cannot be held (no pthread_sigmask), a Ctrl-C inside np.savez's
            # clean-up surfaces as its ValueError: report the interrupt, which is what happened.
            if not isinstance(exc, KeyboardInterrupt) and isinstance(exc.__context__, KeyboardInterrupt):
                raise exc.__context__ from None
            raise
        if _test_pause is not None:
            _test_pause("renamed", path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _sigint_deferred():
    """Block SIGINT in this thread for the duration; a pending one is delivered on exit."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; not every platform lets a directory be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
