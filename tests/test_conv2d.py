"""conv2d and conv2d_backward: against the reference over a grid of geometries,
gradient checks, an explicit-loop oracle for the reference itself, empty
batches, memory layouts and argument validation."""

import itertools

import numpy as np
import pytest

import cyconv
import cyconv.functional as F
import cyconv.reference as R
from conftest import (
    KERNEL_TESTS,
    DTYPES,
    LAYOUTS,
    WIDE_GEOMETRIES,
    MODULES,
    assert_close,
    conv_grid,
    out_size,
    pair,
    random_array,
    relayout,
)
from test_winograd import assert_winograd_close
from gradcheck import assert_grad, projection

pytestmark = KERNEL_TESTS

# The grid runs with each algorithm forced in turn where it takes the geometry (the rest skip):
# im2col everywhere, winograd on 3x3 and 5x5 stride-1 kernels (at its own, looser tolerance:
# tests/test_winograd.py), direct on every 1x1, every strided and every 7x7 kernel.
ALGORITHMS = ["im2col", "winograd", "direct"]


def takes(algorithm, kernel, stride, padding):
    """Whether `algorithm` runs this (ungrouped, undilated) geometry."""
    k, s, p = pair(kernel), pair(stride), pair(padding)
    if algorithm == "winograd":
        return k in ((3, 3), (5, 5)) and s == (1, 1)
    if algorithm == "direct":
        return k in ((1, 1), (7, 7)) or s != (1, 1)
    return True




def assert_close_for(algorithm, actual, expected, dtype, err_msg=""):
    if algorithm == "winograd":
        assert_winograd_close(actual, expected, dtype, err_msg)
    else:
        assert_close(actual, expected, dtype, err_msg)

# (N, C, H, W); the last one is too small for some kernels, which conv_grid drops.
IMAGE_SHAPES = [(1, 1, 5, 7), (3, 2, 6, 5), (2, 3, 4, 3)]
OUT_CHANNELS = {1: 1, 2: 4, 3: 2}  # by in_channels: covers O == 1, O > C and O < C

# (geometry..., algorithm): every algorithm on every geometry it takes, none on one it does not
ALGORITHM_GRID = [pytest.param(*g.values, a, id=f"{a}-{g.id}") for g in conv_grid(IMAGE_SHAPES) for a in ALGORITHMS
                  if takes(a, *g.values[1:])]


def make_conv(rng, image_shape, kernel, dtype, bias=True):
    n, c, h, w = image_shape
    kh, kw = pair(kernel)
    o = OUT_CHANNELS[c]
    x = random_array(rng, image_shape, dtype)
    weight = random_array(rng, (o, c, kh, kw), dtype)
    b = random_array(rng, (o,), dtype) if bias else None
    return x, weight, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("image_shape, kernel, stride, padding, algorithm", ALGORITHM_GRID)
