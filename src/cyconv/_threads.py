"""How many threads cyconv uses, and keeping BLAS from fighting OpenMP for the cores.

One number, `get_num_threads()`, is the OpenMP team size of every compiled
kernel. Default: `OMP_NUM_THREADS` when set, else the number of cores this
process may run on.

Every GEMM of cyconv (convolution and linear layers) is a single-threaded call
to SciPy's BLAS from inside one of our OpenMP threads, so there is only one
thread pool, ours. To keep it that way cyconv sets the OpenBLAS that SciPy's
`cython_blas` uses to one thread (see `_kernels.blas_single_threaded`); NumPy's
own BLAS, when it is a separate library as in the PyPI wheels, is not touched.
"""

import ctypes
import os
from pathlib import Path

from threadpoolctl import ThreadpoolController

from . import _kernels

_num_threads = None


def _default_num_threads():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _openblas_thread_functions(lib):
    """(get, set) num_threads of one OpenBLAS, whatever its symbol prefix/suffix."""
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_", "_64"):
            get = getattr(lib.dynlib, f"{prefix}openblas_get_num_threads{suffix}", None)
            set_ = getattr(lib.dynlib, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                return get, set_
    return None


def _scipy_openblas_libs():
    """The OpenBLAS libraries that scipy.linalg.cython_blas may be calling.

    SciPy's wheels bundle their own (under scipy.libs/); a SciPy built against a
    system OpenBLAS shares it with NumPy, and then that one must be pinned too.
    MKL needs nothing: it runs single-threaded inside an OpenMP region.
    """
    openblas = [lib for lib in ThreadpoolController().select(user_api="blas").lib_controllers
                if lib.internal_api == "openblas"]
    scipy_own = [lib for lib in openblas
                 if "scipy" in str(Path(lib.filepath).parent).lower()
                 and "numpy" not in str(Path(lib.filepath).parent).lower()]
    return scipy_own or openblas


def blas_description():
    """The BLAS that scipy.linalg.cython_blas calls, e.g. 'openblas 0.3.30 (Haswell)'."""
    libs = _scipy_openblas_libs() or ThreadpoolController().select(user_api="blas").lib_controllers
    if not libs:
        return "unknown"
    info = libs[0].info()
    arch = f" ({info['architecture']})" if info.get("architecture") else ""
    return f"{info['internal_api']} {info.get('version') or ''}".strip() + arch


def _install_blas_hooks():
    """Give the kernels C pointers to get/set_num_threads of SciPy's OpenBLAS."""
    hooks = []
    for lib in _scipy_openblas_libs():
        functions = _openblas_thread_functions(lib)
        if functions is not None:
            hooks.append(tuple(ctypes.cast(f, ctypes.c_void_p).value for f in functions))
    _kernels.set_blas_thread_hooks(hooks)


def get_num_threads():
    """The number of OpenMP threads cyconv's kernels use."""
    global _num_threads
    if _num_threads is None:
        _num_threads = _default_num_threads()
    return _num_threads


class set_num_threads:
    """Set the number of threads cyconv's kernels use.

    Takes effect at once and stays in effect; used as a context manager it
    restores the previous setting on exit::

        cyconv.set_num_threads(2)
        with cyconv.set_num_threads(1):
            y = F.conv2d(x, w)      # single-threaded here

    In a build without OpenMP the kernels run on one thread whatever this says.
    """

    def __init__(self, n):
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"set_num_threads(): n must be an int, got {type(n).__name__}")
        if n < 1:
            raise ValueError(f"set_num_threads(): n must be >= 1, got {n}")
        global _num_threads
        self._previous = get_num_threads()
        _num_threads = n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        global _num_threads
        _num_threads = self._previous
        return False

    def __repr__(self):
        return f"set_num_threads({get_num_threads()})"
