"""adaptive_avg_pool2d and its backward: against the reference (whose bins are checked against
an explicit loop) over sizes that divide, do not divide, overlap and grow; global pooling on
large float32 planes; gradient checks; PyTorch when installed; argument validation; and
nn.AdaptiveAvgPool2d."""

import math

import numpy as np
import pytest

import cyconv
import cyconv.functional as F
import cyconv.nn as nn
import cyconv.reference as R
from conftest import KERNEL_TESTS, DTYPES, MODULES, assert_close, ident, random_array
from gradcheck import assert_grad, projection

pytestmark = KERNEL_TESTS

# (N, C, H, W), output_size
CASES = [
    ((2, 3, 7, 7), 1),            # global average pooling
    ((1, 4, 8, 6), (4, 3)),       # bins divide evenly
    ((2, 2, 7, 5), (3, 2)),       # uneven bins, overlapping
    ((1, 2, 5, 9), (5, 4)),       # Ho == H
    ((2, 1, 3, 4), (6, 7)),       # upsampling: bins of one element, repeated
    ((3, 2, 1, 1), 2),
    ((0, 3, 5, 5), 2),            # empty batch
    ((2, 3, 13, 40), (1, 5)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, size", CASES, ids=ident)
def test_matches_reference(shape, size, dtype):
    rng = np.random.default_rng(0)
    x = random_array(rng, shape, dtype)
    y = F.adaptive_avg_pool2d(x, size)
    assert_close(y, R.adaptive_avg_pool2d(x, size), dtype)
    g = random_array(rng, y.shape, dtype)
    assert_close(F.adaptive_avg_pool2d_backward(g, shape, size), R.adaptive_avg_pool2d_backward(g, shape, size),
                 dtype)


def pool_by_loops(x, size):
    ho, wo = size if isinstance(size, tuple) else (size, size)
    n, c, h, w = x.shape
    y = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            h0, h1 = math.floor(i * h / ho), math.ceil((i + 1) * h / ho)
            w0, w1 = math.floor(j * w / wo), math.ceil((j + 1) * w / wo)
            y[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return y


@pytest.mark.parametrize("shape, size", CASES, ids=ident)
def test_reference_matches_loops(shape, size):
    x = random_array(np.random.default_rng(1), shape, np.float64)
    np.testing.assert_allclose(R.adaptive_avg_pool2d(x, size), pool_by_loops(x, size), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("threads", [1, 2])
def test_global_pool_of_large_float32_planes_keeps_its_digits(threads):
    """Sums in double: the mean of 112*112 float32 values of mean 100 is within an ulp or two."""
    rng = np.random.default_rng(2)
    x = (100 + rng.standard_normal((2, 3, 112, 112))).astype(np.float32)
    with cyconv.set_num_threads(threads):
        y = F.adaptive_avg_pool2d(x, 1)
    exact = x.astype(np.float64).mean(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(y, exact, rtol=2e-7)
    g = rng.standard_normal(y.shape).astype(np.float32)
    grad = F.adaptive_avg_pool2d_backward(g, x.shape, 1)
    np.testing.assert_array_equal(grad, np.broadcast_to((g.astype(np.float64) / 112**2).astype(np.float32), x.shape))


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("shape, size", [CASES[0], CASES[2], CASES[4]], ids=ident)
def test_backward_gradcheck(module, shape, size):
    rng = np.random.default_rng(3)
    x = random_array(rng, shape, np.float64)
    g = random_array(rng, module.adaptive_avg_pool2d(x, size).shape, np.float64)
    assert_grad(module.adaptive_avg_pool2d_backward(g, shape, size),
                projection(lambda x_: module.adaptive_avg_pool2d(x_, size), g), x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, size", CASES, ids=ident)
def test_matches_torch(shape, size, dtype):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: the comparison with it is skipped")
    rng = np.random.default_rng(4)
    x = random_array(rng, shape, dtype)
    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.adaptive_avg_pool2d(tx, size)
    g = random_array(rng, tuple(ty.shape), dtype)
    ty.backward(torch.from_numpy(g))
    assert_close(F.adaptive_avg_pool2d(x, size), ty.detach().numpy(), dtype)
    assert_close(F.adaptive_avg_pool2d_backward(g, shape, size), tx.grad.numpy(), dtype)


@pytest.mark.parametrize("call, error, match", [
    (lambda: F.adaptive_avg_pool2d(np.zeros((1, 1, 4, 4), np.float32), 0), ValueError,
     r"adaptive_avg_pool2d\(\): output_size must be >= 1"),
    (lambda: F.adaptive_avg_pool2d(np.zeros((1, 1, 4, 4), np.float32), (1, 2, 3)), ValueError,
     r"adaptive_avg_pool2d\(\): output_size must be an int or an \(h, w\) pair"),
    (lambda: F.adaptive_avg_pool2d(np.zeros((1, 1, 0, 4), np.float32), 1), ValueError,
     r"adaptive_avg_pool2d\(\): x must have non-empty planes"),
    (lambda: F.adaptive_avg_pool2d(np.zeros((4, 4), np.float32), 1), ValueError,
     r"adaptive_avg_pool2d\(\): x must be 4-D"),
    (lambda: F.adaptive_avg_pool2d_backward(np.zeros((1, 1, 2, 2), np.float32), (1, 1, 4, 4), 1), ValueError,
     r"adaptive_avg_pool2d_backward\(\): grad_y must have shape \(1, 1, 1, 1\)"),
    (lambda: nn.AdaptiveAvgPool2d(-1), ValueError, r"AdaptiveAvgPool2d\(\): output_size must be >= 1"),
])
def test_argument_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_module():
    rng = np.random.default_rng(5)
    x = random_array(rng, (2, 3, 7, 6), np.float32)
    pool = nn.AdaptiveAvgPool2d((3, 2))
    y = pool(x)
    np.testing.assert_array_equal(y, F.adaptive_avg_pool2d(x, (3, 2)))
    g = random_array(rng, y.shape, np.float32)
    np.testing.assert_array_equal(pool.backward(g), F.adaptive_avg_pool2d_backward(g, x.shape, (3, 2)))
    assert pool.output_shape((3, 7, 6)) == (3, 3, 2)
    assert repr(pool) == "AdaptiveAvgPool2d(output_size=(3, 2))"
    assert repr(nn.AdaptiveAvgPool2d(1)) == "AdaptiveAvgPool2d(output_size=1)"
    assert nn.AdaptiveAvgPool2d(1).output_shape((1280, 7, 7)) == (1280, 1, 1)
