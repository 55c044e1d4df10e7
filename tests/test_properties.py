"""Property-based tests (hypothesis): every cyconv.functional op against its
cyconv.reference twin over randomly drawn geometries, dtypes and memory layouts,
and randomly drawn invalid arguments that must raise ValueError or TypeError.

The grids in the per-op test files cover the shapes we thought of; these cover
the ones we did not: batches of 0..3, 1..4 channels, 1..12 pixels a side,
non-square kernels of 1..5, strides of 1..4 (also larger than the kernel),
paddings of 0..2, inputs exactly the kernel's size, 1x1 kernels, and C-ordered,
Fortran-ordered, sliced, reversed (negative-stride) and read-only inputs.

Runs are derandomized (the "cyconv-properties" profile) so CI sees the same cases
every time; `pytest --hypothesis-show-statistics` prints how many were generated.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import cyconv.functional as F
import cyconv.reference as R
from conftest import KERNEL_TESTS, DTYPES, TOL, assert_close, distinct_array, random_array

pytestmark = KERNEL_TESTS

# Not loaded globally (that would change other modules' hypothesis tests); each
# test below takes it as the parent of its own settings.
settings.register_profile(
    "cyconv-properties",
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile("cyconv-properties")

LAYOUT_NAMES = ["C", "fortran", "sliced", "reversed", "readonly"]


def assert_backward_close(got, want, dtype, grad_input):
    """(grad_x or None, grad_weight, grad_bias) of a backward against the reference's."""
    if grad_input:
        assert_close(got[0], want[0], dtype, "grad_x")
    else:
        assert got[0] is None
    assert_close(got[1], want[1], dtype, "grad_weight")
    assert_close(got[2], want[2], dtype, "grad_bias")


def in_layout(a, layout):
    """The values of ``a`` in another memory layout (copies; ``a`` is untouched).

    Unlike conftest's ``relayout``, a layout that happens to be contiguous (an
    axis of size 1) is accepted: the shapes here are drawn, not chosen.
    """
    if layout == "C" or a.ndim == 0:
        out = a.copy()
    elif layout == "fortran":
        out = np.asfortranarray(a.copy())
    elif layout == "sliced":
        buffer = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        out = buffer[..., ::2]
        out[...] = a
    elif layout == "reversed":
        out = np.flip(np.flip(a).copy())  # negative strides on every axis
    elif layout == "readonly":  # C-contiguous, so passed to the kernel as is
        out = a.copy()
        out.flags.writeable = False
    else:
        raise ValueError(layout)
    np.testing.assert_array_equal(out, a, strict=True)
    return out


def unchanged(before, after):
    """The op did not write to its (read-only) inputs."""
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b, strict=True)


# ---------------------------------------------------------------------------
# Strategies

dtypes = st.sampled_from(DTYPES)
layouts = st.sampled_from(LAYOUT_NAMES)
seeds = st.integers(0, 2**32 - 1)


def size_arg(draw, h, w):
    """(h, w) as the caller may spell it: an int when square, a tuple, a list, NumPy ints."""
    forms = ["tuple", "list", "numpy"] + (["int", "int"] if h == w else [])
    form = draw(st.sampled_from(forms))
    if form == "int":
        return h
    if form == "list":
        return [h, w]
    if form == "numpy":
        return (np.int64(h), np.int32(w))
    return (h, w)


@st.composite
def conv_geometries(draw, pool=False):
    """(N, C, H, W), (kh, kw), (sh, sw), (ph, pw) with the kernel fitting the padded input.

    shape kinds: "any"; "exact" (input exactly the kernel's size); "pointwise" (1x1
    kernel, half the time with stride 1 and no padding: the im2col-free path);
    "2x2" (pooling only: LeNet's kernel 2, stride 2, no padding, a dedicated kernel).
    """
    kinds = ["any", "any", "exact", "pointwise"] + (["2x2"] if pool else [])
    kind = draw(st.sampled_from(kinds))
    n, c = draw(st.integers(0, 3)), draw(st.integers(1, 4))
    if kind == "2x2":
        kh = kw = sh = sw = 2
        ph = pw = 0
    else:
        kh, kw = (1, 1) if kind == "pointwise" else (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
        sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        if pool:
            ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
        else:
            ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
        if kind == "pointwise" and draw(st.booleans()):
            sh = sw = 1
            ph = pw = 0
    if kind == "exact":
        h, w = kh, kw
    else:
        h = draw(st.integers(max(1, kh - 2 * ph), 12))
        w = draw(st.integers(max(1, kw - 2 * pw), 12))
    return (n, c, h, w), (kh, kw), (sh, sw), (ph, pw)


def out_hw(hw, kernel, stride, padding):
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(hw, kernel, stride, padding))


