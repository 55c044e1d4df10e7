"""sigmoid and tanh and their backward (from the output): against the reference and against
the exact functions, the saturated ends, NaN, gradient checks, PyTorch's values (when torch is
installed), the modules, memory layouts and argument validation."""

import numpy as np
import pytest

import cyconv.functional as F
import cyconv.reference as R
from cyconv import nn
from conftest import KERNEL_TESTS, DTYPES, LAYOUTS, MODULES, assert_close, ident, random_array, relayout
from gradcheck import assert_grad, projection

pytestmark = KERNEL_TESTS

OPS = ["sigmoid", "tanh"]
SHAPES = [(7,), (3, 5), (2, 3, 4, 5), (70000,)]  # the last: several threads' blocks
# float32 runs a vectorised exp (within 2 ulp) and a polynomial tanh near 0: a few ulp of the
# exact function. float64 runs libm: an ulp or so.
ULPS = {np.float32: 4 * np.finfo(np.float32).eps, np.float64: 4 * np.finfo(np.float64).eps}


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=ident)
def test_matches_reference(op, shape, dtype):
    rng = np.random.default_rng(0)
    x = (random_array(rng, shape, dtype) * 6).astype(dtype)
    y = getattr(F, op)(x)
    assert_close(y, getattr(R, op)(x), dtype)
    g = random_array(rng, shape, dtype)
    assert_close(getattr(F, f"{op}_backward")(g, y), getattr(R, f"{op}_backward")(g, y), dtype)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_relative_error_against_exact_values(op, dtype):
    # Over the range that matters, including tiny |x| (where tanh must not lose digits to
    # cancellation) and the region around tanh's switch from polynomial to exp at 0.625.
    x = np.concatenate([np.geomspace(1e-8, 20, 4000), -np.geomspace(1e-8, 20, 4000),
                        np.linspace(0.6, 0.65, 501)]).astype(dtype)
    exact = {"sigmoid": lambda v: 1 / (1 + np.exp(-v)), "tanh": np.tanh}[op](x.astype(np.float64))
    got = getattr(F, op)(x).astype(np.float64)
    rel = np.abs(got - exact) / np.abs(exact)
    assert rel.max() < ULPS[dtype], rel.max()


@pytest.mark.parametrize("dtype", DTYPES)
def test_saturated_ends_and_nan(dtype):
    x = np.array([-1e4, -100, 0, 100, 1e4, np.inf, -np.inf, np.nan], dtype)
    s, t = F.sigmoid(x), F.tanh(x)
    np.testing.assert_array_equal(s[[2, 3, 4, 5]], [0.5, 1, 1, 1])
    assert (0 <= s[[0, 1, 6]]).all() and (s[[0, 1, 6]] < 1e-37).all()  # ~0 (see functional.sigmoid)
    np.testing.assert_array_equal(t[:7], [-1, -1, 0, 1, 1, 1, -1])
    assert np.isnan(s[7]) and np.isnan(t[7])


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("op", OPS)
def test_backward_gradcheck(module, op):
    rng = np.random.default_rng(1)
    x = random_array(rng, (2, 3, 4), np.float64)
    g = random_array(rng, x.shape, np.float64)
    forward = getattr(module, op)
    assert_grad(getattr(module, f"{op}_backward")(g, forward(x)), projection(forward, g), x)


@pytest.mark.parametrize("op", OPS)
def test_matches_pytorch(op):
    torch = pytest.importorskip("torch")
    x = random_array(np.random.default_rng(2), (3, 50), np.float32) * 5
    tx = torch.from_numpy(x).requires_grad_()
    ty = getattr(torch, op)(tx)
    g = random_array(np.random.default_rng(3), x.shape, np.float32)
    ty.backward(torch.from_numpy(g))
    torch_y = ty.detach().numpy()
    np.testing.assert_allclose(getattr(F, op)(x), torch_y, rtol=1e-6, atol=1e-7)
    # Backward from PyTorch's own output: near saturation 1 - y**2 turns an ulp of y into a large
    # relative difference, so each side must be fed the same y to compare the formulas.
    np.testing.assert_allclose(getattr(F, f"{op}_backward")(g, torch_y), tx.grad.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("op, cls", [("sigmoid", nn.Sigmoid), ("tanh", nn.Tanh)])
def test_modules(op, cls):
    layer = cls()
    x = random_array(np.random.default_rng(4), (2, 5), np.float64)
    y = layer(x)
    np.testing.assert_array_equal(y, getattr(F, op)(x))
    g = np.ones_like(y)
    np.testing.assert_array_equal(layer.backward(g), getattr(F, f"{op}_backward")(g, y))
    assert layer.backward(g, input_grad=False) is None


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_non_contiguous_inputs(op, layout):
    x = random_array(np.random.default_rng(5), (3, 4, 5), np.float32)
    np.testing.assert_array_equal(getattr(F, op)(relayout(x, layout)), getattr(F, op)(x))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty(op, dtype):
    x = np.zeros((0, 3), dtype)
    assert getattr(F, op)(x).shape == (0, 3)
    assert getattr(F, f"{op}_backward")(x, x).shape == (0, 3)


@pytest.mark.parametrize("op", OPS)
def test_rejects_bad_input(op):
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match=rf"{op}\(\): x"):
        getattr(F, op)(x.astype(np.int32))
    with pytest.raises(ValueError, match=rf"{op}_backward\(\): grad_y must have y's shape"):
        getattr(F, f"{op}_backward")(x[:, :2], x)
    with pytest.raises(TypeError, match=rf"{op}_backward\(\): grad_y"):
        getattr(F, f"{op}_backward")(x.astype(np.float64), x)
