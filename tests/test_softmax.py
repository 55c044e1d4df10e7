"""softmax and log_softmax over (N, K) scores, their backward (from the output), and the
Softmax / LogSoftmax modules: against the reference, gradient checks, stability for huge
scores, and argument validation."""

import numpy as np
import pytest

import cyconv.functional as F
import cyconv.reference as R
from cyconv import nn
from conftest import KERNEL_TESTS, DTYPES, MODULES, assert_close, random_array
from gradcheck import assert_grad, projection

pytestmark = KERNEL_TESTS

OPS = ["softmax", "log_softmax"]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(op, dtype):
    rng = np.random.default_rng(0)
    x = random_array(rng, (5, 10), dtype) * 3
    y = getattr(F, op)(x)
    assert_close(y, getattr(R, op)(x), dtype)
    g = random_array(rng, x.shape, dtype)
    assert_close(getattr(F, f"{op}_backward")(g, y), getattr(R, f"{op}_backward")(g, y), dtype)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("op", OPS)
def test_backward_gradcheck(module, op):
    rng = np.random.default_rng(1)
    x = random_array(rng, (3, 6), np.float64)
    g = random_array(rng, x.shape, np.float64)
    forward = getattr(module, op)
    assert_grad(getattr(module, f"{op}_backward")(g, forward(x)), projection(forward, g), x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stable_for_huge_scores(dtype):
    x = np.array([[1e30, 0, -1e30], [88, 89, 90]], dtype)
    s, ls = F.softmax(x), F.log_softmax(x)
    assert np.isfinite(s).all() and np.isfinite(ls[1]).all()
    np.testing.assert_allclose(s.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(np.exp(ls[1]), s[1], rtol=1e-5)


@pytest.mark.parametrize("op, cls", [("softmax", nn.Softmax), ("log_softmax", nn.LogSoftmax)])
def test_modules(op, cls):
    layer = cls(dim=-1)
    x = random_array(np.random.default_rng(2), (2, 4), np.float64)
    y = layer(x)
    np.testing.assert_array_equal(y, getattr(F, op)(x))
    np.testing.assert_array_equal(layer.backward(np.ones_like(y)), getattr(F, f"{op}_backward")(np.ones_like(y), y))
    with pytest.raises(ValueError, match=rf"{cls.__name__}\(\): dim must be 1"):
        cls(dim=0)


@pytest.mark.parametrize("op", OPS)
def test_rejects_bad_input(op):
    with pytest.raises(ValueError, match=rf"{op}\(\): x must be 2-D"):
        getattr(F, op)(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=rf"{op}_backward\(\): grad_y"):
        getattr(F, f"{op}_backward")(np.zeros((2, 4), np.float32), np.zeros((2, 3), np.float32))