# ---------------------------------------------------------------------------
# Convolution, im2col, col2im


@settings(PROFILE, max_examples=150)
@given(geometry=conv_geometries(), out_channels=st.integers(1, 4), use_bias=st.booleans(),
       dtype=dtypes, x_layout=layouts, w_layout=layouts, seed=seeds, data=st.data())
def test_conv2d(geometry, out_channels, use_bias, dtype, x_layout, w_layout, seed, data):
    shape, kernel, stride, padding = geometry
    rng = np.random.default_rng(seed)
    x = random_array(rng, shape, dtype)
    weight = random_array(rng, (out_channels, shape[1]) + kernel, dtype)
    bias = random_array(rng, (out_channels,), dtype) if use_bias else None
    stride_arg = size_arg(data.draw, *stride)
    padding_arg = size_arg(data.draw, *padding)

    xs, ws = in_layout(x, x_layout), in_layout(weight, w_layout)
    y = F.conv2d(xs, ws, bias, stride_arg, padding_arg)

    assert y.shape == (shape[0], out_channels) + out_hw(shape[2:], kernel, stride, padding)
    assert y.flags.c_contiguous
    assert_close(y, R.conv2d(x, weight, bias, stride, padding), dtype)
    unchanged((x, weight), (xs, ws))


@settings(PROFILE, max_examples=150)
@given(geometry=conv_geometries(), out_channels=st.integers(1, 4), grad_input=st.booleans(),
       dtype=dtypes, layout=layouts, seed=seeds)
def test_conv2d_backward(geometry, out_channels, grad_input, dtype, layout, seed):
    shape, kernel, stride, padding = geometry
    rng = np.random.default_rng(seed)
    x = random_array(rng, shape, dtype)
    weight = random_array(rng, (out_channels, shape[1]) + kernel, dtype)
    grad_y = random_array(rng, (shape[0], out_channels) + out_hw(shape[2:], kernel, stride, padding), dtype)

    got = F.conv2d_backward(in_layout(grad_y, layout), in_layout(x, layout), in_layout(weight, layout),
                            stride, padding, grad_input=grad_input)
    want = R.conv2d_backward(grad_y, x, weight, stride, padding, grad_input=grad_input)

    assert_backward_close(got, want, dtype, grad_input)


@settings(PROFILE, max_examples=120)
@given(geometry=conv_geometries(), dtype=dtypes, layout=layouts, seed=seeds, data=st.data())
def test_im2col(geometry, dtype, layout, seed, data):
    shape, kernel, stride, padding = geometry
    x = random_array(np.random.default_rng(seed), shape, dtype)
    cols = F.im2col(in_layout(x, layout), size_arg(data.draw, *kernel), size_arg(data.draw, *stride),
                    size_arg(data.draw, *padding))
    # A copy with zeros in the padding: exact.
    np.testing.assert_array_equal(cols, R.im2col(x, kernel, stride, padding), strict=True)


@settings(PROFILE, max_examples=120)
@given(geometry=conv_geometries(), dtype=dtypes, layout=layouts, seed=seeds)
def test_col2im(geometry, dtype, layout, seed):
    shape, kernel, stride, padding = geometry
    n, c = shape[:2]
    ho, wo = out_hw(shape[2:], kernel, stride, padding)
    cols = random_array(np.random.default_rng(seed), (n, c * kernel[0] * kernel[1], ho * wo), dtype)
    # input_shape as a list of NumPy ints, the way a caller passes x.shape around.
    got = F.col2im(in_layout(cols, layout), [np.int64(s) for s in shape], kernel, stride, padding)
    assert_close(got, R.col2im(cols, shape, kernel, stride, padding), dtype)


