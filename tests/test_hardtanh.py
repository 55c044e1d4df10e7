"""hardtanh, hardtanh_backward, relu6 and relu6_backward: against the reference (data away from
the kinks), the kinks and NaN on purpose, gradient checks, PyTorch when installed, large arrays
(the parallel blocks), argument validation, and nn.Hardtanh / nn.ReLU6."""

import numpy as np
import pytest

import cyconv
import cyconv.functional as F
import cyconv.nn as nn
import cyconv.reference as R
from conftest import KERNEL_TESTS, DTYPES, MODULES, ident, random_array
from gradcheck import assert_grad, projection

pytestmark = KERNEL_TESTS

SHAPES = [(7,), (3, 5), (2, 3, 4, 5), (1, 1, 1, 1), (0, 3)]
BOUNDS = [(-1.0, 1.0), (0.0, 6.0), (-0.5, 2.25), (-np.inf, 0.5)]


def away_from(rng, shape, dtype, lo, hi):
    """Standard-normal data scaled to cross both bounds, none closer than 1e-2 to either."""
    x = rng.standard_normal(shape) * 4
    for b in (lo, hi):
        near = np.abs(x - b) < 1e-2
        x[near] += 0.05
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bounds", BOUNDS, ids=ident)
@pytest.mark.parametrize("shape", SHAPES, ids=ident)
def test_hardtanh_matches_reference(shape, bounds, dtype):
    rng = np.random.default_rng(0)
    x = away_from(rng, shape, dtype, *bounds)
    grad_y = random_array(rng, shape, dtype)
    # Selecting, clamping and zeroing are exact.
    np.testing.assert_array_equal(F.hardtanh(x, *bounds), R.hardtanh(x, *bounds), strict=True)
    np.testing.assert_array_equal(F.hardtanh_backward(grad_y, x, *bounds), R.hardtanh_backward(grad_y, x, *bounds),
                                  strict=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu6_is_hardtanh_0_6(dtype):
    x = away_from(np.random.default_rng(1), (4, 50), dtype, 0, 6) * 2
    g = random_array(np.random.default_rng(2), x.shape, dtype)
    for module in (F, R):
        np.testing.assert_array_equal(module.relu6(x), module.hardtanh(x, 0, 6), strict=True)
        np.testing.assert_array_equal(module.relu6_backward(g, x), module.hardtanh_backward(g, x, 0, 6), strict=True)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_kinks_and_nan(module, dtype):
    """At the bounds the value is the bound and the gradient 0 (PyTorch's rule); NaN stays NaN in
    forward and passes the gradient in backward, as in PyTorch; infinities clamp."""
    x = np.array([-np.inf, -2.0, -1.0, -0.0, 0.0, 0.5, 1.0, 3.0, np.inf, np.nan], dtype)
    want = np.array([-1, -1, -1, -0.0, 0, 0.5, 1, 1, 1, np.nan], dtype)
    np.testing.assert_array_equal(module.hardtanh(x), want, strict=True)
    g = np.full(x.shape, 5.0, dtype)
    np.testing.assert_array_equal(module.hardtanh_backward(g, x), np.array([0, 0, 0, 5, 5, 5, 0, 0, 0, 5], dtype),
                                  strict=True)
    x6 = np.array([-1.0, 0.0, 3.0, 6.0, 7.0, np.nan], dtype)
    np.testing.assert_array_equal(module.relu6(x6), np.array([0, 0, 3, 6, 6, np.nan], dtype), strict=True)
    np.testing.assert_array_equal(module.relu6_backward(np.ones_like(x6), x6), np.array([0, 0, 1, 0, 0, 1], dtype),
                                  strict=True)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("bounds", BOUNDS[:3], ids=ident)
def test_hardtanh_backward_gradcheck(module, bounds):
    rng = np.random.default_rng(3)
    x = away_from(rng, (3, 4, 5), np.float64, *bounds)
    g = random_array(rng, x.shape, np.float64)
    assert_grad(module.hardtanh_backward(g, x, *bounds), projection(lambda x_: module.hardtanh(x_, *bounds), g), x)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_arrays_across_blocks(dtype, threads):
    rng = np.random.default_rng(4)
    x = away_from(rng, (3, 40000 + 7), dtype, 0, 6)
    g = random_array(rng, x.shape, dtype)
    with cyconv.set_num_threads(threads):
        np.testing.assert_array_equal(F.relu6(x), R.relu6(x), strict=True)
        np.testing.assert_array_equal(F.relu6_backward(g, x), R.relu6_backward(g, x), strict=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hardtanh_matches_torch(dtype):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: the comparison with it is skipped")
    x = np.array([-np.inf, -7.0, -1.0, -0.3, 0.0, 2.0, 6.0, 9.0, np.nan], dtype)
    g = np.arange(1, x.size + 1).astype(dtype)
    for bounds, fn in (((-1.0, 1.0), torch.nn.functional.hardtanh), ((0.0, 6.0), None)):
        tx = torch.from_numpy(x.copy()).requires_grad_()
        ty = fn(tx, *bounds) if fn else torch.nn.functional.relu6(tx)
        ty.backward(torch.from_numpy(g))
        np.testing.assert_array_equal(F.hardtanh(x, *bounds), ty.detach().numpy())
        np.testing.assert_array_equal(F.hardtanh_backward(g, x, *bounds), tx.grad.numpy())


@pytest.mark.parametrize("call, error, match", [
    (lambda: F.hardtanh(np.zeros(3, np.float32), 1.0, -1.0), ValueError, r"hardtanh\(\): min_val must be <= max_val"),
    (lambda: F.hardtanh(np.zeros(3, np.float32), np.nan), ValueError, r"hardtanh\(\): min_val must not be NaN"),
    (lambda: F.hardtanh(np.zeros(3, np.float32), "0"), TypeError, r"hardtanh\(\): min_val must be a real number"),
    (lambda: F.hardtanh(np.zeros(3, np.int32)), TypeError, r"hardtanh\(\): x must be float32 or float64"),
    (lambda: F.hardtanh_backward(np.zeros(3, np.float32), np.zeros(4, np.float32)), ValueError,
     r"hardtanh_backward\(\): grad_y must have x's shape"),
    (lambda: F.relu6_backward(np.zeros(3, np.float64), np.zeros(3, np.float32)), TypeError,
     r"hardtanh_backward\(\): grad_y has dtype float64 but x has float32"),
    (lambda: nn.Hardtanh(2, 1), ValueError, r"Hardtanh\(\): min_val must be <= max_val"),
])
def test_argument_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_modules():
    rng = np.random.default_rng(5)
    x = away_from(rng, (2, 3, 4, 5), np.float32, -0.5, 2.0)
    g = random_array(rng, x.shape, np.float32)
    layer = nn.Hardtanh(-0.5, 2.0)
    np.testing.assert_array_equal(layer(x), F.hardtanh(x, -0.5, 2.0))
    np.testing.assert_array_equal(layer.backward(g), F.hardtanh_backward(g, x, -0.5, 2.0))
    assert layer.output_shape((3, 4, 5)) == (3, 4, 5)
    assert repr(layer) == "Hardtanh(min_val=-0.5, max_val=2.0)"
    relu6 = nn.ReLU6()
    assert isinstance(relu6, nn.Hardtanh) and repr(relu6) == "ReLU6()"
    assert (relu6.min_val, relu6.max_val) == (0.0, 6.0)
    x6 = away_from(rng, (2, 8), np.float64, 0, 6) * 2
    g6 = random_array(rng, x6.shape, np.float64)
    np.testing.assert_array_equal(relu6(x6), F.relu6(x6))
    np.testing.assert_array_equal(relu6.backward(g6), F.relu6_backward(g6, x6))
    assert relu6.backward(g6, input_grad=False) is None
