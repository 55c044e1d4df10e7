"""How many threads cyconv uses, and keeping BLAS from fighting OpenMP for the cores.

One number, `get_num_threads()`, sets the team size of every compiled kernel and
the thread count of the BLAS that NumPy and SciPy use (the linear layers' GEMMs).
Default: `OMP_NUM_THREADS` when set, else the number of cores this process may
run on. Inside a compiled kernel, BLAS is held to one thread (our OpenMP threads
call it per image), see `_kernels.blas_serial_begin`.
"""

import ctypes
import os

from threadpoolctl import ThreadpoolController

from . import _kernels

_num_threads = None
_controller = None


def _default_num_threads():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _blas_controller():
    global _controller
    if _controller is None:
        _controller = ThreadpoolController().select(user_api="blas")
    return _controller


def _openblas_thread_functions(lib):
    """(get, set) num_threads of one OpenBLAS, whatever its symbol prefix/suffix."""
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_", "_64"):
            get = getattr(lib.dynlib, f"{prefix}openblas_get_num_threads{suffix}", None)
            set_ = getattr(lib.dynlib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                return get, set_
    return None


def _install_blas_hooks():
    """Give the kernels C pointers to each OpenBLAS's get/set_num_threads."""
    hooks = []
    for lib in _blas_controller().lib_controllers:
        # Only OpenBLAS needs this: MKL runs single-threaded inside an OpenMP region.
        functions = _openblas_thread_functions(lib) if lib.internal_api == "openblas" else None
        if functions is not None:
            hooks.append(tuple(ctypes.cast(f, ctypes.c_void_p).value for f in functions))
    _kernels.set_blas_thread_hooks(hooks)


def get_num_threads():
    """The number of threads cyconv's kernels and BLAS calls use."""
    global _num_threads
    if _num_threads is None:
        _num_threads = _default_num_threads()
    return _num_threads


class set_num_threads:
    """Set the number of threads for cyconv's kernels and BLAS.

    Takes effect at once and stays in effect; used as a context manager it
    restores the previous setting on exit::

        cyconv.set_num_threads(2)
        with cyconv.set_num_threads(1):
            y = F.conv2d(x, w)      # single-threaded here
    """

    def __init__(self, n):
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"set_num_threads(): n must be an int, got {type(n).__name__}")
        if n < 1:
            raise ValueError(f"set_num_threads(): n must be >= 1, got {n}")
        global _num_threads
        self._previous = get_num_threads()
        self._blas_limiter = _blas_controller().limit(limits=n)
        _num_threads = n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        global _num_threads
        _num_threads = self._previous
        self._blas_limiter.restore_original_limits()
        return False

    def __repr__(self):
        return f"set_num_threads({get_num_threads()})"
