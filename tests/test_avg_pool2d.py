"""avg_pool2d and its backward: against the reference over a grid of geometries and both
count_include_pad modes, against explicit loops, gradient checks, PyTorch's semantics (when
torch is installed), empty batches, memory layouts and argument validation."""

import itertools

import numpy as np
import pytest

import cyconv.functional as F
import cyconv.reference as R
from cyconv import nn
from conftest import KERNEL_TESTS, DTYPES, LAYOUTS, MODULES, assert_close, ident, pair, random_array, relayout
from gradcheck import assert_grad, projection

pytestmark = KERNEL_TESTS

# (kernel, stride, padding) with padding at most half the kernel; LeNet-5's classic 2x2/2 first.
GEOMETRIES = [(2, None, 0), (3, 2, 1), (3, 1, 1), ((2, 3), (1, 2), (1, 0)), (4, 3, 2), (1, 1, 0)]
SHAPES = [(2, 3, 8, 8), (1, 2, 7, 9), (3, 1, 28, 28)]


def geometry_id(g):
    return "-".join(f"{name}{ident(v)}" for name, v in zip("ksp", g))


@pytest.mark.parametrize("count_include_pad", [True, False], ids=["incl-pad", "excl-pad"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=ident)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=geometry_id)
def test_matches_reference(geometry, shape, dtype, count_include_pad):
    kernel, stride, padding = geometry
    rng = np.random.default_rng(0)
    x = random_array(rng, shape, dtype)
    y = F.avg_pool2d(x, kernel, stride, padding, count_include_pad)
    assert_close(y, R.avg_pool2d(x, kernel, stride, padding, count_include_pad), dtype)
    grad_y = random_array(rng, y.shape, dtype)
    assert_close(F.avg_pool2d_backward(grad_y, shape, kernel, stride, padding, count_include_pad),
                 R.avg_pool2d_backward(grad_y, shape, kernel, stride, padding, count_include_pad), dtype)