# ---------------------------------------------------------------------------
# Max pooling


@settings(PROFILE, max_examples=150)
@given(geometry=conv_geometries(pool=True), default_stride=st.booleans(), return_indices=st.booleans(),
       dtype=dtypes, layout=layouts, seed=seeds)
def test_max_pool2d(geometry, default_stride, return_indices, dtype, layout, seed):
    shape, kernel, stride, padding = geometry
    if default_stride:
        stride = None
    x = distinct_array(np.random.default_rng(seed), shape, dtype)  # no ties
    want_y, want_indices = R.max_pool2d(x, kernel, stride, padding, return_indices=True)

    got = F.max_pool2d(in_layout(x, layout), kernel, stride, padding, return_indices=return_indices)

    # A max selects an element: exact.
    if return_indices:
        y, indices = got
        np.testing.assert_array_equal(indices, want_indices, strict=True)
        assert indices.size == 0 or (indices.min() >= 0 and indices.max() < shape[2] * shape[3])
    else:
        y = got
    np.testing.assert_array_equal(y, want_y, strict=True)


@settings(PROFILE, max_examples=120)
@given(geometry=conv_geometries(pool=True), from_pooling=st.booleans(), dtype=dtypes, layout=layouts,
       seed=seeds)
def test_max_pool2d_backward(geometry, from_pooling, dtype, layout, seed):
    """Indices from max_pool2d, or any in-range indices (repeats add up)."""
    shape, kernel, stride, padding = geometry
    rng = np.random.default_rng(seed)
    n, c, h, w = shape
    ho, wo = out_hw((h, w), kernel, stride, padding)
    if from_pooling:
        _, indices = R.max_pool2d(distinct_array(rng, shape, dtype), kernel, stride, padding, return_indices=True)
    else:
        indices = rng.integers(0, h * w, (n, c, ho, wo), dtype=np.int64)
    grad_y = random_array(rng, (n, c, ho, wo), dtype)

    got = F.max_pool2d_backward(in_layout(grad_y, layout), in_layout(indices, layout), shape)
    assert_close(got, R.max_pool2d_backward(grad_y, indices, shape), dtype)


# ---------------------------------------------------------------------------
# Elementwise, linear, loss, optimizer

any_shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)


def away_from_zero(rng, shape, dtype):
    """Distinct values with magnitudes in [1/8, 4): never at ReLU's kink."""
    values = distinct_array(rng, shape, np.float64)
    return np.asarray(np.sign(values) * (0.125 + 8 * np.abs(values))).astype(dtype)


@settings(PROFILE, max_examples=100)
@given(shape=any_shapes, dtype=dtypes, layout=layouts, seed=seeds)
def test_relu(shape, dtype, layout, seed):
    x = away_from_zero(np.random.default_rng(seed), shape, dtype)
    np.testing.assert_array_equal(F.relu(in_layout(x, layout)), R.relu(x), strict=True)


@settings(PROFILE, max_examples=100)
@given(shape=any_shapes, dtype=dtypes, layout=layouts, seed=seeds)
def test_relu_backward(shape, dtype, layout, seed):
    rng = np.random.default_rng(seed)
    x = away_from_zero(rng, shape, dtype)
    grad_y = random_array(rng, shape, dtype)
    got = F.relu_backward(in_layout(grad_y, layout), in_layout(x, layout))
    np.testing.assert_array_equal(got, R.relu_backward(grad_y, x), strict=True)


# N up to 8 crosses the kernel's switch from one GEMV per row (N <= 4) to GEMM.
linear_sizes = st.tuples(st.integers(0, 8), st.integers(0, 12), st.integers(0, 12))


