"""sgd_update: the compiled in-place SGD step against its NumPy twin, to the last bit
(the same operations in the same order), across thread counts, and bad input."""

import numpy as np
import pytest

import cyconv
import cyconv.functional as F
import cyconv.reference as R
from conftest import KERNEL_TESTS, DTYPES, random_array

pytestmark = KERNEL_TESTS

# (momentum, weight_decay): plain SGD, momentum only, weight decay only, both.
HYPER = [(0.0, 0.0), (0.9, 0.0), (0.0, 5e-4), (0.9, 5e-4)]


def run_steps(module, param, grads, momentum, weight_decay, lr=0.05):
    """Three steps from copies of param; returns (param, momentum buffer)."""
    p = param.copy()
    buf = np.empty_like(p) if momentum else None
    for i, g in enumerate(grads):
        module.sgd_update(p, g, buf, lr, momentum, weight_decay, first_step=(i == 0))
    return p, buf


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hyper", HYPER, ids=lambda h: f"m{h[0]}-wd{h[1]}")
@pytest.mark.parametrize("shape", [(7,), (20, 1, 5, 5), (3, 40000)], ids=["7", "conv", "big"])
def test_sgd_update_matches_reference_exactly(shape, hyper, dtype):
    rng = np.random.default_rng(0)
    param = random_array(rng, shape, dtype)
    grads = [random_array(rng, shape, dtype) for _ in range(3)]
    got_p, got_buf = run_steps(F, param, grads, *hyper)
    want_p, want_buf = run_steps(R, param, grads, *hyper)
    assert got_p.dtype == dtype
    np.testing.assert_array_equal(got_p, want_p)
    if hyper[0]:
        np.testing.assert_array_equal(got_buf, want_buf)
    assert not np.array_equal(got_p, param)  # it did update


def test_sgd_update_matches_the_formula():
    p = np.array([1.0, -2.0]); g = np.array([0.5, 0.25]); buf = np.array([10.0, 10.0])
    F.sgd_update(p, g, buf, lr=0.1, momentum=0.9, weight_decay=0.01)
    want_buf = 0.9 * 10.0 + (g + 0.01 * np.array([1.0, -2.0]))
    np.testing.assert_allclose(buf, want_buf, rtol=1e-15)
    np.testing.assert_allclose(p, np.array([1.0, -2.0]) - 0.1 * want_buf, rtol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sgd_update_independent_of_thread_count(dtype):
    rng = np.random.default_rng(1)
    param = random_array(rng, (300, 500), dtype)  # enough blocks for two threads
    grads = [random_array(rng, param.shape, dtype) for _ in range(2)]
    results = []
    for n in (1, 2):
        with cyconv.set_num_threads(n):
            results.append(run_steps(F, param, grads, 0.9, 5e-4))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_sgd_update_bad_input():
    p = np.zeros((4, 4), np.float32)
    g = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match=r"sgd_update\(\): param .*C-contiguous"):
        F.sgd_update(p.T, g, None, 0.1)
    with pytest.raises(ValueError, match=r"sgd_update\(\): momentum_buffer .*C-contiguous"):
        F.sgd_update(p, g, np.zeros((4, 8), np.float32)[:, ::2], 0.1, 0.9)
    with pytest.raises(TypeError, match=r"sgd_update\(\): grad"):
        F.sgd_update(p, g.astype(np.float64), None, 0.1)
    with pytest.raises(ValueError, match=r"sgd_update\(\): grad must have param's shape"):
        F.sgd_update(p, g[:2], None, 0.1)
    with pytest.raises(ValueError, match=r"sgd_update\(\): momentum_buffer must have param's shape"):
        F.sgd_update(p, g, np.zeros(3, np.float32), 0.1, 0.9)
    with pytest.raises(TypeError, match=r"sgd_update\(\): param"):
        F.sgd_update(p.astype(np.int32), g, None, 0.1)


@pytest.mark.parametrize("which", ["param-grad", "param-buffer", "grad-buffer", "overlapping-views"])
def test_rejects_overlapping_arguments(which):
    # The kernel updates param and momentum_buffer in one pass reading grad: the C code marks
    # them restrict, so the same memory twice would be undefined behaviour. The Python layer refuses.
    rng = np.random.default_rng(0)
    p, g, b = (random_array(rng, (8,), np.float32) for _ in range(3))
    big = random_array(rng, (12,), np.float32)
    args = {"param-grad": (p, p, b), "param-buffer": (p, g, p), "grad-buffer": (p, g, g),
            "overlapping-views": (big[:8], big[4:], b)}[which]
    before = [a.copy() for a in args]
    with pytest.raises(ValueError, match=r"sgd_update\(\): .* overlap in memory"):
        F.sgd_update(args[0], args[1], args[2], 0.1, momentum=0.9)
    for a, was in zip(args, before):
        np.testing.assert_array_equal(a, was)  # nothing updated
