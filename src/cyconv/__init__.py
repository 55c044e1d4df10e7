"""cyconv: a small, fast, honest convolutional-network engine.

    cyconv.functional   compiled kernels (Cython + C + OpenMP), NumPy in and out
    cyconv.reference    the same functions in plain NumPy: the statement of what is correct
    cyconv.nn           PyTorch-shaped modules (Conv2d, MaxPool2d, ReLU, Flatten, Linear, Sequential)
    cyconv.optim        SGD with momentum and weight decay, learning-rate schedules
    cyconv.models       the course's LeNet-5 and two-layer MLP, and summary()
    cyconv.data         MNIST (find, download, verify, load), image folders, make_shapes
    cyconv.features     hand-crafted features: pixels, colour histograms, HOG (compiled)
    cyconv.compile      a model's inference pass as one compiled call (cyconv.predictor)

Threads: `get_num_threads()`, `set_num_threads(n)` (also a context manager),
`openmp_enabled()`. Instruction set: `get_isa()`, `set_isa(name)` (also a context
manager), `supported_isas()`; `build_info()` says what this build runs with.
Memory: importing cyconv leaves the process's malloc alone; the `cyconv` command keeps
freed arrays' memory for reuse in its own process (cyconv._malloc).
"""

from . import _isa, _malloc, _threads, data, features, functional, models, nn, optim, predictor, reference
from ._isa import build_info, get_isa, set_isa, supported_isas
from ._kernels import openmp_enabled
from ._threads import get_num_threads, set_num_threads
from .predictor import Predictor, compile  # noqa: A004 (cyconv.compile, as torch.compile)

__version__ = "0.1.0"
__all__ = ["openmp_enabled", "get_num_threads", "set_num_threads", "get_isa", "set_isa", "supported_isas",
           "build_info", "compile", "Predictor"]

_threads._install_blas_hooks()
_isa._select_from_environment()
