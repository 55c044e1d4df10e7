"""cyconv: a small, fast, honest convolutional-network engine.

    cyconv.functional   compiled kernels (Cython + C + OpenMP), NumPy in and out
    cyconv.reference    the same functions in plain NumPy: the statement of what is correct

Threads: `get_num_threads()`, `set_num_threads(n)` (also a context manager),
`openmp_enabled()`.
"""

from . import _threads
from ._kernels import openmp_enabled
from ._threads import get_num_threads, set_num_threads

__version__ = "0.1.0"
__all__ = ["openmp_enabled", "get_num_threads", "set_num_threads"]

_threads._install_blas_hooks()
