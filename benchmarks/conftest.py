"""Benchmarks are not tests: run them with

    pytest benchmarks/ --benchmark-json=bench.json && python benchmarks/report.py bench.json

and at a lower ISA tier than the CPU's best, with every library forced down (see machine.py; OpenBLAS
reads its core type when NumPy loads, so that one goes in the environment):

    OPENBLAS_CORETYPE=Haswell pytest benchmarks/ --isa avx2 --benchmark-json=bench-avx2.json

Each benchmark records its thread count and whether OpenMP is on in extra_info, and the machine info
the tier and the BLAS each library ran with.
"""

import os
import sys
from pathlib import Path

import cyconv
import pytest
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--isa", choices=machine.TIERS, default=None,
                     help="run cyconv and PyTorch at this ISA tier (default: the best this CPU has)")


def pytest_configure(config):
    tier = config.getoption("--isa") or cyconv.supported_isas()[0]
    if tier not in cyconv.supported_isas():
        raise pytest.UsageError(f"--isa {tier}: this CPU cannot run it (supported: "
                                f"{', '.join(cyconv.supported_isas())})")
    cyconv.set_isa(tier)
    # PyTorch reads its ISA knobs when the benchmarks first import it, which is later than this.
    if "torch" in sys.modules:
        raise pytest.UsageError("torch was imported before the benchmarks' conftest: its ISA cannot be set")
    for key, value in machine.tier_env(tier).items():
        if key not in ("CYCONV_ISA", "OPENBLAS_CORETYPE"):
            os.environ.setdefault(key, value)
    config.cyconv_tier = tier


def pytest_benchmark_update_machine_info(config, machine_info):
    info = cyconv.build_info()
    machine_info["cyconv_openmp"] = info["openmp"]
    machine_info["cyconv_isa"] = info["isa"]
    machine_info["cyconv_blas"] = info["blas"]
    machine_info["torch_isa_env"] = {k: os.environ.get(k) for k in
                                     ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")}


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}T")
def threads(request):
    """Run the benchmark with cyconv, NumPy's BLAS (the reference's GEMMs) and
    PyTorch all on n threads."""
    n = request.param
    torch = _torch()
    previous = torch.get_num_threads() if torch else None
    with cyconv.set_num_threads(n), threadpool_limits(n, user_api="blas"):
        if torch:
            torch.set_num_threads(n)
        yield n
    if torch:
        torch.set_num_threads(previous)


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch
