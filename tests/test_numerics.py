"""NaN and +-Inf through the kernels, as PyTorch propagates them.

Every expected result here was first checked against PyTorch 2.13 (CPU) for
the same op and arguments, then written down explicitly, so the suite needs no
torch. The rules, op by op (each test's docstring restates its own):

* conv2d: a NaN in x poisons every output whose window covers it (in every
  output channel, also where the weight at that tap is 0, since 0 * NaN = NaN)
  and nothing else; a NaN in weight[o] poisons the whole output channel o. An
  inf weight tap that falls on zero padding gives NaN (0 * inf): the padding
  is really multiplied, not skipped (PyTorch's own im2col path agrees; its
  oneDNN path, taken for float32 batches of several images, skips padded taps
  and gives finite values there: cyconv keeps the IEEE answer for every batch).
* relu: NaN stays NaN, +inf -> +inf, -inf -> 0. relu_backward selects rather
  than multiplies: grad_x = 0 where x <= 0 (whatever grad_y is, NaN or inf
  included), else grad_y; a NaN x passes grad_y through (PyTorch masks on
  relu's output, and NaN <= 0 is false).
* max_pool2d: a NaN anywhere in a window wins it and the index is the last NaN
  in row-major window order; otherwise the first maximum wins (+inf beats every
  finite value); a window of only -inf gives -inf at its first in-bounds
  element. No index ever points outside the (H, W) plane, with any padding.
* max_pool2d_backward: grad_x[i] is the IEEE sum of the grad_y routed to i
  (inf + -inf = NaN, NaN + anything = NaN); a position no index names is exactly 0.
* linear: a NaN in x[n] poisons y[n, :], a NaN in weight[o] or bias[o] poisons
  y[:, o] (also against zero weights / inputs), inf * 0 = NaN, inf - inf = NaN;
  the same for the few-row (GEMV) and many-row (GEMM) paths.
* softmax_cross_entropy: any finite logits, however extreme, give the analytic
  loss and gradient, without a warning; the loss overflows to inf exactly when
  its true value exceeds the dtype's range (PyTorch: the same). -inf logits on
  non-target classes are fine (probability 0); -inf on the target gives loss
  inf. +inf or NaN in a row makes that row's gradient and the loss NaN, other
  rows unaffected (PyTorch gives nan); a row of only -inf gives NaN too.

"Exactly" means bitwise equality with NaN == NaN (assert_array_equal).
"""

import itertools
import warnings

import numpy as np
import pytest

import cyconv.functional as F
import cyconv.reference as R
from conftest import KERNEL_TESTS, DTYPES, assert_close, random_array

pytestmark = KERNEL_TESTS

nan, inf = np.nan, np.inf


def receptive_mask(out_hw, kernel, stride, padding, h, w):
    """Boolean (Ho, Wo): which outputs' windows cover input position (h, w)."""
    (ho, wo), (kh, kw), (sh, sw), (ph, pw) = out_hw, kernel, stride, padding
    rows = np.arange(ho) * sh - ph
    cols = np.arange(wo) * sw - pw
    return ((rows <= h) & (h < rows + kh))[:, None] & ((cols <= w) & (w < cols + kw))[None, :]


# kernel, stride, padding: the im2col path, the 1x1 path with no im2col, a stride
# larger than the kernel (some inputs are in no window), padding.
CONV_CASES = [
    pytest.param((3, 3), (1, 1), (0, 0), id="k3"),
    pytest.param((1, 1), (1, 1), (0, 0), id="k1-direct"),
    pytest.param((2, 2), (3, 3), (0, 0), id="k2-s3"),
    pytest.param((3, 2), (2, 1), (1, 1), id="k3x2-s2x1-p1"),
]
# Positions in a 7x7 plane: a corner, the centre, one that k2-s3 never reads (row 2).
POSITIONS = [(0, 0), (3, 3), (2, 5)]


