"""im2col and col2im: against the reference over a grid of geometries, the
adjoint identity, gradient checks, an explicit-loop oracle for the reference's
layout, empty batches, memory layouts and argument validation."""

import itertools

import numpy as np
import pytest

import cyconv.functional as F
import cyconv.reference as R
from conftest import (
    KERNEL_TESTS,
    DTYPES,
    LAYOUTS,
    MODULES,
    assert_close,
    WIDE_GEOMETRIES,
    conv_grid,
    out_size,
    pair,
    random_array,
    relayout,
)
from gradcheck import assert_grad, projection

pytestmark = KERNEL_TESTS

IMAGE_SHAPES = [(1, 1, 5, 7), (3, 2, 6, 5), (2, 3, 4, 3)]


def cols_shape(image_shape, kernel, stride, padding):
    n, c, h, w = image_shape
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel), pair(stride), pair(padding)
    return (n, c * kh * kw, out_size(h, kh, sh, ph) * out_size(w, kw, sw, pw))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("image_shape, kernel, stride, padding", conv_grid(IMAGE_SHAPES) + WIDE_GEOMETRIES)
def test_im2col_matches_reference(image_shape, kernel, stride, padding, dtype):
    x = random_array(np.random.default_rng(0), image_shape, dtype)
    # A pure copy: bit-for-bit equal.
    want = R.im2col(x, kernel, stride, padding)
    got = F.im2col(x, kernel, stride, padding)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want, strict=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("image_shape, kernel, stride, padding", conv_grid(IMAGE_SHAPES) + WIDE_GEOMETRIES)
def test_col2im_matches_reference(image_shape, kernel, stride, padding, dtype):
    cols = random_array(np.random.default_rng(1), cols_shape(image_shape, kernel, stride, padding), dtype)
    assert_close(
        F.col2im(cols, image_shape, kernel, stride, padding),
        R.col2im(cols, image_shape, kernel, stride, padding),
        dtype,
    )


ADJOINT_GEOMETRIES = [
    pytest.param((2, 3, 6, 5), 3, 1, 1, id="k3-s1-p1"),
    pytest.param((1, 2, 7, 6), (3, 5), (1, 2), (2, 0), id="k(3,5)-s(1,2)-p(2,0)"),
    pytest.param((3, 1, 9, 8), 2, 3, 1, id="k2-s3-p1"),
    pytest.param((2, 2, 5, 7), 5, 2, 2, id="k5-s2-p2"),
]


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("image_shape, kernel, stride, padding", ADJOINT_GEOMETRIES)
def test_col2im_is_adjoint_of_im2col(module, image_shape, kernel, stride, padding):
    """<im2col(x), c> == <x, col2im(c)> for random x and c."""
    rng = np.random.default_rng(2)
    x = random_array(rng, image_shape, np.float64)
    c = random_array(rng, cols_shape(image_shape, kernel, stride, padding), np.float64)
    lhs = np.vdot(module.im2col(x, kernel, stride, padding), c)
    rhs = np.vdot(x, module.col2im(c, image_shape, kernel, stride, padding))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("image_shape, kernel, stride, padding", ADJOINT_GEOMETRIES[:3])
def test_gradcheck(module, image_shape, kernel, stride, padding):
    """Each is the other's backward: the gradient of <im2col(x), g> is col2im(g) and vice versa."""
    rng = np.random.default_rng(3)
    x = random_array(rng, image_shape, np.float64)
    cols = random_array(rng, cols_shape(image_shape, kernel, stride, padding), np.float64)
    g_x = random_array(rng, image_shape, np.float64)
    g_cols = random_array(rng, cols.shape, np.float64)

    assert_grad(
        module.col2im(g_cols, image_shape, kernel, stride, padding),
        projection(lambda x_: module.im2col(x_, kernel, stride, padding), g_cols),
        x,
    )
    assert_grad(
        module.im2col(g_x, kernel, stride, padding),
        projection(lambda c_: module.col2im(c_, image_shape, kernel, stride, padding), g_x),
        cols,
    )


def im2col_by_loops(x, kernel, stride, padding):
    """torch.nn.functional.unfold's layout, one element at a time:
    row (channel, kernel row, kernel column), column (output row, output column)."""
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel), pair(stride), pair(padding)
    n, c, h, w = x.shape
    ho, wo = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    cols = np.zeros((n, c * kh * kw, ho * wo))
    for b, ch, i, j, a, col in itertools.product(range(n), range(c), range(kh), range(kw), range(ho), range(wo)):
        row, column = a * sh + i - ph, col * sw + j - pw
        if 0 <= row < h and 0 <= column < w:
            cols[b, (ch * kh + i) * kw + j, a * wo + col] = x[b, ch, row, column]
    return cols