def test_conv2d_matches_reference(image_shape, kernel, stride, padding, dtype, algorithm, gemm_path):
    rng = np.random.default_rng(0)
    # Alternate bias / no bias over the batch sizes rather than doubling the grid.
    x, weight, bias = make_conv(rng, image_shape, kernel, dtype, bias=image_shape[0] != 1)
    assert_close_for(
        algorithm,
        F.conv2d(x, weight, bias, stride, padding, algorithm=algorithm),
        R.conv2d(x, weight, bias, stride, padding),
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("image_shape, kernel, stride, padding, algorithm", ALGORITHM_GRID)
def test_conv2d_backward_matches_reference(image_shape, kernel, stride, padding, dtype, algorithm, gemm_path):
    rng = np.random.default_rng(1)
    x, weight, _ = make_conv(rng, image_shape, kernel, dtype, bias=False)
    grad_y = random_array(rng, R.conv2d(x, weight, None, stride, padding).shape, dtype)

    got = F.conv2d_backward(grad_y, x, weight, stride, padding, algorithm=algorithm)
    want = R.conv2d_backward(grad_y, x, weight, stride, padding)
    for name, g, w in zip(["grad_x", "grad_weight", "grad_bias"], got, want):
        assert_close_for(algorithm, g, w, dtype, err_msg=name)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("image_shape, kernel, stride, padding", WIDE_GEOMETRIES)
def test_wide_conv2d_matches_reference(image_shape, kernel, stride, padding, threads, gemm_path):
    """float32 on the fast paths: 13 output channels (a partial row panel of the own
    GEMM), widths past one vector, and batch 1 at 2 threads (the column-split forward)."""
    rng = np.random.default_rng(7)
    n, c, _, _ = image_shape
    x = random_array(rng, image_shape, np.float32)
    weight = random_array(rng, (13, c) + pair(kernel), np.float32)
    bias = random_array(rng, (13,), np.float32)
    want = R.conv2d(x, weight, bias, stride, padding)
    grad_y = random_array(rng, want.shape, np.float32)
    with cyconv.set_num_threads(threads):
        assert_close(F.conv2d(x, weight, bias, stride, padding), want, np.float32)
        assert_close(F.conv2d(x[:1], weight, bias, stride, padding), want[:1], np.float32)
        got = F.conv2d_backward(grad_y, x, weight, stride, padding)
    for name, g, w in zip(["grad_x", "grad_weight", "grad_bias"], got,
                          R.conv2d_backward(grad_y, x, weight, stride, padding)):
        assert_close(g, w, np.float32, err_msg=name)


# Small geometries for the float64 gradient checks: overlapping windows, padding,
# stride skipping input, and everything non-square.
GRADCHECK_GEOMETRIES = [
    pytest.param((2, 2, 5, 4), 3, 1, 1, id="k3-s1-p1"),
    pytest.param((1, 2, 6, 5), (3, 2), (2, 1), (1, 0), id="k(3,2)-s(2,1)-p(1,0)"),
    pytest.param((2, 1, 7, 6), 2, 3, 1, id="k2-s3-p1"),
]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("image_shape, kernel, stride, padding", GRADCHECK_GEOMETRIES)
def test_conv2d_backward_gradcheck(module, image_shape, kernel, stride, padding):
    rng = np.random.default_rng(2)
    x, weight, bias = make_conv(rng, image_shape, kernel, np.float64)
    g = random_array(rng, module.conv2d(x, weight, bias, stride, padding).shape, np.float64)

    grad_x, grad_weight, grad_bias = module.conv2d_backward(g, x, weight, stride, padding)
    assert_grad(grad_x, projection(lambda x_: module.conv2d(x_, weight, bias, stride, padding), g), x)
    assert_grad(grad_weight, projection(lambda w_: module.conv2d(x, w_, bias, stride, padding), g), weight)
    assert_grad(grad_bias, projection(lambda b_: module.conv2d(x, weight, b_, stride, padding), g), bias)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_backward_without_grad_input(module, dtype):
    rng = np.random.default_rng(3)
    x, weight, _ = make_conv(rng, (2, 3, 6, 5), (3, 2), dtype, bias=False)
    grad_y = random_array(rng, module.conv2d(x, weight, None, (2, 1), 1).shape, dtype)

    grad_x, grad_weight, grad_bias = module.conv2d_backward(grad_y, x, weight, (2, 1), 1, grad_input=False)
    _, want_weight, want_bias = module.conv2d_backward(grad_y, x, weight, (2, 1), 1)
    assert grad_x is None
    # The same computation with or without grad_x: exactly equal.
    np.testing.assert_array_equal(grad_weight, want_weight)
    np.testing.assert_array_equal(grad_bias, want_bias)


def conv2d_by_loops(x, weight, bias, stride, padding):
    """The definition of cross-correlation, one output element at a time."""
    (sh, sw), (ph, pw) = pair(stride), pair(padding)
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    ho, wo = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    y = np.zeros((n, o, ho, wo))
    for b, oc, a, col in itertools.product(range(n), range(o), range(ho), range(wo)):
        total = bias[oc]
        for ic, i, j in itertools.product(range(c), range(kh), range(kw)):
            row, column = a * sh + i - ph, col * sw + j - pw
            if 0 <= row < h and 0 <= column < w:
                total += weight[oc, ic, i, j] * x[b, ic, row, column]
        y[b, oc, a, col] = total
    return y


@pytest.mark.parametrize(
    "image_shape, kernel, stride, padding",
    [
        pytest.param((2, 2, 5, 7), (3, 2), (2, 1), (1, 2), id="non-square"),
        pytest.param((1, 3, 6, 6), 4, 3, 2, id="stride-skips-input"),
    ],
)
def test_reference_conv2d_matches_explicit_loops(image_shape, kernel, stride, padding):
    """Checks the reference itself against an independent, obviously correct oracle."""
    rng = np.random.default_rng(4)
    x, weight, bias = make_conv(rng, image_shape, kernel, np.float64)
    np.testing.assert_allclose(
        R.conv2d(x, weight, bias, stride, padding),
        conv2d_by_loops(x, weight, bias, stride, padding),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(module, dtype):
    rng = np.random.default_rng(5)
    x, weight, bias = make_conv(rng, (0, 2, 6, 5), 3, dtype)
    y = module.conv2d(x, weight, bias, 2, 1)
    assert y.shape == (0, 4, 3, 3) and y.dtype == dtype

    grad_x, grad_weight, grad_bias = module.conv2d_backward(y, x, weight, 2, 1)
    assert grad_x.shape == x.shape and grad_x.dtype == dtype
    assert_close(grad_weight, np.zeros(weight.shape, dtype), dtype)
    assert_close(grad_bias, np.zeros(bias.shape, dtype), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(layout, dtype):
    rng = np.random.default_rng(6)
    x, weight, bias = make_conv(rng, (3, 2, 6, 5), 3, dtype)
    grad_y = random_array(rng, F.conv2d(x, weight, bias, 1, 1).shape, dtype)
    x_, weight_, bias_, grad_y_ = (relayout(a, layout) for a in (x, weight, bias, grad_y))

    # A non-contiguous input is copied, so the kernels see the same values: exact.
    np.testing.assert_array_equal(F.conv2d(x_, weight_, bias_, 1, 1), F.conv2d(x, weight, bias, 1, 1))
    for got, want in zip(
        F.conv2d_backward(grad_y_, x_, weight_, 1, 1), F.conv2d_backward(grad_y, x, weight, 1, 1)
    ):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------
# Validation: errors name the function and the argument.

X = np.zeros((2, 3, 6, 5), np.float32)
W = np.zeros((4, 3, 3, 3), np.float32)
B = np.zeros(4, np.float32)
GRAD_Y = np.zeros((2, 4, 4, 3), np.float32)  # conv2d(X, W) with stride 1, padding 0

BAD_CONV2D = [
    pytest.param(lambda: F.conv2d(X[0], W), ValueError, r"conv2d\(\): x", id="x-3d"),
    pytest.param(lambda: F.conv2d(X, W[0, 0]), ValueError, r"conv2d\(\): weight", id="weight-2d"),
    pytest.param(lambda: F.conv2d(X, W[:, :2]), ValueError, r"conv2d\(\).*channels", id="channel-mismatch"),
    pytest.param(lambda: F.conv2d(X, W, B[:3]), ValueError, r"conv2d\(\): bias", id="bias-length"),
    pytest.param(lambda: F.conv2d(X, W, B[None]), ValueError, r"conv2d\(\): bias", id="bias-2d"),
    pytest.param(
        lambda: F.conv2d(X, np.zeros((4, 3, 7, 3), np.float32)), ValueError, r"conv2d\(\).*kernel", id="kernel-too-tall"
    ),
    pytest.param(
        lambda: F.conv2d(X, np.zeros((4, 3, 3, 8), np.float32), padding=1),
        ValueError,
        r"conv2d\(\).*kernel",
        id="kernel-wider-than-padded",
    ),
    pytest.param(lambda: F.conv2d(X, W, stride=0), ValueError, r"conv2d\(\): stride", id="stride-0"),
    pytest.param(lambda: F.conv2d(X, W, stride=(1, 0)), ValueError, r"conv2d\(\): stride", id="stride-pair-0"),
    pytest.param(lambda: F.conv2d(X, W, stride=1.5), (TypeError, ValueError), r"conv2d\(\): stride", id="stride-float"),
    pytest.param(lambda: F.conv2d(X, W, stride=True), (TypeError, ValueError), r"conv2d\(\): stride", id="stride-bool"),
    # "An int or an (h, w) pair": whether a 3-tuple is a type or a value error is not pinned down.
    pytest.param(
        lambda: F.conv2d(X, W, stride=(1, 1, 1)), (TypeError, ValueError), r"conv2d\(\): stride", id="stride-3-tuple"
    ),
    pytest.param(lambda: F.conv2d(X, W, padding=-1), ValueError, r"conv2d\(\): padding", id="padding-negative"),
    pytest.param(
        lambda: F.conv2d(X, W, padding=(0, -1)), ValueError, r"conv2d\(\): padding", id="padding-pair-negative"
    ),
    pytest.param(lambda: F.conv2d(X.astype(np.int32), W), TypeError, r"conv2d\(\): x", id="x-int"),
    pytest.param(
        lambda: F.conv2d(X.astype(np.float16), W.astype(np.float16)), TypeError, r"conv2d\(\): x", id="float16"
    ),
    pytest.param(lambda: F.conv2d(X, W.astype(np.float64)), TypeError, r"conv2d\(\): weight", id="weight-float64"),
    pytest.param(lambda: F.conv2d(X, W, B.astype(np.float64)), TypeError, r"conv2d\(\): bias", id="bias-float64"),
]

BAD_CONV2D_BACKWARD = [
    pytest.param(
        lambda: F.conv2d_backward(GRAD_Y[:, :, :3], X, W),
        ValueError,
        r"conv2d_backward\(\): grad_y",
        id="grad_y-spatial",
    ),
    pytest.param(
        lambda: F.conv2d_backward(GRAD_Y[:, :3], X, W), ValueError, r"conv2d_backward\(\): grad_y", id="grad_y-channels"
    ),
    pytest.param(
        lambda: F.conv2d_backward(GRAD_Y[:1], X, W), ValueError, r"conv2d_backward\(\): grad_y", id="grad_y-batch"
    ),
    pytest.param(
        lambda: F.conv2d_backward(GRAD_Y, X, W, stride=2),
        ValueError,
        r"conv2d_backward\(\): grad_y",
        id="grad_y-stride",
    ),
    pytest.param(
        lambda: F.conv2d_backward(GRAD_Y.astype(np.float64), X, W),
        TypeError,
        r"conv2d_backward\(\): grad_y",
        id="grad_y-float64",
    ),
    pytest.param(lambda: F.conv2d_backward(GRAD_Y, X[0], W), ValueError, r"conv2d_backward\(\): x", id="x-3d"),
    pytest.param(
        lambda: F.conv2d_backward(GRAD_Y, X, W, padding=-1), ValueError, r"conv2d_backward\(\): padding", id="padding"
    ),
]


@pytest.mark.parametrize("call, error, match", BAD_CONV2D + BAD_CONV2D_BACKWARD)
def test_rejects_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# csrc/direct.c at the shapes it is for, larger than the grid's: several bands of output rows per
# image (the stem), batch 1 split over the threads by band, and the same bits as im2col's GEMM.
DIRECT_LAYERS = [
    pytest.param((2, 3, 40, 36), (8, 3, 7, 7), 2, 3, id="stem-7x7-s2-p3"),
    pytest.param((2, 16, 14, 14), (24, 16, 1, 1), 2, 0, id="downsample-1x1-s2"),
    pytest.param((1, 8, 9, 10), (13, 8, 1, 1), 1, 1, id="1x1-p1"),
    pytest.param((3, 6, 15, 13), (10, 6, 3, 3), 2, 1, id="3x3-s2-p1"),
    pytest.param((1, 2, 33, 31), (5, 2, 7, 7), 3, 2, id="7x7-s3-p2"),
]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, w_shape, stride, padding", DIRECT_LAYERS)
def test_direct_conv2d_matches_reference(x_shape, w_shape, stride, padding, dtype, threads, own_gemm):
    rng = np.random.default_rng(5)
    x, weight = random_array(rng, x_shape, dtype), random_array(rng, w_shape, dtype)
    bias = random_array(rng, w_shape[:1], dtype)
    with cyconv.set_num_threads(threads):
        got = F.conv2d(x, weight, bias, stride, padding, algorithm="direct")
        im2col = F.conv2d(x, weight, bias, stride, padding, algorithm="im2col")
        grads = F.conv2d_backward(np.ones_like(got), x, weight, stride, padding, algorithm="direct")
    assert_close(got, R.conv2d(x, weight, bias, stride, padding), dtype)
    # the same GEMM dot products, whatever the bands (im2col on cyconv's own GEMM: the own_gemm fixture, as
    # CYCONV_GEMM=blas would put im2col's on BLAS)
    np.testing.assert_array_equal(got, im2col)
    for name, g, w in zip(["grad_x", "grad_weight", "grad_bias"], grads,
                          R.conv2d_backward(np.ones_like(got), x, weight, stride, padding)):
        assert_close(g, w, dtype, err_msg=name)


@pytest.mark.parametrize("x_shape, w_shape, stride, padding", DIRECT_LAYERS[:3])
def test_direct_conv2d_gradcheck(x_shape, w_shape, stride, padding):
    """float64, algorithm="direct" end to end (its backward is im2col's: checked all the same)."""
    rng = np.random.default_rng(6)
    x, weight = random_array(rng, x_shape, np.float64)[:1, :, :12, :12], random_array(rng, w_shape, np.float64)
    bias = random_array(rng, w_shape[:1], np.float64)

    def conv(x_, w_, b_):
        return F.conv2d(x_, w_, b_, stride, padding, algorithm="direct")

    g = random_array(rng, conv(x, weight, bias).shape, np.float64)
    grad_x, grad_weight, grad_bias = F.conv2d_backward(g, x, weight, stride, padding, algorithm="direct")
    assert_grad(grad_x, projection(lambda x_: conv(x_, weight, bias), g), x)
    assert_grad(grad_weight, projection(lambda w_: conv(x, w_, bias), g), weight)
    assert_grad(grad_bias, projection(lambda b_: conv(x, weight, b_), g), bias)


def test_direct_rejects_what_it_does_not_run():
    x, w = np.ones((1, 2, 6, 6), np.float32), np.ones((3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="algorithm='direct' takes"):
        F.conv2d(x, w, None, 1, 1, algorithm="direct")  # 3x3 stride 1: Winograd's or im2col's
