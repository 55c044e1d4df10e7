"""Writing files atomically: the one place every file cyconv writes goes through (MNIST downloads,
checkpoints, metrics), and removing what a writer killed mid-write left behind."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import tempfile
import threading
from pathlib import Path

# Test-only: tests/test_robustness.py sets this to a function(point, path) that stops a writer at a
# known point, to kill or interrupt it exactly there: "temp-created", "written" (data fsynced, not yet
# renamed) and "renamed" (in place, the directory not yet fsynced). None otherwise: one comparison each.
_test_pause = None


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(f) on a temp file in path's directory, fsync it, then rename it over path.

    Readers (and other processes writing the same file) see the old file or the complete new
    one, never a partial one; on any error the temp file is removed and path is untouched.
    A Ctrl-C arriving during the write is held until the file is in place (the write takes
    milliseconds), then raised: an interrupt landing between creating the temp file and entering
    the clean-up, or inside np.savez's zip writer, would otherwise leave a stray temp file or come
    out as some other exception. On an error the temp file is removed first, and the interrupt
    still comes out (the error as its context).
    """
    path = Path(path)
    with _sigint_deferred():
        # The writer's PID in the name tells remove_stale_temp_files whether the write can still be going on.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
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
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if _test_pause is not None:
            _test_pause("renamed", path)
        _fsync_dir(path.parent)


@contextlib.contextmanager
def _sigint_deferred():
    """Hold back a Ctrl-C for the duration: a Python-level SIGINT handler records it, and on exit the
    previous handler is put back and called with it (Python's default one raises KeyboardInterrupt).

    Not pthread_sigmask: the mask is per thread, and by the time a checkpoint is written BLAS and OpenMP
    have worker threads; the kernel hands SIGINT to one of those, CPython's C handler flags it, and the
    main thread raises KeyboardInterrupt inside the write anyway. Python runs signal handlers in the main
    thread only, so that is where the interrupt is held.

    Nothing is deferred outside the main thread (only it may set handlers, and KeyboardInterrupt is never
    raised elsewhere), nor when the previous handler is not a Python callable: SIG_IGN has nothing to
    hold, SIG_DFL asked for the process to die at once (as on SIGKILL: the next training run removes the
    temp file, see remove_stale_temp_files), and None (a handler set from C) cannot be put back.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    held = []  # the frame each Ctrl-C interrupted
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
    try:
        yield
    finally:
        # A signal whose Python handler has not run yet is handled by `previous` from here on
        # (signal.signal itself runs pending handlers): either way it comes out once.
        signal.signal(signal.SIGINT, previous)
        if held:
            previous(signal.SIGINT, held[0])


def remove_stale_temp_files(directory: str | os.PathLike, names) -> list[Path]:
    """Remove the temp files atomic_write left in `directory` for the files `names` when its process died
    mid-write (SIGKILL, a crash, a power cut); return them.

    A temp file is ".<name>.<writer's PID>.<random>.tmp", and one is stale when no process has that PID:
    a write still going on, in this process or another, keeps its file. A PID, not the file's age, because
    the run resumed right after a kill is the one that should clean up, and no age tells a slow disk from
    a dead writer. A PID reused since keeps its file until a later run, the safe side. PIDs say nothing
    about another machine or PID namespace sharing the directory; two runs writing one output directory at
    once are not supported anyway (each would overwrite the other's checkpoint).
    """
    if os.name == "nt":  # os.kill(pid, 0) would not test the process there, it would end it
        return []
    stale = re.compile(rf"\.(?:{'|'.join(re.escape(name) for name in names)})\.(\d+)\.[^.]+\.tmp")
    removed = []
    for entry in Path(directory).iterdir():
        match = stale.fullmatch(entry.name)
        if match and not _running(int(match[1])):
            entry.unlink(missing_ok=True)  # missing: another run starting there removed it first
            removed.append(entry)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; more digits than a PID: keep it
        pass
    return True


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
