"""conv2d_relu_max_pool2d and its backward: equal to the three ops one after the other, bit for
bit, on both GEMM paths, 1 and 2 threads and one image (the column-split path); against the
reference; `out`/`accumulate`; bad arguments, including indices that leave the outputs alone."""

import numpy as np
import pytest

import cyconv
import cyconv.functional as F
import cyconv.reference as R
from conftest import KERNEL_TESTS, DTYPES, assert_close, random_array

pytestmark = KERNEL_TESTS

# (x shape, weight shape, conv stride, conv padding, pool size, pool stride, pool padding)
GEOMETRIES = [
    pytest.param((3, 1, 28, 28), (20, 1, 5, 5), 1, 2, 2, None, 0, id="lenet-conv1"),
    pytest.param((3, 20, 14, 14), (50, 20, 5, 5), 1, 2, 2, None, 0, id="lenet-conv2"),
    pytest.param((2, 3, 9, 11), (4, 3, 3, 2), (2, 1), 1, 3, 1, 1, id="strided-overlapping-pool"),
    pytest.param((2, 4, 6, 7), (5, 4, 1, 1), 1, 0, (2, 3), (1, 2), (1, 0), id="1x1-direct"),
]


def unfused(module, x, w, b, stride, padding, pool, grad_y_for):
    conv = module.conv2d(x, w, b, stride, padding)
    y, indices = module.relu_max_pool2d(conv, *pool, return_indices=True)
    grad_y = grad_y_for(y.shape)
    grads = module.conv2d_backward(module.relu_max_pool2d_backward(grad_y, y, indices, conv.shape), x, w,
                                   stride, padding)
    return y, indices, grad_y, grads


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, ws, stride, padding, pool_size, pool_stride, pool_padding", GEOMETRIES)
def test_equals_the_three_ops_bit_for_bit(xs, ws, stride, padding, pool_size, pool_stride, pool_padding,
                                          dtype, threads, gemm_path):
    rng = np.random.default_rng(0)
    x, w, b = random_array(rng, xs, dtype), random_array(rng, ws, dtype), random_array(rng, ws[:1], dtype)
    pool = (pool_size, pool_stride, pool_padding)
    with cyconv.set_num_threads(threads):
        for n in (xs[0], 1):  # a batch, and one image (fewer images than threads)
            want_y, want_i, grad_y, want = unfused(F, x[:n], w, b, stride, padding, pool,
                                                   lambda shape: random_array(rng, shape, dtype))
            y, indices = F.conv2d_relu_max_pool2d(x[:n], w, b, stride, padding, *pool, return_indices=True)
            np.testing.assert_array_equal(y, want_y, strict=True)
            np.testing.assert_array_equal(indices, want_i, strict=True)
            np.testing.assert_array_equal(F.conv2d_relu_max_pool2d(x[:n], w, b, stride, padding, *pool), want_y)
            got = F.conv2d_relu_max_pool2d_backward(grad_y, y, indices, x[:n], w, stride, padding)
            for name, g, v in zip(("grad_x", "grad_weight", "grad_bias"), got, want):
                np.testing.assert_array_equal(g, v, err_msg=name, strict=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, ws, stride, padding, pool_size, pool_stride, pool_padding", GEOMETRIES)
def test_matches_reference_exactly_on_integer_data(xs, ws, stride, padding, pool_size, pool_stride,
                                                   pool_padding, dtype):
    # Small integers: every sum is exact in float32 too, so both implementations compute the same
    # convolution outputs to the last bit, whatever their order of summation. The pooling's choices
    # (ties included: first maximum wins) and everything downstream must then agree exactly, each side
    # from its own forward: an independent check of the indices and of the backward.
    rng = np.random.default_rng(1)
    x = rng.integers(-3, 4, xs).astype(dtype)
    w, b = rng.integers(-2, 3, ws).astype(dtype), rng.integers(-2, 3, ws[:1]).astype(dtype)
    pool = (pool_size, pool_stride, pool_padding)
    y, indices = F.conv2d_relu_max_pool2d(x, w, b, stride, padding, *pool, return_indices=True)
    want_y, want_i = R.conv2d_relu_max_pool2d(x, w, b, stride, padding, *pool, return_indices=True)
    np.testing.assert_array_equal(y, want_y, strict=True)
    np.testing.assert_array_equal(indices, want_i, strict=True)
    grad_y = rng.integers(-3, 4, y.shape).astype(dtype)
    got = F.conv2d_relu_max_pool2d_backward(grad_y, y, indices, x, w, stride, padding)
    want = R.conv2d_relu_max_pool2d_backward(grad_y, want_y, want_i, x, w, stride, padding)
    for name, g, v in zip(("grad_x", "grad_weight", "grad_bias"), got, want):
        np.testing.assert_array_equal(g, v, err_msg=name, strict=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, ws, stride, padding, pool_size, pool_stride, pool_padding", GEOMETRIES)
def test_matches_reference_on_random_data(xs, ws, stride, padding, pool_size, pool_stride, pool_padding, dtype):
    # Gaussian data: the outputs to float rounding. (Where two candidates of a window are within
    # rounding of each other the two sides may pick different ones; the exact test above covers
    # the choice itself.)
    rng = np.random.default_rng(1)
    x, w, b = random_array(rng, xs, dtype), random_array(rng, ws, dtype), random_array(rng, ws[:1], dtype)
    pool = (pool_size, pool_stride, pool_padding)
    y = F.conv2d_relu_max_pool2d(x, w, b, stride, padding, *pool)
    assert_close(y, R.conv2d_relu_max_pool2d(x, w, b, stride, padding, *pool), dtype)


def test_out_accumulate_and_no_input_gradient():
    rng = np.random.default_rng(2)
    x, w = random_array(rng, (3, 2, 8, 8), np.float64), random_array(rng, (4, 2, 3, 3), np.float64)
    y, indices = F.conv2d_relu_max_pool2d(x, w, None, 1, 1, return_indices=True)
    grad_y = random_array(rng, y.shape, np.float64)
    _, want_w, want_b = F.conv2d_relu_max_pool2d_backward(grad_y, y, indices, x, w, 1, 1)
    out = (np.ones_like(want_w), np.ones_like(want_b))
    grad_x, got_w, got_b = F.conv2d_relu_max_pool2d_backward(grad_y, y, indices, x, w, 1, 1, grad_input=False,
                                                             out=out, accumulate=True)
    assert grad_x is None and got_w is out[0] and got_b is out[1]
    np.testing.assert_allclose(got_w, 1 + want_w, rtol=1e-12)
    np.testing.assert_allclose(got_b, 1 + want_b, rtol=1e-12)


def test_bad_indices_raise_and_leave_out_alone():
    rng = np.random.default_rng(3)
    x, w = random_array(rng, (2, 1, 8, 8), np.float32), random_array(rng, (3, 1, 3, 3), np.float32)
    y, indices = F.conv2d_relu_max_pool2d(x, w, None, 1, 1, return_indices=True)
    y = np.abs(y) + 1  # every gradient passes the ReLU
    indices = indices.copy()
    indices[1, 2, 0, 0] = 64
    out = (np.full(w.shape, 5, np.float32), np.full(3, 5, np.float32))
    with pytest.raises(ValueError, match=r"indices has 1 entries outside \[0, H\*W\) = \[0, 64\)"):
        F.conv2d_relu_max_pool2d_backward(np.ones_like(y), y, indices, x, w, 1, 1, out=out, accumulate=True)
    assert (out[0] == 5).all() and (out[1] == 5).all()


X, W = np.zeros((2, 1, 8, 8), np.float32), np.zeros((3, 1, 3, 3), np.float32)
Y = np.zeros((2, 3, 4, 4), np.float32)
I = np.zeros((2, 3, 4, 4), np.int64)


@pytest.mark.parametrize("call, error, match", [
    (lambda: F.conv2d_relu_max_pool2d(X, W, None, 1, 1, pool_size=0), ValueError, "pool_size"),
    (lambda: F.conv2d_relu_max_pool2d(X, W, None, 1, 1, pool_padding=2), ValueError, "pool_padding"),
    (lambda: F.conv2d_relu_max_pool2d(X, W, None, 1, 1, pool_size=9), ValueError, "pool_size|larger"),
    (lambda: F.conv2d_relu_max_pool2d(X, W[:, :, :2], None, 1, 1, pool_stride=(1, 2, 3)), ValueError,
     "pool_stride"),
    (lambda: F.conv2d_relu_max_pool2d(X, W.astype(np.float64)), TypeError, "weight"),
    (lambda: F.conv2d_relu_max_pool2d_backward(Y, Y, I.astype(np.int32), X, W, 1, 1), TypeError, "indices"),
    (lambda: F.conv2d_relu_max_pool2d_backward(Y, Y[:1], I, X, W, 1, 1), ValueError, "y must"),
    (lambda: F.conv2d_relu_max_pool2d_backward(Y, Y, I[:, :, :2], X, W, 1, 1), ValueError, "indices must"),
    (lambda: F.conv2d_relu_max_pool2d_backward(Y[:, :2], Y[:, :2], I[:, :2], X, W, 1, 1), ValueError,
     "grad_y must"),
], ids=["pool_size", "pool_padding", "pool-too-big", "pool_stride", "dtype", "indices-dtype", "y-shape",
        "indices-shape", "grad_y-channels"])
def test_rejects_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
