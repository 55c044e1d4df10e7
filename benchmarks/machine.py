"""What the benchmarks need to know about this machine: the environment that runs every library at one
ISA tier, and the machine's own float32 peak at that tier.

    python benchmarks/machine.py              # the tiers, and each one's measured peak on 1 and 2 threads

To measure an AVX2 (or generic) CPU on an AVX-512 one, both sides are forced down, not just cyconv:
cyconv's tier (CYCONV_ISA); PyTorch's own kernels (ATEN_CPU_CAPABILITY), its oneDNN convolutions
(ONEDNN_MAX_CPU_ISA) and its MKL (MKL_ENABLE_INSTRUCTIONS); and the OpenBLAS under NumPy and SciPy that
cyconv's linear layers and the reference call (OPENBLAS_CORETYPE: Haswell is AVX2 + FMA, Nehalem SSE4.2).
Every variable is read when its library loads, so each must be set before the process starts (the
benchmarks' workers get them in their environment). Setting ATEN_CPU_CAPABILITY alone leaves oneDNN on
AVX-512: on AMD Zen 4 its AVX-512 convolutions are slower than its AVX2 ones, so that alone flatters
cyconv; RESULTS.md says which set each table used.
"""

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TIERS = ("avx512", "avx2", "generic")

# Everything that pins a library to a tier; avx512 is every library's default on an AVX-512 CPU.
TIER_ENV = {
    "avx512": {"CYCONV_ISA": "avx512"},
    "avx2": {"CYCONV_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2", "OPENBLAS_CORETYPE": "Haswell"},
    "generic": {"CYCONV_ISA": "generic", "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "OPENBLAS_CORETYPE": "Nehalem"},
}
# --torch-knobs aten: only PyTorch's ATen kernels are forced down (oneDNN and MKL keep their best ISA).
ATEN_ONLY = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def tier_env(tier, torch_knobs="all"):
    """The environment variables that run cyconv, PyTorch and OpenBLAS at `tier`."""
    env = dict(TIER_ENV[tier])
    if torch_knobs == "aten":
        for key in ATEN_ONLY:
            env.pop(key, None)
    return env


@functools.lru_cache(maxsize=None)
def _fma_peak_binary():
    """fma_peak.c compiled once per process (None without a C compiler)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    out = Path(tempfile.mkdtemp(prefix="cyconv-peak-")) / "fma_peak"
    src = Path(__file__).with_name("fma_peak.c")
    proc = subprocess.run([cc, "-O2", "-pthread", "-ffp-contract=fast", str(src), "-o", str(out)],
                          capture_output=True, text=True)
    return str(out) if proc.returncode == 0 else None


def fma_peak(tier, threads, repeats=3):
    """The best of `repeats` runs of fma_peak.c: float32 GFLOP/s at `tier` on `threads` threads
    (None when it cannot be measured here)."""
    binary = _fma_peak_binary()
    if binary is None:
        return None
    rates = []
    for _ in range(repeats):
        proc = subprocess.run([binary, tier, str(threads)], capture_output=True, text=True)
        if proc.returncode != 0:
            return None
        rates.append(float(proc.stdout))
    return max(rates)


def main():
    import cyconv

    supported = cyconv.supported_isas()
    print(f"cyconv {cyconv.__version__}: {cyconv.build_info()}")
    for tier in TIERS:
        if tier not in supported:
            print(f"{tier}: not supported by this CPU")
            continue
        peaks = ", ".join(f"{n} thread(s) {fma_peak(tier, n):.1f}" for n in (1, 2))
        print(f"{tier}: float32 peak GFLOP/s {peaks}; environment {tier_env(tier)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