@pytest.mark.parametrize("special", [nan, inf, -inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("zero_weight", [False, True], ids=["weights", "zero-weights"])
@pytest.mark.parametrize("position", POSITIONS, ids=lambda p: f"at{p[0]}{p[1]}")
@pytest.mark.parametrize("kernel, stride, padding", CONV_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_special_in_x(kernel, stride, padding, position, zero_weight, special, dtype):
    """A NaN or inf at x[1, 1, h, w] reaches exactly the outputs of image 1 whose
    window covers (h, w), in every output channel. NaN gives NaN there; +-inf with
    positive weights gives +-inf; against all-zero weights both give NaN
    (0 * NaN = 0 * inf = NaN). Every other output is the finite convolution."""
    rng = np.random.default_rng(0)
    x = random_array(rng, (2, 2, 7, 7), dtype)
    if zero_weight:
        weight = np.zeros((3, 2) + kernel, dtype)
    else:
        weight = np.abs(random_array(rng, (3, 2) + kernel, dtype)) + dtype(0.5)
    h, w = position
    clean = R.conv2d(x, weight, None, stride, padding)
    x[1, 1, h, w] = special

    y = F.conv2d(x, weight, None, stride, padding)

    hit = np.zeros(y.shape, bool)
    hit[1] = receptive_mask(y.shape[2:], kernel, stride, padding, h, w)
    if np.isnan(special) or zero_weight:
        want_hit = nan
    else:
        want_hit = special
    np.testing.assert_array_equal(y[hit], np.full(hit.sum(), want_hit, dtype))
    assert np.all(np.isfinite(y[~hit]))
    assert_close(y[~hit], clean[~hit], dtype)


@pytest.mark.parametrize("kernel, stride, padding", CONV_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_nan_in_weight_and_bias(kernel, stride, padding, dtype):
    """A NaN in weight[1] (even with x = 0 at that tap) poisons output channel 1 of
    every image, and a NaN in bias[2] channel 2; channel 0 is untouched."""
    rng = np.random.default_rng(1)
    x = random_array(rng, (2, 2, 7, 7), dtype)
    x[:, :, 0, 0] = 0
    weight = random_array(rng, (3, 2) + kernel, dtype)
    bias = random_array(rng, (3,), dtype)
    clean = R.conv2d(x, weight, bias, stride, padding)
    weight[1, 0, 0, 0] = nan
    bias[2] = nan

    y = F.conv2d(x, weight, bias, stride, padding)

    assert np.all(np.isnan(y[:, 1:]))
    assert_close(y[:, 0], clean[:, 0], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_inf_weight_times_padding_is_nan(dtype):
    """weight[1, 0, 0, 0] = +inf, x = 1, padding 1: the outputs whose top-left tap
    falls on the zero padding (first row and column) are 0 * inf = NaN, the rest
    +inf; channel 0 (finite weights) is finite. PyTorch's im2col path gives
    exactly this (its float32 oneDNN path for larger batches skips padded taps and
    gives finite values instead); skipping padded taps is not IEEE arithmetic."""
    x = np.ones((5, 1, 4, 4), dtype)  # several images: every batch path
    weight = np.ones((2, 1, 3, 3), dtype)
    weight[1, 0, 0, 0] = inf

    y = F.conv2d(x, weight, None, 1, 1)

    want = np.full((5, 4, 4), inf, dtype)
    want[:, 0, :] = want[:, :, 0] = nan
    np.testing.assert_array_equal(y[:, 1], want, strict=True)
    np.testing.assert_array_equal(y[:, 0], R.conv2d(x, weight[:1], None, 1, 1)[:, 0], strict=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_backward_nan_in_grad_y(dtype):
    """A NaN at grad_y[1, 2, 0, 1] with zero weights: grad_bias[2] and all of
    grad_weight[2] are NaN (each is a sum over positions including it, times x);
    grad_x is NaN exactly in image 1's window of that output, in every input
    channel (0 * NaN); everything else is 0 (PyTorch: the same)."""
    x = random_array(np.random.default_rng(2), (2, 2, 5, 5), dtype)
    weight = np.zeros((3, 2, 3, 3), dtype)
    grad_y = np.zeros((2, 3, 3, 3), dtype)
    grad_y[1, 2, 0, 1] = nan

    grad_x, grad_weight, grad_bias = F.conv2d_backward(grad_y, x, weight)

    np.testing.assert_array_equal(grad_bias, np.array([0, 0, nan], dtype), strict=True)
    assert np.all(np.isnan(grad_weight[2])) and np.all(grad_weight[:2] == 0)
    want_x = np.zeros(x.shape, dtype)
    want_x[1, :, 0:3, 1:4] = nan
    np.testing.assert_array_equal(grad_x, want_x, strict=True)


# ---------------------------------------------------------------------------
# ReLU

RELU_X = [nan, inf, -inf, 0.0, -0.0, 1.5, -1.5]


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_special_values(dtype):
    """relu: NaN -> NaN, +inf -> +inf, -inf -> 0, +-0 -> 0 (PyTorch keeps -0.0's
    sign; the value compares equal), 1.5 -> 1.5, -1.5 -> 0. Long enough to run
    any vectorised body and its tail."""
    x = np.tile(np.array(RELU_X, dtype), 11)
    want = np.tile(np.array([nan, inf, 0, 0, 0, 1.5, 0], dtype), 11)
    y = F.relu(x)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize(
    "grad, want",
    [
        pytest.param(5.0, [5, 5, 0, 0, 0, 5, 0], id="finite"),
        pytest.param(nan, [nan, nan, 0, 0, 0, nan, 0], id="nan"),
        pytest.param(inf, [inf, inf, 0, 0, 0, inf, 0], id="inf"),
        pytest.param(-inf, [-inf, -inf, 0, 0, 0, -inf, 0], id="-inf"),
    ],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_backward_special_values(grad, want, dtype):
    """relu_backward with x = [NaN, inf, -inf, 0, -0, 1.5, -1.5]: grad_y passes
    where x > 0 or x is NaN, and is replaced by exactly 0 where x <= 0, even a
    NaN or inf grad_y (a select, not grad_y * mask, which would give NaN)."""
    x = np.tile(np.array(RELU_X, dtype), 11)
    grad_y = np.full(x.shape, grad, dtype)
    np.testing.assert_array_equal(F.relu_backward(grad_y, x), np.tile(np.array(want, dtype), 11), strict=True)


# ---------------------------------------------------------------------------
# Max pooling

# The 16 NaN patterns of a 2x2 window, taps in row-major order tl, tr, bl, br.
NAN_PATTERNS = list(itertools.product([False, True], repeat=4))


@pytest.mark.parametrize("others", ["finite", "inf", "-inf"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_2x2_nan_patterns(others, dtype):
    """Every NaN pattern of a 2x2/2 window (the dedicated kernel; float32 also its
    AVX-512 row, 17 windows a row covers a full vector and a tail), the other taps
    finite, one of them +inf, or all -inf: with any NaN the output is NaN at the
    last NaN in row-major order; else the first maximum (+inf if present)."""
    rng = np.random.default_rng(3)
    n_windows = len(NAN_PATTERNS) + 1  # the last window has no NaN
    x = random_array(rng, (2, 1, 2, 2 * n_windows), dtype)
    if others == "inf":
        x[:, :, 1, 0::2] = inf  # bottom-left tap of every window
    elif others == "-inf":
        x[...] = -inf
    want_y = np.empty((2, 1, 1, n_windows), dtype)
    want_i = np.empty((2, 1, 1, n_windows), np.int64)
    for k in range(n_windows):
        pattern = NAN_PATTERNS[k] if k < len(NAN_PATTERNS) else (False,) * 4
        taps = [(0, 2 * k), (0, 2 * k + 1), (1, 2 * k), (1, 2 * k + 1)]
        for (r, c), is_nan in zip(taps, pattern):
            if is_nan:
                x[:, :, r, c] = nan
        for n in range(2):
            values = [x[n, 0, r, c] for r, c in taps]
            if any(pattern):
                best = max(t for t in range(4) if pattern[t])
            else:
                best = int(np.argmax(values))  # first maximum
            want_y[n, 0, 0, k] = values[best]
            want_i[n, 0, 0, k] = taps[best][0] * x.shape[3] + taps[best][1]

    y, indices = F.max_pool2d(x, 2, return_indices=True)

    np.testing.assert_array_equal(y, want_y, strict=True)
    np.testing.assert_array_equal(indices, want_i, strict=True)
    np.testing.assert_array_equal(F.max_pool2d(x, 2), want_y, strict=True)


# Written down from PyTorch's max_pool2d(return_indices=True) on a 4x4 plane of -inf
# (with and without two NaNs at (0, 0) and (0, 1)).
ALL_MINUS_INF = {
    (2, 2, 0): [0, 2, 8, 10],
    (3, 1, 1): [0, 0, 1, 2, 0, 0, 1, 2, 4, 4, 5, 6, 8, 8, 9, 10],
    (2, 1, 1): [0, 0, 1, 2, 3, 0, 0, 1, 2, 3, 4, 4, 5, 6, 7, 8, 8, 9, 10, 11, 12, 12, 13, 14, 15],
    (3, 2, 1): [0, 1, 4, 5],
    (5, 2, 2): [0, 0, 0, 0],
}
TWO_NANS = {
    (2, 2, 0): ([nan, -inf, -inf, -inf], [1, 2, 8, 10]),
    (3, 1, 1): ([nan, nan, nan, -inf, nan, nan, nan] + [-inf] * 9,
                [1, 1, 1, 2, 1, 1, 1, 2, 4, 4, 5, 6, 8, 8, 9, 10]),
    (3, 2, 1): ([nan, nan, -inf, -inf], [1, 1, 4, 5]),
}


@pytest.mark.parametrize("geometry", list(ALL_MINUS_INF), ids=lambda g: "k{}-s{}-p{}".format(*g))
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_all_minus_inf_windows(geometry, dtype):
    """A window of only -inf gives -inf at its first in-bounds element (PyTorch's
    indices, written down): padding, which acts as -inf, never wins, so even a
    window mostly in the padding points inside the plane."""
    kernel, stride, padding = geometry
    x = np.full((1, 1, 4, 4), -inf, dtype)
    y, indices = F.max_pool2d(x, kernel, stride, padding, return_indices=True)
    assert np.all(y == -inf)
    np.testing.assert_array_equal(indices.ravel(), ALL_MINUS_INF[geometry], strict=False)


@pytest.mark.parametrize("geometry", list(TWO_NANS), ids=lambda g: "k{}-s{}-p{}".format(*g))
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_nan_beats_minus_inf(geometry, dtype):
    """NaNs at (0, 0) and (0, 1) in a plane of -inf: every window holding one is
    NaN and points at the last NaN it holds; the rest as with all -inf."""
    kernel, stride, padding = geometry
    x = np.full((1, 1, 4, 4), -inf, dtype)
    x[0, 0, 0, :2] = nan
    y, indices = F.max_pool2d(x, kernel, stride, padding, return_indices=True)
    want_y, want_i = TWO_NANS[geometry]
    np.testing.assert_array_equal(y.ravel(), np.array(want_y, dtype))
    np.testing.assert_array_equal(indices.ravel(), want_i)


@pytest.mark.parametrize("fill", [nan, -inf, inf], ids=["nan", "-inf", "inf"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_indices_stay_in_plane(fill, dtype):
    """For every kernel 1..5, stride 1..4 and padding up to kernel // 2 on planes
    of 1..6 pixels a side filled with one special value, every index lies in
    [0, H*W), names an element inside its own window, and the output is the
    fill value; the reference (PyTorch's rule) agrees exactly."""
    for k, s, p, h, w in itertools.product(range(1, 6), range(1, 5), range(3), range(1, 7), range(1, 7)):
        if p > k // 2 or h + 2 * p < k or w + 2 * p < k:
            continue
        x = np.full((1, 2, h, w), fill, dtype)
        y, indices = F.max_pool2d(x, k, s, p, return_indices=True)
        assert indices.min() >= 0 and indices.max() < h * w, (k, s, p, h, w)
        rows, cols = np.divmod(indices[0, 0], w)
        top = np.arange(y.shape[2])[:, None] * s - p
        left = np.arange(y.shape[3])[None, :] * s - p
        assert np.all((top <= rows) & (rows < top + k) & (left <= cols) & (cols < left + k)), (k, s, p, h, w)
        np.testing.assert_array_equal(y, np.full(y.shape, fill, dtype))
        want_y, want_i = R.max_pool2d(x, k, s, p, return_indices=True)
        np.testing.assert_array_equal(y, want_y, strict=True)
        np.testing.assert_array_equal(indices, want_i, strict=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_backward_special_grads(dtype):
    """grad_y routed to one position is summed in IEEE arithmetic: +inf and -inf
    give NaN, a NaN stays NaN, finite values add; positions no index names are
    exactly 0 (PyTorch: the same). Also the overlapping (k2, s1, p1) case
    PyTorch was checked on: x = [[9, 0], [0, 0]], indices [[0, 0, 1], [0, 0, 1],
    [2, 2, 3]], grad_y = [[inf, -inf, 1], [2, 3, 4], [5, 6, 7]] -> [[NaN, 5], [11, 7]]."""
    grad_y = np.array([[[[inf, -inf], [nan, 1.0]], [[inf, 2.0], [-inf, 3.0]]]], dtype)
    indices = np.array([[[[0, 0], [3, 3]], [[1, 1], [2, 2]]]], np.int64)
    grad_x = F.max_pool2d_backward(grad_y, indices, (1, 2, 2, 2))
    want = np.array([[[[nan, 0], [0, nan]], [[0, inf], [-inf, 0]]]], dtype)
    np.testing.assert_array_equal(grad_x, want, strict=True)

    x = np.array([[[[9.0, 0], [0, 0]]]], dtype)
    _, indices = F.max_pool2d(x, 2, 1, 1, return_indices=True)
    np.testing.assert_array_equal(indices, [[[[0, 0, 1], [0, 0, 1], [2, 2, 3]]]])
    grad_y = np.array([[[[inf, -inf, 1], [2, 3, 4], [5, 6, 7]]]], dtype)
    grad_x = F.max_pool2d_backward(grad_y, indices, x.shape)
    np.testing.assert_array_equal(grad_x, np.array([[[[nan, 5], [11, 7]]]], dtype), strict=True)


# ---------------------------------------------------------------------------
# Linear


@pytest.mark.parametrize("n", [2, 6], ids=["gemv-rows", "gemm-rows"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_special_values(n, dtype):
    """NaN in x[1] (weights all 0) -> y[1, :] NaN; NaN in bias[0] -> y[:, 0] NaN;
    +inf in weight[1] against x = 0 -> y[:, 1] NaN (0 * inf); +inf and -inf in
    weight[2] against x = 1 -> y[:, 2] NaN (inf - inf); everything else exact."""
    x = np.zeros((n, 5), dtype)
    weight = np.zeros((4, 5), dtype)
    bias = np.array([nan, 1, 2, 3], dtype)
    x[1, 2] = nan
    y = F.linear(x, weight, bias)
    want = np.tile(np.array([nan, 1, 2, 3], dtype), (n, 1))
    want[1, :] = nan
    np.testing.assert_array_equal(y, want, strict=True)

    weight[1, 4] = inf
    np.testing.assert_array_equal(F.linear(np.zeros((n, 5), dtype), weight)[:, 1], np.full(n, nan, dtype))
    weight[2, 3], weight[2, 4] = inf, -inf
    y = F.linear(np.ones((n, 5), dtype), weight)
    np.testing.assert_array_equal(y, np.tile(np.array([0, inf, nan, 0], dtype), (n, 1)), strict=True)


# ---------------------------------------------------------------------------
# Softmax cross-entropy


def no_warnings(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call()


def analytic(logits, target):
    """The loss in float64, as (max - target logit) + log(sum exp(logit - max)):
    the first term is exact for these inputs, the second is log(number of classes
    tied at the max) here, so the sum keeps the log(2) that max + log(...) - target
    would lose to cancellation at 3e38."""
    z = logits.astype(np.float64)
    rows = np.arange(len(target))
    m = z.max(axis=1)
    with np.errstate(over="ignore"):  # 1e308 - -1e308 -> -inf: exp gives the right 0
        log_sum = np.log(np.exp(z - m[:, None]).sum(axis=1))
    return float(np.mean((m - z[rows, target]) + log_sum))


@pytest.mark.parametrize(
    "logits, target, dtype, want_grad",
    [
        # PyTorch: loss 0.3465736 (= log(2)/2), grad below.
        pytest.param([[3e38, -3e38, 0], [-3e38, 3e38, 3e38]], [0, 1], np.float32,
                     [[0, 0, 0], [0, -0.25, 0.25]], id="3e38-f32"),
        # PyTorch: loss 1e30, grad below.
        pytest.param([[1e30, -1e30, 0], [-1e30, 1e30, 0]], [0, 0], np.float32,
                     [[0, 0, 0], [-0.5, 0.5, 0]], id="1e30-f32"),
        # PyTorch: loss 5e307.
        pytest.param([[1e300, -1e300, 0], [0, 1e308, -1e308]], [0, 0], np.float64,
                     [[0, 0, 0], [-0.5, 0.5, 0]], id="1e308-f64"),
        # PyTorch: loss 1.0634640 (log(1 + e^-2) + ... ), -inf classes get probability 0.
        pytest.param([[-inf, 2, -inf], [1, -inf, 3]], [1, 0], np.float32, None, id="-inf-nontarget-f32"),
        pytest.param([[-inf, 2, -inf], [1, -inf, 3]], [1, 0], np.float64, None, id="-inf-nontarget-f64"),
        pytest.param([[5.0], [1e30]], [0, 0], np.float32, [[0], [0]], id="one-class"),
    ],
)
def test_softmax_cross_entropy_extreme_finite(logits, target, dtype, want_grad):
    """Extreme finite logits (and -inf on non-target classes) give a finite loss
    equal to the analytic value, the analytic gradient, and no NumPy warning
    (the row-max shift may overflow to -inf, which is the correct limit)."""
    logits = np.array(logits, dtype)
    target = np.array(target)
    loss, grad = no_warnings(lambda: F.softmax_cross_entropy(logits, target))
    assert np.isfinite(loss)
    np.testing.assert_allclose(loss, analytic(logits, target), rtol=1e-6)
    assert grad.dtype == dtype and np.all(np.isfinite(grad))
    if want_grad is None:
        z = logits.astype(np.float64)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(target)), target] -= 1
        want_grad = p / len(target)
    assert_close(grad, np.array(want_grad, np.float64).astype(dtype), dtype)


@pytest.mark.parametrize(
    "logits, target, dtype, want_grad",
    [
        # True loss 6e38 + ... > float32 max: PyTorch gives inf and this gradient.
        pytest.param([[3e38, -3e38, 0], [-3e38, 3e38, 3e38]], [1, 0], np.float32,
                     [[0.5, -0.5, 0], [-0.5, 0.25, 0.25]], id="beyond-f32"),
        # True loss 3.4e308 > float64 max: PyTorch gives inf.
        pytest.param([[1.7e308, -1.7e308, 0]], [1], np.float64, [[1, -1, 0]], id="beyond-f64"),
        # -inf on the target: probability 0, loss inf (PyTorch: inf, grad below).
        pytest.param([[-inf, 2, 0]], [0], np.float32, None, id="-inf-target"),
    ],
)
def test_softmax_cross_entropy_infinite_loss(logits, target, dtype, want_grad):
    """The loss overflows to inf exactly when its true value is beyond the dtype's
    range; the gradient stays finite and exact (PyTorch: the same)."""
    logits = np.array(logits, dtype)
    loss, grad = no_warnings(lambda: F.softmax_cross_entropy(logits, np.array(target)))
    assert loss == inf
    if want_grad is None:
        e = np.exp(np.array([2.0, 0.0]))
        want_grad = [[-1, *(e / e.sum())]]
    assert_close(grad, np.array(want_grad, np.float64).astype(dtype), dtype)


@pytest.mark.parametrize(
    "bad_row",
    [
        pytest.param([inf, 2, 0], id="+inf-target"),
        pytest.param([2, inf, 0], id="+inf-nontarget"),
        pytest.param([inf, inf, 0], id="two-+inf"),
        pytest.param([nan, 2, 0], id="nan"),
        pytest.param([2, 0, nan], id="nan-last"),
        pytest.param([-inf, -inf, -inf], id="all--inf"),
    ],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_nan_and_plus_inf(bad_row, dtype):
    """+inf or NaN in a row, or a row of only -inf: the loss is NaN and that row's
    gradient is all NaN (PyTorch: nan and the same gradient); the other row's
    gradient is unaffected. Returns promptly (the op is NumPy in a fixed number of
    passes; target is validated before any indexing)."""
    logits = np.array([bad_row, [1, 2, 3]], dtype)
    target = np.array([0, 1])
    with np.errstate(invalid="ignore"):  # inf - inf in the row-max shift
        loss, grad = F.softmax_cross_entropy(logits, target)
        _, clean_grad = R.softmax_cross_entropy(logits[1:], target[1:])
    assert np.isnan(loss)
    assert np.all(np.isnan(grad[0]))
    # A batch of 2 halves the clean row's gradient relative to a batch of 1.
    assert_close(grad[1], clean_grad[0] / 2, dtype)