@settings(PROFILE, max_examples=120)
@given(sizes=linear_sizes, use_bias=st.booleans(), dtype=dtypes, layout=layouts, seed=seeds)
def test_linear(sizes, use_bias, dtype, layout, seed):
    n, in_features, out_features = sizes
    rng = np.random.default_rng(seed)
    x = random_array(rng, (n, in_features), dtype)
    weight = random_array(rng, (out_features, in_features), dtype)
    bias = random_array(rng, (out_features,), dtype) if use_bias else None
    got = F.linear(in_layout(x, layout), in_layout(weight, layout),
                   None if bias is None else in_layout(bias, layout))
    assert_close(got, R.linear(x, weight, bias), dtype)


@settings(PROFILE, max_examples=120)
@given(sizes=linear_sizes, grad_input=st.booleans(), dtype=dtypes, layout=layouts, seed=seeds)
def test_linear_backward(sizes, grad_input, dtype, layout, seed):
    n, in_features, out_features = sizes
    rng = np.random.default_rng(seed)
    x = random_array(rng, (n, in_features), dtype)
    weight = random_array(rng, (out_features, in_features), dtype)
    grad_y = random_array(rng, (n, out_features), dtype)
    got = F.linear_backward(in_layout(grad_y, layout), in_layout(x, layout), in_layout(weight, layout),
                            grad_input=grad_input)
    want = R.linear_backward(grad_y, x, weight, grad_input=grad_input)
    assert_backward_close(got, want, dtype, grad_input)


@settings(PROFILE, max_examples=100)
@given(n=st.integers(1, 6), k=st.integers(1, 10), scale=st.sampled_from([0.1, 1.0, 30.0, 1e3]),
       target_dtype=st.sampled_from([np.int64, np.int32, np.uint8, np.intp]), dtype=dtypes,
       layout=layouts, seed=seeds)
def test_softmax_cross_entropy(n, k, scale, target_dtype, dtype, layout, seed):
    rng = np.random.default_rng(seed)
    logits = (scale * random_array(rng, (n, k), np.float64)).astype(dtype)
    target = rng.integers(0, k, n).astype(target_dtype)
    loss, grad = F.softmax_cross_entropy(in_layout(logits, layout), in_layout(target, layout))
    want_loss, want_grad = R.softmax_cross_entropy(logits, target)
    assert isinstance(loss, float)
    tol = TOL[dtype]
    np.testing.assert_allclose(loss, want_loss, rtol=tol["rtol"], atol=tol["atol"] * max(1.0, abs(want_loss)))
    assert_close(grad, want_grad, dtype)


@settings(PROFILE, max_examples=100)
@given(shape=any_shapes, use_buffer=st.booleans(), first_step=st.booleans(),
       lr=st.sampled_from([0.0, 1e-3, 0.1, 1.0]), momentum=st.sampled_from([0.0, 0.5, 0.9]),
       weight_decay=st.sampled_from([0.0, 1e-4, 0.1]), dtype=dtypes, grad_layout=layouts, seed=seeds)
def test_sgd_update(shape, use_buffer, first_step, lr, momentum, weight_decay, dtype, grad_layout, seed):
    rng = np.random.default_rng(seed)
    param = random_array(rng, shape, dtype)
    grad = random_array(rng, shape, dtype)
    buffer = random_array(rng, shape, dtype) if use_buffer else None
    got_param, want_param = param.copy(), param.copy()
    got_buffer, want_buffer = (buffer.copy(), buffer.copy()) if use_buffer else (None, None)

    # param and momentum_buffer are updated in place, so they must be C-contiguous; grad need not be.
    F.sgd_update(got_param, in_layout(grad, grad_layout), got_buffer, lr, momentum, weight_decay, first_step)
    R.sgd_update(want_param, grad, want_buffer, lr, momentum, weight_decay, first_step)

    assert_close(got_param, want_param, dtype, "param")
    if use_buffer:
        assert_close(got_buffer, want_buffer, dtype, "momentum_buffer")


# ---------------------------------------------------------------------------
# Invalid arguments: always ValueError or TypeError, from the Python layer,
# before any kernel runs (never a crash, a hang, an OverflowError from the
# Cython boundary, or a garbage result).