@pytest.mark.parametrize("count_include_pad", [True, False], ids=["incl-pad", "excl-pad"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=geometry_id)
def test_reference_matches_explicit_loops(geometry, count_include_pad):
    # The reference's strided windows against the definition, one output at a time.
    kernel, stride, padding = geometry
    (kh, kw), (ph, pw) = pair(kernel), pair(padding)
    sh, sw = pair(kernel if stride is None else stride)
    x = random_array(np.random.default_rng(1), (1, 1, 7, 9), np.float64)
    y = R.avg_pool2d(x, kernel, stride, padding, count_include_pad)
    for a, b in itertools.product(range(y.shape[2]), range(y.shape[3])):
        rows = [r for r in range(a * sh - ph, a * sh - ph + kh) if 0 <= r < 7]
        cols = [c for c in range(b * sw - pw, b * sw - pw + kw) if 0 <= c < 9]
        total = sum(x[0, 0, r, c] for r in rows for c in cols)
        divisor = kh * kw if count_include_pad else len(rows) * len(cols)
        assert y[0, 0, a, b] == pytest.approx(total / divisor, rel=1e-12)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("count_include_pad", [True, False], ids=["incl-pad", "excl-pad"])
@pytest.mark.parametrize("geometry", GEOMETRIES[:4], ids=geometry_id)
def test_backward_gradcheck(module, geometry, count_include_pad):
    kernel, stride, padding = geometry
    rng = np.random.default_rng(2)
    x = random_array(rng, (1, 2, 6, 7), np.float64)
    g = random_array(rng, module.avg_pool2d(x, kernel, stride, padding, count_include_pad).shape, np.float64)
    assert_grad(module.avg_pool2d_backward(g, x.shape, kernel, stride, padding, count_include_pad),
                projection(lambda v: module.avg_pool2d(v, kernel, stride, padding, count_include_pad), g), x)


@pytest.mark.parametrize("count_include_pad", [True, False], ids=["incl-pad", "excl-pad"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=geometry_id)
def test_matches_pytorch(geometry, count_include_pad):
    torch = pytest.importorskip("torch")
    kernel, stride, padding = geometry
    x = random_array(np.random.default_rng(3), (2, 3, 9, 8), np.float64)
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.avg_pool2d(tx, kernel, stride, padding, count_include_pad=count_include_pad)
    g = random_array(np.random.default_rng(4), tuple(ty.shape), np.float64)
    ty.backward(torch.from_numpy(g))
    np.testing.assert_allclose(F.avg_pool2d(x, kernel, stride, padding, count_include_pad), ty.detach().numpy(),
                               rtol=1e-12)
    np.testing.assert_allclose(F.avg_pool2d_backward(g, x.shape, kernel, stride, padding, count_include_pad),
                               tx.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_propagates_to_its_windows_only(dtype):
    x = np.zeros((1, 1, 4, 4), dtype)
    x[0, 0, 0, 0] = np.nan
    y = F.avg_pool2d(x, 2)
    assert np.isnan(y[0, 0, 0, 0]) and not np.isnan(y[0, 0, 1:, :]).any() and not np.isnan(y[0, 0, 0, 1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(dtype):
    x = np.zeros((0, 3, 4, 4), dtype)
    assert F.avg_pool2d(x, 2).shape == (0, 3, 2, 2)
    assert F.avg_pool2d_backward(np.zeros((0, 3, 2, 2), dtype), x.shape, 2).shape == x.shape


@pytest.mark.parametrize("layout", LAYOUTS)
def test_non_contiguous_inputs(layout):
    rng = np.random.default_rng(5)
    x = random_array(rng, (2, 3, 6, 8), np.float32)
    g = random_array(rng, (2, 3, 3, 4), np.float32)
    np.testing.assert_array_equal(F.avg_pool2d(relayout(x, layout), 2), F.avg_pool2d(x, 2))
    np.testing.assert_array_equal(F.avg_pool2d_backward(relayout(g, layout), x.shape, 2),
                                  F.avg_pool2d_backward(g, x.shape, 2))


def test_module():
    pool = nn.AvgPool2d(3, 2, 1, count_include_pad=False)
    x = random_array(np.random.default_rng(6), (2, 3, 7, 7), np.float64)
    y = pool(x)
    np.testing.assert_array_equal(y, F.avg_pool2d(x, 3, 2, 1, False))
    g = np.ones_like(y)
    np.testing.assert_array_equal(pool.backward(g), F.avg_pool2d_backward(g, x.shape, 3, 2, 1, False))
    assert repr(pool) == "AvgPool2d(kernel_size=3, stride=2, padding=1, count_include_pad=False)"
    with pytest.raises(ValueError, match=r"AvgPool2d\(\): padding"):
        nn.AvgPool2d(2, padding=2)


X = np.zeros((1, 2, 4, 4), np.float32)


@pytest.mark.parametrize("call, error, match", [
    (lambda: F.avg_pool2d(X.astype(np.int32), 2), TypeError, r"avg_pool2d\(\): x"),
    (lambda: F.avg_pool2d(X[0], 2), ValueError, r"avg_pool2d\(\): x must be 4-D"),
    (lambda: F.avg_pool2d(X, 2, padding=2), ValueError, "padding"),
    (lambda: F.avg_pool2d(X, 5), ValueError, "larger than the padded input"),
    (lambda: F.avg_pool2d(X, 2, count_include_pad=1), TypeError, "count_include_pad"),
    (lambda: F.avg_pool2d_backward(np.zeros((1, 2, 3, 3), np.float32), X.shape, 2), ValueError, "grad_y must"),
    (lambda: F.avg_pool2d_backward(np.zeros((1, 3, 2, 2), np.float32), X.shape, 2), ValueError, "input_shape"),
    (lambda: F.avg_pool2d_backward(np.zeros((1, 2, 2, 2), np.float32), (1, 2, 4), 2), ValueError,
     "input_shape must be 4"),
], ids=["x-int", "x-3d", "padding", "kernel-too-big", "flag-int", "grad-shape", "channels", "input_shape"])
def test_rejects_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