def test_reference_im2col_matches_explicit_loops():
    """Checks the reference itself (and its row order) against an independent oracle."""
    x = random_array(np.random.default_rng(4), (2, 2, 5, 6), np.float64)
    np.testing.assert_array_equal(R.im2col(x, (3, 2), (2, 1), (1, 2)), im2col_by_loops(x, (3, 2), (2, 1), (1, 2)))


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(module, dtype):
    x = np.zeros((0, 2, 6, 5), dtype)
    cols = module.im2col(x, 3, 2, 1)
    assert cols.shape == (0, 18, 9) and cols.dtype == dtype
    back = module.col2im(cols, x.shape, 3, 2, 1)
    assert back.shape == x.shape and back.dtype == dtype


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(layout, dtype):
    rng = np.random.default_rng(5)
    x = random_array(rng, (3, 2, 6, 5), dtype)
    cols = random_array(rng, cols_shape(x.shape, 3, 2, 1), dtype)
    np.testing.assert_array_equal(F.im2col(relayout(x, layout), 3, 2, 1), F.im2col(x, 3, 2, 1))
    np.testing.assert_array_equal(
        F.col2im(relayout(cols, layout), x.shape, 3, 2, 1), F.col2im(cols, x.shape, 3, 2, 1)
    )


# ---------------------------------------------------------------------------
# Validation: errors name the function and the argument.

X = np.zeros((2, 3, 6, 5), np.float32)
COLS = np.zeros((2, 27, 12), np.float32)  # im2col(X, 3)
SHAPE = X.shape

BAD_IM2COL = [
    pytest.param(lambda: F.im2col(X[0], 3), ValueError, r"im2col\(\): x", id="x-3d"),
    pytest.param(
        lambda: F.im2col(X, (3, 3, 3)), (TypeError, ValueError), r"im2col\(\): kernel_size", id="kernel-3-tuple"
    ),
    pytest.param(lambda: F.im2col(X, 0), ValueError, r"im2col\(\): kernel_size", id="kernel-0"),
    pytest.param(lambda: F.im2col(X, (3, -1)), ValueError, r"im2col\(\): kernel_size", id="kernel-negative"),
    pytest.param(lambda: F.im2col(X, 7), ValueError, r"im2col\(\).*kernel", id="kernel-too-large"),
    pytest.param(lambda: F.im2col(X, 3, stride=0), ValueError, r"im2col\(\): stride", id="stride-0"),
    pytest.param(lambda: F.im2col(X, 3, stride=1.5), (TypeError, ValueError), r"im2col\(\): stride", id="stride-float"),
    pytest.param(
        lambda: F.im2col(X, 3, stride=False), (TypeError, ValueError), r"im2col\(\): stride", id="stride-bool"
    ),
    pytest.param(lambda: F.im2col(X, 3, padding=-2), ValueError, r"im2col\(\): padding", id="padding-negative"),
    pytest.param(lambda: F.im2col(X.astype(np.int64), 3), TypeError, r"im2col\(\): x", id="x-int"),
    pytest.param(lambda: F.im2col(X.astype(np.float16), 3), TypeError, r"im2col\(\): x", id="x-float16"),
]

BAD_COL2IM = [
    pytest.param(lambda: F.col2im(COLS[:, :26], SHAPE, 3), ValueError, r"col2im\(\): cols", id="cols-rows"),
    pytest.param(lambda: F.col2im(COLS[:, :, :11], SHAPE, 3), ValueError, r"col2im\(\): cols", id="cols-columns"),
    pytest.param(lambda: F.col2im(COLS[:1], SHAPE, 3), ValueError, r"col2im\(\): cols", id="cols-batch"),
    pytest.param(lambda: F.col2im(COLS, SHAPE, 3, stride=2), ValueError, r"col2im\(\): cols", id="cols-vs-stride"),
    pytest.param(lambda: F.col2im(COLS[0], SHAPE, 3), ValueError, r"col2im\(\): cols", id="cols-2d"),
    pytest.param(lambda: F.col2im(COLS, SHAPE, 0), ValueError, r"col2im\(\): kernel_size", id="kernel-0"),
    pytest.param(lambda: F.col2im(COLS.astype(np.int32), SHAPE, 3), TypeError, r"col2im\(\): cols", id="cols-int"),
]


@pytest.mark.parametrize("call, error, match", BAD_IM2COL + BAD_COL2IM)
def test_rejects_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
