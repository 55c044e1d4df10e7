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
"""

import os

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


class set_isa:
    """Run cyconv's kernels with ISA tier `name` ('avx512', 'avx2' or 'generic').

    Takes effect at once for every thread and stays in effect; used as a context
    manager it restores the previous tier on exit::

        cyconv.set_isa("avx2")
        with cyconv.set_isa("generic"):
            y = F.conv2d(x, w)      # the portable kernels here

    Raises ValueError for a tier the CPU cannot run, naming its best tier.
    """

    def __init__(self, name):
        tier = _tier_number(name, "set_isa()")
        self._previous = _kernels.get_isa()
        _kernels.set_isa(tier)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _kernels.set_isa(self._previous)
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
    from . import _malloc
    from ._threads import blas_description, get_num_threads

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
