"""cyconv: a small, fast, honest convolutional-network engine.

The package's folders are its layers, bottom up:

    cyconv.kernels    the compiled extension (_kernels.pyx and its op-family .pxi files, over csrc/),
                      reference.py (their NumPy twins), isa.py, threads.py, malloc.py
    cyconv.layers     functional.py (the kernels as NumPy-in, NumPy-out functions), nn.py (modules),
                      graph.py (a model as a graph of layers), models.py (LeNet-5 ... ResNet, MobileNet)
    cyconv.data       MNIST, image folders, the synthetic shapes, picture decoding, hand-crafted features
    cyconv.training   train.py, optim.py, checkpoint.py, distributed.py (MPI)
    cyconv.deploy     predictor.py (cyconv.compile), onnx.py, serve.py (`cyconv serve`, FastAPI)
    cyconv.tools      cli.py (the `cyconv` command), compare.py, plots.py

Every module keeps its short public name as well: `cyconv.functional`, `cyconv.nn`, `cyconv.train`,
`cyconv.serve` ... are the modules above (the same objects; see _MODULES below).

Threads: `get_num_threads()`, `set_num_threads(n)` (also a context manager),
`openmp_enabled()`. Instruction set: `get_isa()`, `set_isa(name)` (also a context
manager), `supported_isas()`; `build_info()` says what this build runs with.
Memory: importing cyconv leaves the process's malloc alone; the `cyconv` command keeps
freed arrays' memory for reuse in its own process (cyconv.kernels.malloc).
"""

import importlib
import importlib.abc
import importlib.util
import sys

# The short public name of each module -> where it lives. `import cyconv.nn`, `from cyconv import serve`
# and `cyconv.onnx` all give the module at its home, the very same object (so monkeypatching
# `cyconv.train.x` patches what cyconv.training.train runs). _Aliases, a finder on sys.meta_path, resolves
# the `import` forms; the module __getattr__ below, attribute access. The ones in _EAGER come with
# `import cyconv`; the others (optional dependencies: fastapi, onnx, mpi4py, matplotlib; or the command
# line) only when first asked for.
_MODULES = {
    "_kernels": "cyconv.kernels._kernels",
    "reference": "cyconv.kernels.reference",
    "functional": "cyconv.layers.functional",
    "nn": "cyconv.layers.nn",
    "graph": "cyconv.layers.graph",
    "models": "cyconv.layers.models",
    "features": "cyconv.data.features",
    "train": "cyconv.training.train",
    "optim": "cyconv.training.optim",
    "checkpoint": "cyconv.training.checkpoint",
    "distributed": "cyconv.training.distributed",
    "predictor": "cyconv.deploy.predictor",
    "onnx": "cyconv.deploy.onnx",
    "serve": "cyconv.deploy.serve",
    "cli": "cyconv.tools.cli",
    "compare": "cyconv.tools.compare",
    "plots": "cyconv.tools.plots",
}
_EAGER = ("_kernels", "reference", "functional", "nn", "graph", "models", "features", "optim", "predictor")


class _Aliases(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `cyconv.<short name>` as the module at its home, imported there, under its own name."""

    def find_spec(self, fullname, path=None, target=None):
        prefix, _, short = fullname.partition(".")
        if prefix != __name__ or short not in _MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        module = importlib.import_module(_MODULES[spec.name.partition(".")[2]])
        spec.loader_state = module.__spec__  # the import system sets module.__spec__ to the alias's spec
        return module

    def exec_module(self, module):
        module.__spec__ = module.__spec__.loader_state  # ... so give it back its own (reload, pickle, -m)


# First on the path: a file left at an old name (say a stale _kernels*.so of an in-place build from before the
# folders) must not load as a second copy of a module with its own globals.
if not any(isinstance(finder, _Aliases) for finder in sys.meta_path):  # importlib.reload(cyconv): once
    sys.meta_path.insert(0, _Aliases())


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")  # sets the attribute: asked once
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


from . import data, kernels  # noqa: E402 (after the finder: the packages' modules import each other by home)
from .deploy.predictor import Predictor, compile  # noqa: E402, A004 (cyconv.compile, as torch.compile)
from .kernels._kernels import openmp_enabled  # noqa: E402
from .kernels.isa import build_info, get_isa, set_isa, supported_isas  # noqa: E402
from .kernels.threads import get_num_threads, set_num_threads  # noqa: E402

for _name in _EAGER:
    importlib.import_module(f"{__name__}.{_name}")

__version__ = "0.1.0"
__all__ = ["openmp_enabled", "get_num_threads", "set_num_threads", "get_isa", "set_isa", "supported_isas",
           "build_info", "compile", "Predictor"]

kernels.threads._install_blas_hooks()
kernels.isa._select_from_environment()
