"""max_pool2d and max_pool2d_backward: against the reference over a grid of
geometries (tie-free data), ties, -inf and NaN handled as PyTorch does, gradient
checks, an explicit-loop oracle for the reference itself, empty batches,
memory layouts and argument validation."""

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
    distinct_array,
    fits,
    geometry_param,
    out_size,
    pair,
    random_array,
    relayout,
)
from gradcheck import assert_grad, projection

pytestmark = KERNEL_TESTS

IMAGE_SHAPES = [(1, 1, 5, 7), (3, 2, 6, 5), (2, 3, 4, 3)]
KERNELS = [1, 2, 3, (2, 3)]
STRIDES = [None, 1, 2, (1, 2)]
PADDINGS = [0, 1, (1, 0)]


def pool_grid():
    """Geometry params wherever padding <= kernel // 2 (PyTorch's limit) and the kernel fits."""
    return [
        geometry_param(shape, kernel, stride, padding)
        for shape, kernel, stride, padding in itertools.product(IMAGE_SHAPES, KERNELS, STRIDES, PADDINGS)
        if all(p <= k // 2 for k, p in zip(pair(kernel), pair(padding))) and fits(shape[2:], kernel, padding)
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("image_shape, kernel, stride, padding", pool_grid())
def test_max_pool2d_matches_reference(image_shape, kernel, stride, padding, dtype):
    x = distinct_array(np.random.default_rng(0), image_shape, dtype)
    want_y, want_indices = R.max_pool2d(x, kernel, stride, padding, return_indices=True)

    y, indices = F.max_pool2d(x, kernel, stride, padding, return_indices=True)
    # A max selects an element: the results are exact.
    np.testing.assert_array_equal(y, want_y, strict=True)
    np.testing.assert_array_equal(indices, want_indices, strict=True)
    np.testing.assert_array_equal(F.max_pool2d(x, kernel, stride, padding), want_y, strict=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("image_shape, kernel, stride, padding", pool_grid())
def test_max_pool2d_backward_matches_reference(image_shape, kernel, stride, padding, dtype):
    rng = np.random.default_rng(1)
    x = distinct_array(rng, image_shape, dtype)
    y, indices = R.max_pool2d(x, kernel, stride, padding, return_indices=True)
    grad_y = random_array(rng, y.shape, dtype)
    assert_close(
        F.max_pool2d_backward(grad_y, indices, image_shape),
        R.max_pool2d_backward(grad_y, indices, image_shape),
        dtype,
    )


# ---------------------------------------------------------------------------
# Ties, -inf and NaN: the argmax rule of PyTorch's CPU kernel, scanning each window
# row by row from maxval = -inf and the first in-bounds element, and taking an
# element when `val > maxval or isnan(val)`.


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_first_maximum_wins_ties(module, dtype):
    x = np.array([[[[1, 5, 5], [5, 2, 0]]]], dtype)
    y, indices = module.max_pool2d(x, 2, 1, return_indices=True)
    np.testing.assert_array_equal(y, [[[[5, 5]]]])
    # Both windows hold several 5s; the first in row-major order is flat position 1.
    np.testing.assert_array_equal(indices, [[[[1, 1]]]])


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("fill", [0.0, -np.inf], ids=["constant", "all-minus-inf"])
def test_tied_windows_with_padding_pick_first_in_bounds_element(module, fill):
    """Padding never wins, even against -inf: a window of equal values points at
    its first element inside the image."""
    x = np.full((1, 1, 3, 3), fill)
    y, indices = module.max_pool2d(x, 3, 1, 1, return_indices=True)
    np.testing.assert_array_equal(y, np.full((1, 1, 3, 3), fill))
    np.testing.assert_array_equal(indices, [[[[0, 0, 1], [0, 0, 1], [3, 3, 4]]]])


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_propagates(module, dtype):
    x = np.array([[[[1, 9, 2, 3], [4, np.nan, 5, 6]]]], dtype)
    y, indices = module.max_pool2d(x, 2, return_indices=True)
    np.testing.assert_array_equal(y, np.array([[[[np.nan, 6]]]], dtype))
    np.testing.assert_array_equal(indices, [[[[5, 7]]]])


@pytest.mark.parametrize("module", MODULES)
def test_last_nan_in_a_window_is_the_index(module):
    """Every NaN passes `isnan(val)`, so with several NaNs the last one scanned wins."""
    x = np.array([[[[np.nan, 1, np.nan, 0]]]])
    y, indices = module.max_pool2d(x, (1, 4), return_indices=True)
    assert np.isnan(y).all()
    np.testing.assert_array_equal(indices, [[[[2]]]])


def max_pool2d_by_loops(x, kernel, stride, padding):
    """PyTorch's CPU max pooling, one window at a time."""
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel), pair(stride), pair(padding)
    n, c, h, w = x.shape
    ho, wo = out_size(h, kh, sh, ph), out_size(w, kw, sw, pw)
    y = np.empty((n, c, ho, wo))
    indices = np.empty((n, c, ho, wo), np.int64)
    for b, ch, a, col in itertools.product(range(n), range(c), range(ho), range(wo)):
        rows = range(max(a * sh - ph, 0), min(a * sh - ph + kh, h))
        columns = range(max(col * sw - pw, 0), min(col * sw - pw + kw, w))
        maxval, maxidx = -np.inf, rows[0] * w + columns[0]
        for row, column in itertools.product(rows, columns):
            val = x[b, ch, row, column]
            if val > maxval or np.isnan(val):
                maxval, maxidx = val, row * w + column
        y[b, ch, a, col], indices[b, ch, a, col] = maxval, maxidx
    return y, indices


@pytest.mark.parametrize(
    "kernel, stride, padding",
    [pytest.param(3, 2, 1, id="k3-s2-p1"), pytest.param((2, 3), (1, 2), (1, 0), id="k(2,3)-s(1,2)-p(1,0)")],
)
def test_reference_matches_explicit_loops(kernel, stride, padding):
    """Checks the reference itself against an independent oracle, on data full of
    ties, -inf and NaN."""
    rng = np.random.default_rng(2)
    x = rng.integers(-2, 3, size=(2, 2, 6, 7)).astype(np.float64)
    x[rng.random(x.shape) < 0.1] = np.nan
    x[rng.random(x.shape) < 0.3] = -np.inf
    y, indices = R.max_pool2d(x, kernel, stride, padding, return_indices=True)
    want_y, want_indices = max_pool2d_by_loops(x, kernel, stride, padding)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(indices, want_indices)


# ---------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize(
    "kernel, stride, padding",
    [
        pytest.param(3, 1, 1, id="overlapping-k3-s1-p1"),
        pytest.param((2, 3), (2, 1), (1, 1), id="k(2,3)-s(2,1)-p(1,1)"),
        pytest.param(2, None, 0, id="k2-default-stride"),
    ],
)
def test_max_pool2d_backward_gradcheck(module, kernel, stride, padding):
    rng = np.random.default_rng(3)
    x = distinct_array(rng, (2, 2, 5, 6), np.float64)
    y, indices = module.max_pool2d(x, kernel, stride, padding, return_indices=True)
    g = random_array(rng, y.shape, np.float64)
    assert_grad(
        module.max_pool2d_backward(g, indices, x.shape),
        projection(lambda x_: module.max_pool2d(x_, kernel, stride, padding), g),
        x,
    )


@pytest.mark.parametrize("module", MODULES)
def test_max_pool2d_backward_adds_up_shared_maxima(module):
    """Overlapping windows with the same maximum send it the sum of their gradients."""
    x = np.array([[[[0.0, 0, 0], [0, 9, 0], [0, 0, 0]]]])
    y, indices = module.max_pool2d(x, 2, 1, return_indices=True)
    grad_x = module.max_pool2d_backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), indices, x.shape)
    np.testing.assert_array_equal(grad_x, [[[[0, 0, 0], [0, 10, 0], [0, 0, 0]]]])