INVALID = (ValueError, TypeError)

# Sizes a caller might pass by mistake, none of them a positive int <= 2**31 - 1.
bad_size_values = st.one_of(
    st.integers(-3, 0),
    st.sampled_from([True, False, np.bool_(True), 1.0, 2.5, np.float64(2.0), None, "2", b"2",
                     np.array(2), np.array([2, 2]), 2**31, 2**63, 2**70, -(2**63)]),
    st.sampled_from([(1,), (1, 2, 3), (), (1, True), (2, 1.0), [0, 1], (1, -1), (None, 1), (2**63, 1)]),
)
# Bad paddings: negative, non-int, or far beyond any image (2**31 and up).
bad_padding_values = st.one_of(
    st.integers(-3, -1),
    st.sampled_from([True, np.bool_(False), 0.0, 1.5, None, "1", (1,), (0, 0, 0), (0, -1), (True, 0),
                     (0, 0.5), 2**31, 2**40, 2**63, 2**70, (0, 2**64)]),
)
bad_dtypes = st.sampled_from([np.int32, np.int64, np.uint8, np.float16, np.bool_, np.complex64,
                              np.complex128, np.longdouble, object])


def raises_invalid(call):
    with pytest.raises(INVALID):
        call()


@settings(PROFILE, max_examples=150)
@given(geometry=conv_geometries(), mutation=st.sampled_from([
    "kernel_too_big", "zero_axis", "channels", "x_dtype", "weight_dtype", "mixed_dtype", "bias_shape",
    "bias_dtype", "x_ndim", "weight_ndim", "not_array", "stride", "padding", "grad_y_shape",
]), backward=st.booleans(), data=st.data())
def test_conv2d_invalid(geometry, mutation, backward, data):
    (n, c, h, w), (kh, kw), stride, padding = geometry
    assume(not (backward and mutation.startswith("bias")))  # conv2d_backward takes no bias
    ho, wo = out_hw((h, w), (kh, kw), stride, padding)  # of the valid geometry, before the mutation
    draw = data.draw
    o = draw(st.integers(1, 3))
    dtype = draw(dtypes)
    bias_shape = (o,)
    x_shape, w_shape = (n, c, h, w), (o, c, kh, kw)
    x_dtype = w_dtype = b_dtype = dtype
    if mutation == "kernel_too_big":
        k = h + 2 * padding[0] + draw(st.integers(1, 3))
        w_shape = (o, c, k, kw)
    elif mutation == "zero_axis":
        axis = draw(st.sampled_from(["C", "H", "W", "O", "kh", "kw"]))
        if axis == "C":
            x_shape, w_shape = (n, 0, h, w), (o, 0, kh, kw)
        elif axis in ("H", "W"):
            x_shape = (n, c, 0, w) if axis == "H" else (n, c, h, 0)
        else:
            w_shape = tuple(0 if name == axis else s for name, s in zip(("O", "C", "kh", "kw"), w_shape))
            bias_shape = (w_shape[0],)
    elif mutation == "channels":
        w_shape = (o, c + draw(st.sampled_from([-1, 1, 2])) if c > 1 else c + 1, kh, kw)
    elif mutation == "x_dtype":
        x_dtype = draw(bad_dtypes)
    elif mutation == "weight_dtype":
        w_dtype = draw(bad_dtypes)
    elif mutation == "mixed_dtype":
        w_dtype = b_dtype = np.float64 if dtype == np.float32 else np.float32
    elif mutation == "bias_shape":
        bias_shape = draw(st.sampled_from([(o + 1,), (o, 1), (), (max(o - 1, 0),)]))
    elif mutation == "bias_dtype":
        b_dtype = draw(st.sampled_from([np.int64, np.float16, np.float64 if dtype == np.float32 else np.float32]))
    elif mutation == "x_ndim":
        x_shape = draw(st.sampled_from([x_shape[1:], x_shape + (1,), (n * c * h * w,)]))
    elif mutation == "weight_ndim":
        w_shape = draw(st.sampled_from([w_shape[1:], w_shape + (1,)]))
    elif mutation == "stride":
        stride = draw(bad_size_values)
    elif mutation == "padding":
        padding = draw(bad_padding_values)

    x = np.ones(x_shape, x_dtype)
    weight = np.ones(w_shape, w_dtype)
    if mutation == "not_array":
        x = draw(st.sampled_from(["list", None, 1.0, "memoryview"]))
        x = {"list": np.ones(x_shape).tolist(), "memoryview": memoryview(np.ones(x_shape))}.get(x, x)
    if backward:
        # grad_y has the valid geometry's output shape, so the mutation alone must make the call fail
        gy_shape = (n, o, ho, wo)
        if mutation == "grad_y_shape":
            gy_shape = draw(st.sampled_from([(n, o + 1, ho, wo), (n + 1, o, ho, wo), (n, o, ho + 1, wo),
                                             (n, o, ho, wo + 1), (n, o, ho * wo)]))
        grad_y = np.ones(gy_shape, dtype)
        grad_input = draw(st.booleans())
        raises_invalid(lambda: F.conv2d_backward(grad_y, x, weight, stride, padding, grad_input=grad_input))
    else:
        if mutation == "grad_y_shape":  # no grad_y in forward: pass a bad bias instead
            bias_shape = (o, o)
        bias_mutated = "bias" in mutation or mutation == "grad_y_shape"
        bias = np.ones(bias_shape, b_dtype) if bias_mutated or draw(st.booleans()) else None
        raises_invalid(lambda: F.conv2d(x, weight, bias, stride, padding))


