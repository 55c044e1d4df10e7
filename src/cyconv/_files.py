"""Writing files atomically: the one place every file cyconv writes goes through
(MNIST downloads, checkpoints, metrics)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(f) on a temp file in path's directory, fsync it, then rename it over path.

    Readers (and other processes writing the same file) see the old file or the complete new
    one, never a partial one; on any error (or Ctrl-C) the temp file is removed and path is
    untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes files 0600; outputs and caches are meant to be readable
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        # A Ctrl-C inside a writer's own clean-up (np.savez closing its zip file with a
        # member still open) surfaces as the clean-up's ValueError: report the interrupt,
        # which is what happened.
        if not isinstance(exc, KeyboardInterrupt) and isinstance(exc.__context__, KeyboardInterrupt):
            raise exc.__context__ from None
        raise
    _fsync_dir(path.parent)


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
