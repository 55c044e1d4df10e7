"""adam_update: the compiled in-place Adam/AdamW step against its NumPy twin, to the last bit
(the same operations in the same order), against the formula, across thread counts, and bad input."""

import numpy as np
import pytest

import cyconv
import cyconv.functional as F
import cyconv.reference as R
from conftest import KERNEL_TESTS, DTYPES, random_array

pytestmark = KERNEL_TESTS

# (weight_decay, decoupled): Adam, Adam with L2 decay, AdamW.
HYPER = [(0.0, False), (1e-2, False), (1e-2, True)]


def run_steps(module, param, grads, weight_decay, decoupled, lr=1e-2):
    p, m, v = param.copy(), np.zeros_like(param), np.zeros_like(param)
    for step, g in enumerate(grads, 1):
        module.adam_update(p, g, m, v, step, lr, (0.9, 0.999), 1e-8, weight_decay, decoupled)
    return p, m, v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hyper", HYPER, ids=["adam", "adam-l2", "adamw"])
@pytest.mark.parametrize("shape", [(7,), (20, 1, 5, 5), (3, 40000)], ids=["7", "conv", "big"])
def test_matches_reference_exactly(shape, hyper, dtype):
    rng = np.random.default_rng(0)
    param = random_array(rng, shape, dtype)
    grads = [random_array(rng, shape, dtype) for _ in range(3)]
    got, want = run_steps(F, param, grads, *hyper), run_steps(R, param, grads, *hyper)
    for a, b in zip(got, want):
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(got[0], param)


def test_matches_the_formula():
    p, g = np.array([1.0, -2.0]), np.array([0.5, -0.25])
    m, v = np.array([0.1, 0.2]), np.array([0.01, 0.02])
    p0, m0, v0 = p.copy(), m.copy(), v.copy()
    F.adam_update(p, g, m, v, 3, lr=0.1, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.05, decoupled=True)
    want_m, want_v = 0.8 * m0 + 0.2 * g, 0.9 * v0 + 0.1 * g * g
    want_p = p0 * (1 - 0.1 * 0.05) - 0.1 / (1 - 0.8**3) * want_m / (np.sqrt(want_v) / np.sqrt(1 - 0.9**3) + 1e-3)
    np.testing.assert_allclose(m, want_m, rtol=1e-15)
    np.testing.assert_allclose(v, want_v, rtol=1e-15)
    np.testing.assert_allclose(p, want_p, rtol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_independent_of_thread_count(dtype):
    rng = np.random.default_rng(1)
    param = random_array(rng, (300, 500), dtype)
    grads = [random_array(rng, param.shape, dtype) for _ in range(2)]
    results = []
    for n in (1, 2):
        with cyconv.set_num_threads(n):
            results.append(run_steps(F, param, grads, 1e-2, True))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_bad_input():
    p, g, m, v = (np.zeros((4, 4), np.float32) for _ in range(4))
    with pytest.raises(ValueError, match=r"adam_update\(\): exp_avg is updated in place"):
        F.adam_update(p, g, m.T, v, 1)
    with pytest.raises(TypeError, match=r"adam_update\(\): grad"):
        F.adam_update(p, g.astype(np.float64), m, v, 1)
    with pytest.raises(ValueError, match=r"adam_update\(\): exp_avg_sq must have param's shape"):
        F.adam_update(p, g, m, v[:2], 1)
    for step in (0, 1.0, True):
        with pytest.raises(ValueError, match=r"adam_update\(\): step must be an int >= 1"):
            F.adam_update(p, g, m, v, step)
    with pytest.raises(ValueError, match=r"adam_update\(\): betas must be two numbers in \[0, 1\)"):
        F.adam_update(p, g, m, v, 1, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match=r"adam_update\(\): param and exp_avg overlap in memory"):
        F.adam_update(p, g, p, v, 1)
    np.testing.assert_array_equal(p, 0)
