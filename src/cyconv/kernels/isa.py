"""Which instruction set cyconv's kernels run with (the ISA tier), and what this build is.

Tiers, best first:

    avx512   AVX-512F: Intel Xeon (Skylake-SP and later), Ice Lake and later clients, AMD Zen 4
    avx2     AVX2 + FMA: most Intel laptops and desktops since Haswell, AMD Zen 1-3
    generic  portable C that the compiler vectorises for the machine's baseline
             (SSE2 on x86-64, NEON on ARM: Apple M-series, Graviton)

Every kernel is compiled for each tier the platform has (csrc/isa.h). At import,
cyconv runs the best tier the CPU supports, or the one the environment variable
CYCONV_ISA names; `set_isa()` switches at run time (also as a context manager),
which is how one machine tests and measures every tier it can run. Asking for
a tier the CPU lacks raises ValueError. Results agree across tiers to float
rounding, not bit for bit (the sums run in other orders).

The tier is one setting for the whole process (the kernels' OpenMP threads read
it), so a `with set_isa(...)` block holds it: while one thread has a block open,
another thread's set_isa() raises RuntimeError instead of switching the tier
under it (and the blocks' exits could not restore in the right order).
"""

import os
import threading

from . import _kernels

TIERS = ("generic", "avx2", "avx512")  # position = the C tier number (csrc/isa.h)


def supported_isas():
    """The tiers this build and CPU can run, best first."""
    return [name for i, name in reversed(list(enumerate(TIERS))) if _kernels.isa_supported(i)]


def get_isa():
    """The tier the kernels run with now: 'avx512', 'avx2' or 'generic'."""
    return TIERS[_kernels.get_isa()]


def _tier_number(name, fn):
    if not isinstance(name, str):
        raise TypeError(f"{fn}: the tier must be a str, one of {', '.join(reversed(TIERS))}; got {name!r}")
    if name not in TIERS:
        raise ValueError(f"{fn}: unknown ISA tier {name!r}; the tiers are {', '.join(reversed(TIERS))}")
    supported = supported_isas()
    if name not in supported:
        raise ValueError(f"{fn}: this CPU cannot run the {name} tier; its best tier is {supported[0]} "
                         f"(supported: {', '.join(supported)})")
    return TIERS.index(name)


_lock = threading.Lock()
_holder, _depth = None, 0  # the thread with `with set_isa()` blocks open, and how many it has open


def _refuse_if_held(me, fn):
    if _holder is not None and _holder != me:
        raise RuntimeError(f"{fn}: the ISA tier is process-wide and another thread has a `with "
                           f"cyconv.set_isa(...)` block open; switch tiers from one thread at a time")


class set_isa:
    """Run cyconv's kernels with ISA tier `name` ('avx512', 'avx2' or 'generic').

    Takes effect at once for every thread and stays in effect; used as a context
    manager it restores the previous tier on exit::

        cyconv.set_isa("avx2")
        with cyconv.set_isa("generic"):
            y = F.conv2d(x, w)      # the portable kernels here

    Raises ValueError for a tier the CPU cannot run, naming its best tier, and
    RuntimeError while another thread has a `with set_isa()` block open.
    """

    def __init__(self, name):
        tier = _tier_number(name, "set_isa()")
        with _lock:
            _refuse_if_held(threading.get_ident(), "set_isa()")
            self._tier, self._previous, self._entered = tier, _kernels.get_isa(), False
            _kernels.set_isa(tier)

    def __enter__(self):
        global _holder, _depth
        me = threading.get_ident()
        with _lock:
            try:
                # Two threads that called set_isa() at the same moment both got past __init__'s check:
                # the second to get here leaves, undoing its switch.
                _refuse_if_held(me, "set_isa()")
            except RuntimeError:
                if _kernels.get_isa() == self._tier:
                    _kernels.set_isa(self._previous)
                raise
            _holder, _depth, self._entered = me, _depth + 1, True
        return self

    def __exit__(self, *exc):
        global _holder, _depth
        with _lock:
            if not self._entered:  # __exit__ called by hand after a plain call
                _refuse_if_held(threading.get_ident(), "set_isa()")
            _kernels.set_isa(self._previous)
            if self._entered:
                self._entered, _depth = False, _depth - 1
                if _depth == 0:
                    _holder = None
        return False

    def __repr__(self):
        return f"set_isa({get_isa()!r})"


def _select_from_environment():
    """At import: the tier CYCONV_ISA names, else the best one."""
    name = os.environ.get("CYCONV_ISA", "").strip()
    if name:
        _kernels.set_isa(_tier_number(name, "CYCONV_ISA"))
    else:
        _kernels.set_isa(TIERS.index(supported_isas()[0]))


def build_info():
    """What this build is and what it runs with now, as a dict:

    isa            the running tier; isa_supported: the tiers this CPU runs, best first
    openmp         True if the kernels run with OpenMP; threads: cyconv's thread count
    gemm           {'float32': 'own' or 'blas', 'float64': 'blas'}: who runs the
                   convolutions' GEMMs (the linear layers always use BLAS)
    blas           the BLAS library behind SciPy that cyconv calls
    compiler       the C compiler that built the kernels
    malloc         "kept" when freed memory stays in the process for reuse, else "system" (cyconv._malloc)
    """
    from . import malloc as _malloc
    from .threads import blas_description, get_num_threads

    return {
        "isa": get_isa(),
        "isa_supported": supported_isas(),
        "openmp": _kernels.openmp_enabled(),
        "threads": get_num_threads(),
        "gemm": {"float32": "own" if _kernels.own_gemm_enabled() else "blas", "float64": "blas"},
        "blas": blas_description(),
        "compiler": _kernels.compiler(),
        "malloc": "kept" if _malloc.tuned else "system",
    }
