"""Benchmarks are not tests: run them with

    pytest benchmarks/ --benchmark-json=bench.json && python benchmarks/report.py bench.json

Each benchmark records its thread count and whether OpenMP is on in extra_info.
"""

import cyconv
import pytest
from threadpoolctl import threadpool_limits


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["cyconv_openmp"] = cyconv.openmp_enabled()


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