@settings(PROFILE, max_examples=120)
@given(geometry=conv_geometries(), op=st.sampled_from(["im2col", "col2im"]),
       mutation=st.sampled_from(["kernel_too_big", "kernel", "stride", "padding", "dtype", "ndim",
                                 "cols_shape", "input_shape"]), data=st.data())
def test_im2col_col2im_invalid(geometry, op, mutation, data):
    draw = data.draw
    shape, kernel, stride, padding = geometry
    shape = (max(shape[0], 1),) + shape[1:]  # an empty batch makes some huge sizes legal
    n, c, h, w = shape
    dtype = draw(dtypes)
    ho, wo = out_hw((h, w), kernel, stride, padding)
    cols_shape = (n, c * kernel[0] * kernel[1], ho * wo)
    if mutation == "kernel_too_big":
        kernel = (kernel[0], w + 2 * padding[1] + draw(st.integers(1, 3)))
    elif mutation == "kernel":
        kernel = draw(bad_size_values)
    elif mutation == "stride":
        stride = draw(bad_size_values)
    elif mutation == "padding":
        padding = draw(bad_padding_values)
    elif mutation == "dtype":
        dtype = draw(bad_dtypes)
    elif mutation == "ndim":
        shape = draw(st.sampled_from([shape[1:], shape + (1,)]))
        cols_shape = draw(st.sampled_from([cols_shape[1:], cols_shape + (1,)]))
    elif mutation == "cols_shape":
        i = draw(st.integers(0, 2))
        cols_shape = tuple(s + 1 if j == i else s for j, s in enumerate(cols_shape))
        if op == "im2col":  # only col2im takes cols; give im2col a bad x instead
            shape = shape + (1,)
    elif mutation == "input_shape":
        bad = draw(st.sampled_from([(n, c, h), (n, c, h, w, 1), (n, c, -1, w), (n, c, h, 2.0),
                                    (n, True, h, w), None, "nchw", (n, c, 0, w)]))
        if op == "col2im":
            shape = bad
        else:
            shape = (n, c, h)
    if op == "im2col":
        x = np.ones(shape, dtype)
        raises_invalid(lambda: F.im2col(x, kernel, stride, padding))
    else:
        cols = np.ones(cols_shape, dtype)
        raises_invalid(lambda: F.col2im(cols, shape, kernel, stride, padding))