# ---------------------------------------------------------------------------
# Empty batch, layouts


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(module, dtype):
    x = np.zeros((0, 3, 6, 5), dtype)
    y, indices = module.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert y.shape == indices.shape == (0, 3, 3, 3)
    assert y.dtype == dtype and indices.dtype == np.int64
    grad_x = module.max_pool2d_backward(y, indices, x.shape)
    assert grad_x.shape == x.shape and grad_x.dtype == dtype


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(layout, dtype):
    rng = np.random.default_rng(4)
    x = distinct_array(rng, (3, 2, 7, 6), dtype)
    y, indices = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    grad_y = random_array(rng, y.shape, dtype)

    y_, indices_ = F.max_pool2d(relayout(x, layout), 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(y_, y)
    np.testing.assert_array_equal(indices_, indices)
    np.testing.assert_array_equal(
        F.max_pool2d_backward(relayout(grad_y, layout), relayout(indices, layout), x.shape),
        F.max_pool2d_backward(grad_y, indices, x.shape),
    )


# ---------------------------------------------------------------------------
# Validation: errors name the function and the argument.

X = np.zeros((2, 3, 6, 5), np.float32)
GRAD_Y = np.zeros((2, 3, 3, 2), np.float32)  # max_pool2d(X, 2)
INDICES = np.zeros((2, 3, 3, 2), np.int64)
SHAPE = X.shape


def indices_with(value):
    indices = INDICES.copy()
    indices[1, 2, 0, 1] = value
    return indices


BAD_MAX_POOL2D = [
    pytest.param(lambda: F.max_pool2d(X[0], 2), ValueError, r"max_pool2d\(\): x", id="x-3d"),
    pytest.param(lambda: F.max_pool2d(X, 3, padding=2), ValueError, r"max_pool2d\(\): padding", id="padding-gt-half"),
    pytest.param(
        lambda: F.max_pool2d(X, (3, 2), padding=(1, 2)),
        ValueError,
        r"max_pool2d\(\): padding",
        id="padding-pair-gt-half",
    ),
    pytest.param(lambda: F.max_pool2d(X, 2, padding=-1), ValueError, r"max_pool2d\(\): padding", id="padding-negative"),
    pytest.param(
        lambda: F.max_pool2d(X, (2, 2, 2)), (TypeError, ValueError), r"max_pool2d\(\): kernel_size", id="kernel-3-tuple"
    ),
    pytest.param(lambda: F.max_pool2d(X, 0), ValueError, r"max_pool2d\(\): kernel_size", id="kernel-0"),
    pytest.param(lambda: F.max_pool2d(X, -2), ValueError, r"max_pool2d\(\): kernel_size", id="kernel-negative"),
    pytest.param(lambda: F.max_pool2d(X, 7), ValueError, r"max_pool2d\(\).*kernel", id="kernel-too-large"),
    pytest.param(lambda: F.max_pool2d(X, 2, stride=0), ValueError, r"max_pool2d\(\): stride", id="stride-0"),
    pytest.param(
        lambda: F.max_pool2d(X, 2, stride=1.5), (TypeError, ValueError), r"max_pool2d\(\): stride", id="stride-float"
    ),
    pytest.param(
        lambda: F.max_pool2d(X, 2, stride=True), (TypeError, ValueError), r"max_pool2d\(\): stride", id="stride-bool"
    ),
    pytest.param(lambda: F.max_pool2d(X.astype(np.int32), 2), TypeError, r"max_pool2d\(\): x", id="x-int"),
    pytest.param(lambda: F.max_pool2d(X.astype(np.float16), 2), TypeError, r"max_pool2d\(\): x", id="x-float16"),
]

BAD_MAX_POOL2D_BACKWARD = [
    pytest.param(
        lambda: F.max_pool2d_backward(GRAD_Y, indices_with(30), SHAPE),
        ValueError,
        r"max_pool2d_backward\(\): indices",
        id="index-past-plane",
    ),
    pytest.param(
        lambda: F.max_pool2d_backward(GRAD_Y, indices_with(-1), SHAPE),
        ValueError,
        r"max_pool2d_backward\(\): indices",
        id="index-negative",
    ),
    pytest.param(
        lambda: F.max_pool2d_backward(GRAD_Y, INDICES[:, :, :2], SHAPE),
        ValueError,
        r"max_pool2d_backward\(\): (indices|grad_y)",
        id="indices-shape",
    ),
    pytest.param(
        lambda: F.max_pool2d_backward(GRAD_Y, INDICES.astype(np.int32), SHAPE),
        TypeError,
        r"max_pool2d_backward\(\): indices",
        id="indices-int32",
    ),
    pytest.param(
        lambda: F.max_pool2d_backward(GRAD_Y.astype(np.int64), INDICES, SHAPE),
        TypeError,
        r"max_pool2d_backward\(\): grad_y",
        id="grad_y-int",
    ),
]


@pytest.mark.parametrize("call, error, match", BAD_MAX_POOL2D + BAD_MAX_POOL2D_BACKWARD)
def test_rejects_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("relu", [False, True], ids=["max_pool2d", "relu_max_pool2d"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [2, 6, 14, 30, 34, 62])
def test_2x2_kernel_writes_nothing_past_its_output(dtype, width, relu):
    # The 2x2/2 path writes whole rows with masked 16-lane stores, which AddressSanitizer
    # cannot see: call the kernel on the front of larger buffers and check that the
    # guard values behind the outputs survive, for every tail length of a row.
    from cyconv import _kernels

    rng = np.random.default_rng(width)
    planes, height = 3, 4
    x = distinct_array(rng, (planes, height, width), dtype)
    n_out = planes * (height // 2) * (width // 2)
    guard = 64
    y = np.full(n_out + guard, 7.5, dtype)
    indices = np.full(n_out + guard, -7, np.int64)
    _kernels.maxpool2d_forward(y[:n_out], indices[:n_out], x.reshape(-1), planes, height, width,
                               2, 2, 2, 2, 0, 0, height // 2, width // 2, relu, 1)
    assert np.all(y[n_out:] == 7.5) and np.all(indices[n_out:] == -7)
    pool = R.relu_max_pool2d if relu else R.max_pool2d
    want_y, want_i = pool(x[:, None], 2, return_indices=True)
    np.testing.assert_array_equal(y[:n_out], want_y.reshape(-1))
    np.testing.assert_array_equal(indices[:n_out], want_i.reshape(-1))


# Without indices (inference, the predictor) max_pool2d takes each window's maximum in two passes (the
# rows' tap-wise maximum, then each window's taps across it): the values must be the indexed scan's,
# with ties, -inf padding, NaN and a relu, on every tier.
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", [((3, 2, 1), (2, 3, 17, 19)), ((3, 1, 1), (1, 2, 9, 8)), ((2, 2, 0), (1, 2, 9, 8)),
                                      (((3, 2), (2, 1), (1, 0)), (2, 2, 11, 7)), ((5, 3, 2), (1, 1, 13, 33))])
def test_values_without_indices_equal_the_indexed_scan(geometry, dtype, relu):
    (kernel, stride, padding), shape = geometry
    rng = np.random.default_rng(11)
    x = rng.integers(-3, 4, shape).astype(dtype)  # many ties
    x.flat[rng.choice(x.size, 3, replace=False)] = [np.nan, -np.inf, np.inf]
    pool = F.relu_max_pool2d if relu else F.max_pool2d
    y = pool(x, kernel, stride, padding)
    y_indexed, _ = pool(x, kernel, stride, padding, return_indices=True)
    np.testing.assert_array_equal(y, y_indexed)
    np.testing.assert_array_equal(y, R.relu_max_pool2d(x, kernel, stride, padding) if relu else
                                  R.max_pool2d(x, kernel, stride, padding))