@settings(PROFILE, max_examples=120)
@given(geometry=conv_geometries(pool=True), mutation=st.sampled_from([
    "kernel_too_big", "kernel", "stride", "padding", "padding_over_half", "dtype", "ndim", "not_array",
    "empty_plane",
]), data=st.data())
def test_max_pool2d_invalid(geometry, mutation, data):
    draw = data.draw
    shape, kernel, stride, padding = geometry
    dtype = draw(dtypes)
    if mutation == "kernel_too_big":
        kernel = (shape[2] + 2 * padding[0] + draw(st.integers(1, 3)), kernel[1])
        padding = (0, padding[1])
    elif mutation == "kernel":
        kernel = draw(bad_size_values)
    elif mutation == "stride":
        stride = draw(bad_size_values.filter(lambda v: v is not None))  # None means kernel_size
    elif mutation == "padding":
        padding = draw(bad_padding_values)
    elif mutation == "padding_over_half":
        padding = (kernel[0] // 2 + draw(st.integers(1, 3)), 0)
    elif mutation == "dtype":
        dtype = draw(bad_dtypes)
    elif mutation == "ndim":
        shape = draw(st.sampled_from([shape[1:], shape + (1,), shape[2:]]))
    elif mutation == "empty_plane":  # padding alone would fit the kernel; no element to index
        shape = draw(st.sampled_from([shape[:2] + (0, shape[3]), shape[:2] + (shape[2], 0), shape[:2] + (0, 0)]))
        kernel, padding = (2, 2), (1, 1)
    x = np.ones(shape, dtype)
    if mutation == "not_array":
        x = x.tolist()
    raises_invalid(lambda: F.max_pool2d(x, kernel, stride, padding, return_indices=draw(st.booleans())))


@settings(PROFILE, max_examples=120)
@given(geometry=conv_geometries(pool=True), mutation=st.sampled_from([
    "index_range", "index_dtype", "index_shape", "grad_dtype", "input_shape", "not_array",
]), data=st.data())
def test_max_pool2d_backward_invalid(geometry, mutation, data):
    """Out-of-range indices are counted by the kernel (never written) and raise."""
    draw = data.draw
    shape, kernel, stride, padding = geometry
    shape = (max(shape[0], 1),) + shape[1:]  # an empty grad_y has no index to check
    n, c, h, w = shape
    ho, wo = out_hw((h, w), kernel, stride, padding)
    dtype = draw(dtypes)
    rng = np.random.default_rng(draw(seeds))
    indices = rng.integers(0, h * w, (n, c, ho, wo), dtype=np.int64)
    grad_y = np.ones((n, c, ho, wo), dtype)
    input_shape = shape
    if mutation == "index_range":
        bad = draw(st.sampled_from([-1, h * w, h * w + 7, -(2**63), 2**63 - 1]))
        indices.flat[draw(st.integers(0, indices.size - 1))] = bad
    elif mutation == "index_dtype":
        indices = indices.astype(draw(st.sampled_from([np.int32, np.uint64, np.float64, np.intc])))
        if indices.dtype == np.int64:  # np.intc is int64 nowhere we run, but be sure
            indices = indices.astype(np.int32)
    elif mutation == "index_shape":
        indices = draw(st.sampled_from([indices[:, :, :, :0], indices.reshape(n, c, -1), indices[None]]))
    elif mutation == "grad_dtype":
        grad_y = grad_y.astype(draw(bad_dtypes))
    elif mutation == "input_shape":
        input_shape = draw(st.sampled_from([(n, c, h), (n + 1, c, h, w), (n, c + 1, h, w), (n, c, -1, w),
                                            (n, c, h, 1.5), (n, c, True, w), None, (n, c, 0, 0)]))
    elif mutation == "not_array":
        indices = indices.tolist()
    raises_invalid(lambda: F.max_pool2d_backward(grad_y, indices, input_shape))


@settings(PROFILE, max_examples=120)
@given(op=st.sampled_from(["relu", "relu_backward", "linear", "linear_backward", "softmax_cross_entropy",
                           "sgd_update"]), shape=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       dtype=dtypes, data=st.data())
def test_elementwise_linear_loss_sgd_invalid(op, shape, dtype, data):
    """One drawn mistake per call: a wrong dtype, shape, ndim, or a non-array argument."""
    draw = data.draw
    n, k = shape
    other = np.float64 if dtype == np.float32 else np.float32
    ones = lambda s, d=dtype: np.ones(s, d)  # noqa: E731
    if op == "relu":
        x = draw(st.sampled_from([ones(shape, np.int32), ones(shape, np.float16), ones(shape, bool),
                                  ones(shape, np.complex64), [[1.0]], 1.0, None]))
        call = lambda: F.relu(x)  # noqa: E731
    elif op == "relu_backward":
        grad_y, x = draw(st.sampled_from([
            (ones((n, k + 1)), ones(shape)), (ones(shape, other), ones(shape)), (ones(shape), ones(shape, np.int64)),
            (ones(shape).tolist(), ones(shape)), (ones((n * k,)), ones(shape)),
        ]))
        call = lambda: F.relu_backward(grad_y, x)  # noqa: E731
    elif op == "linear":
        x, weight, bias = draw(st.sampled_from([
            (ones((n, k)), ones((3, k + 1)), None), (ones((n, k)), ones((3, k)), ones((4,))),
            (ones((n, k)), ones((3, k), other), None), (ones((n, k)), ones((3, k)), ones((3,), other)),
            (ones((n, k, 1)), ones((3, k)), None), (ones((k,)), ones((3, k)), None),
            (ones((n, k), np.int64), ones((3, k)), None), (ones((n, k)), ones((3, k)), ones((3, 1))),
        ]))
        call = lambda: F.linear(x, weight, bias)  # noqa: E731
    elif op == "linear_backward":
        grad_y, x, weight = draw(st.sampled_from([
            (ones((n, 4)), ones((n, k)), ones((3, k))), (ones((n + 1, 3)), ones((n, k)), ones((3, k))),
            (ones((n, 3), other), ones((n, k)), ones((3, k))), (ones((n, 3)), ones((n, k)), ones((3, k + 1))),
            (ones((3,)), ones((n, k)), ones((3, k))),
        ]))
        call = lambda: F.linear_backward(grad_y, x, weight, grad_input=draw(st.booleans()))  # noqa: E731
    elif op == "softmax_cross_entropy":
        logits, target = draw(st.sampled_from([
            (ones((0, k)), np.zeros(0, np.int64)), (ones((n, k)), np.zeros(n + 1, np.int64)),
            (ones((n, k)), np.full(n, k, np.int64)), (ones((n, k)), np.full(n, -1, np.int64)),
            (ones((n, k)), np.zeros(n, np.float64)), (ones((n, k)), [0] * n), (ones((n, k)), np.zeros(n, bool)),
            (ones((n, k)), np.zeros((n, 1), np.int64)), (ones((k,)), np.zeros(1, np.int64)),
            (ones((n, k), np.int64), np.zeros(n, np.int64)), (ones((n, 0)), np.zeros(n, np.int64)),
            (ones((n, k)), np.full(n, 2**40, np.int64)), (ones((n, k)), np.full(n, 255, np.uint8)),
        ]))
        call = lambda: F.softmax_cross_entropy(logits, target)  # noqa: E731
    else:
        readonly = ones(shape)
        readonly.flags.writeable = False
        param, grad, buffer = draw(st.sampled_from([
            (ones(shape), ones((n, k + 1)), None), (ones(shape), ones(shape), ones((n, k + 1))),
            (ones(shape), ones(shape, other), None), (ones(shape, np.int32), ones(shape, np.int32), None),
            (ones((n, 2 * k + 2))[:, ::2], ones((n, k + 1)), None),
            (ones((n, k + 1)), ones((n, k + 1)), ones((n, 2 * k + 2))[:, ::2]), (readonly, ones(shape), None),
            (ones(shape).tolist(), ones(shape), None), (ones(shape), ones(shape), ones(shape, other)),
        ]))
        call = lambda: F.sgd_update(param, grad, buffer, 0.1, 0.9)  # noqa: E731
    raises_invalid(call)
