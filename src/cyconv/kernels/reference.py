"""Pure-NumPy twins of the compiled kernels in ``cyconv.functional``.

This module is the statement of what is correct: the tests compare every compiled
kernel against it, and the benchmarks use it as the baseline. It favours plain
array code over speed, with one rule: Python loops run over kernel offsets
(kh * kw iterations), never over images or pixels.

Conventions (the same as ``cyconv.functional``):

* Arrays are NCHW; float32 and float64. Every result has the dtype of the input,
  and the arithmetic is done in that dtype.
* ``kernel_size``, ``stride`` and ``padding`` are an int or an ``(h, w)`` pair.
* Output size of a window of size k, stride s, padding p over an axis of size n:
  ``(n + 2*p - k) // s + 1``.

Validation is deliberately light: inputs are trusted, so a bad shape fails with
whatever NumPy raises. ``cyconv.functional`` is the layer that checks arguments.
"""

import numpy as np

__all__ = [
    "conv2d",
    "conv2d_backward",
    "im2col",
    "col2im",
    "max_pool2d",
    "max_pool2d_backward",
    "relu_max_pool2d",
    "relu_max_pool2d_backward",
    "conv2d_relu_max_pool2d",
    "conv2d_relu_max_pool2d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool2d_backward",
    "relu",
    "relu_backward",
    "hardtanh",
    "hardtanh_backward",
    "relu6",
    "relu6_backward",
    "sigmoid",
    "sigmoid_backward",
    "tanh",
    "tanh_backward",
    "softmax",
    "softmax_backward",
    "log_softmax",
    "log_softmax_backward",
    "dropout",
    "dropout_backward",
    "batch_norm",
    "batch_norm_backward",
    "linear",
    "linear_backward",
    "softmax_cross_entropy",
    "sgd_update",
    "adam_update",
]


def _pair(value):
    """``3 -> (3, 3)``; ``(3, 5) -> (3, 5)``."""
    if isinstance(value, (tuple, list)):
        h, w = value
        return int(h), int(w)
    return int(value), int(value)


def _out_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def _windows(padded, kernel, stride, out_shape, dilation=(1, 1)):
    """Yield ``(i, j, view)`` for every kernel offset.

    ``view[..., a, b] == padded[..., a*sh + i*dh, b*sw + j*dw]``: the element at kernel
    offset (i, j) of every output position's window, as one strided slice.
    """
    kh, kw = kernel
    sh, sw = stride
    dh, dw = dilation
    ho, wo = out_shape
    for i in range(kh):
        for j in range(kw):
            yield i, j, padded[..., i * dh : i * dh + sh * ho : sh, j * dw : j * dw + sw * wo : sw]


def _dilated_out_size(size, kernel, stride, padding, dilation):
    """Output size of a kernel whose taps are ``dilation`` apart: it spans dilation*(kernel - 1) + 1."""
    return _out_size(size, dilation * (kernel - 1) + 1, stride, padding)


# ----------------------------------------------------------------------------
# im2col / col2im


def im2col(x, kernel_size, stride=1, padding=0):
    """Unfold every (kh, kw) window of ``x`` into a column.

    ``cols[n, (c*kh + i)*kw + j, a*Wo + b] = xpad[n, c, a*sh + i, b*sw + j]``
    where ``xpad`` is ``x`` zero-padded by (ph, pw): the layout of
    ``torch.nn.functional.unfold``.

    Shape: x (N, C, H, W) -> cols (N, C*kh*kw, Ho*Wo).
    """
    return _im2col(x, kernel_size, stride, padding, 1)


def _im2col(x, kernel_size, stride, padding, dilation):
    """:func:`im2col` with the kernel's taps ``dilation`` apart."""
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    n, c, h, w = x.shape
    ho, wo = _dilated_out_size(h, kh, sh, ph, dh), _dilated_out_size(w, kw, sw, pw, dw)

    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
    for i, j, view in _windows(padded, (kh, kw), (sh, sw), (ho, wo), (dh, dw)):
        cols[:, :, i, j] = view
    return cols.reshape(n, c * kh * kw, ho * wo)


def col2im(cols, input_shape, kernel_size, stride=1, padding=0):
    """Fold columns back into an image, summing where windows overlap.

    The adjoint of :func:`im2col`: ``<im2col(x), cols> == <x, col2im(cols)>``
    (``torch.nn.functional.fold``). Contributions that land in the padding are
    dropped.

    Shape: cols (N, C*kh*kw, Ho*Wo) -> x (N, C, H, W) with input_shape = (N, C, H, W).
    """
    return _col2im(cols, input_shape, kernel_size, stride, padding, 1)


def _col2im(cols, input_shape, kernel_size, stride, padding, dilation):
    """:func:`col2im` with the kernel's taps ``dilation`` apart."""
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    n, c, h, w = input_shape
    ho, wo = _dilated_out_size(h, kh, sh, ph, dh), _dilated_out_size(w, kw, sw, pw, dw)

    cols = cols.reshape(n, c, kh, kw, ho, wo)
    padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i, j, view in _windows(padded, (kh, kw), (sh, sw), (ho, wo), (dh, dw)):
        view += cols[:, :, i, j]
    return np.ascontiguousarray(padded[:, :, ph : ph + h, pw : pw + w])


# ----------------------------------------------------------------------------
# conv2d


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation (PyTorch's ``conv2d``), as im2col + one GEMM per group.

    ``y[n, o, a, b] = bias[o] + sum_{c,i,j} weight[o, c, i, j] * xpad[n, g*C/G + c, a*sh + i*dh, b*sw + j*dw]``
    for output channel o of group g = o // (O/G): per image and group,
    ``y[n, group] = weight[group].reshape(O/G, C/G*kh*kw) @ im2col(x[n, group])``.

    Shape: x (N, C, H, W), weight (O, C/groups, kh, kw), bias (O,) or None -> y (N, O, Ho, Wo),
    Ho = (H + 2*ph - dh*(kh - 1) - 1) // sh + 1, Wo = (W + 2*pw - dw*(kw - 1) - 1) // sw + 1.
    """
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    og = o // groups
    ho, wo = (_dilated_out_size(s, k, st, p, d) for s, k, st, p, d in
              zip((h, w), (kh, kw), _pair(stride), _pair(padding), _pair(dilation)))
    y = np.empty((n, o, ho * wo), dtype=x.dtype)
    for g in range(groups):
        cols = _im2col(x[:, g * cg : (g + 1) * cg], (kh, kw), stride, padding, dilation)  # (N, C/G*kh*kw, Ho*Wo)
        y[:, g * og : (g + 1) * og] = np.matmul(weight[g * og : (g + 1) * og].reshape(og, cg * kh * kw), cols)
    if bias is not None:
        y += bias[:, None]
    return y.reshape(n, o, ho, wo)


def conv2d_backward(grad_y, x, weight, stride=1, padding=0, dilation=1, groups=1, *, grad_input=True):
    """Gradients of :func:`conv2d` given ``grad_y = dL/dy``.

    Per group (the slices of x, weight and grad_y it owns), with ``W = weight.reshape(O/G, C/G*kh*kw)``,
    ``cols = im2col(x)`` and ``G[n] = grad_y[n]`` flattened to (O/G, Ho*Wo):

    * grad_weight = sum_n G[n] @ cols[n].T          (weight-gradient GEMM)
    * grad_bias   = sum of grad_y over N, Ho, Wo
    * grad_x      = col2im(W.T @ G[n])               (input-gradient GEMM)

    ``grad_input=False`` skips grad_x (returned as None): a network's first layer
    has no use for it.

    Shape: grad_y (N, O, Ho, Wo) -> grad_x (N, C, H, W) or None,
    grad_weight (O, C/groups, kh, kw), grad_bias (O,).
    """
    n, o, ho, wo = grad_y.shape
    _, cg, kh, kw = weight.shape
    og = o // groups
    grad_weight = np.empty_like(weight)
    grad_x = np.empty_like(x) if grad_input else None
    for g in range(groups):
        xs, outs = slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)
        # Explicit sizes rather than -1: reshape cannot infer a dimension of an empty batch.
        weight2d = weight[outs].reshape(og, cg * kh * kw)
        grad_y2d = grad_y[:, outs].reshape(n, og, ho * wo)
        cols = _im2col(x[:, xs], (kh, kw), stride, padding, dilation)
        # One contraction over batch and output positions.
        grad_weight[outs] = np.tensordot(grad_y2d, cols, axes=([0, 2], [0, 2])).reshape(og, cg, kh, kw)
        if grad_input:
            grad_x[:, xs] = _col2im(np.matmul(weight2d.T, grad_y2d), x[:, xs].shape, (kh, kw), stride, padding,
                                    dilation)
    grad_bias = grad_y.sum(axis=(0, 2, 3))
    return grad_x, grad_weight, grad_bias


# ----------------------------------------------------------------------------
# max_pool2d


def max_pool2d(x, kernel_size, stride=None, padding=0, return_indices=False):
    """Max over every (kh, kw) window, with PyTorch's argmax rule.

    ``y[n, c, a, b] = max_{i,j} xpad[n, c, a*sh + i, b*sw + j]`` where ``xpad`` is
    padded with -inf (padding <= kernel // 2, floor mode, stride defaults to
    kernel_size).

    ``indices`` holds the flat position ``row * W + col`` of the maximum in its
    (H, W) input plane, chosen as PyTorch's CPU kernel does: scan the window in
    row-major order starting from ``maxval = -inf`` and the first in-bounds
    element, and take an element when ``val > maxval or isnan(val)``. So the first
    maximum wins ties, a NaN anywhere makes the output NaN (the last NaN is the
    index), and a window of only -inf points at its first in-bounds element.

    Shape: x (N, C, H, W) -> y (N, C, Ho, Wo), indices int64 (N, C, Ho, Wo).
    """
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    ph, pw = _pair(padding)
    n, c, h, w = x.shape
    ho, wo = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)

    # -inf padding never satisfies `val > maxval or isnan(val)`, so it never wins.
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    # Top-left corner of every window in unpadded coordinates (negative inside padding).
    top = np.arange(ho)[:, None] * sh - ph
    left = np.arange(wo)[None, :] * sw - pw

    maxval = np.full((n, c, ho, wo), -np.inf, dtype=x.dtype)
    maxidx = np.broadcast_to(np.maximum(top, 0) * w + np.maximum(left, 0), maxval.shape)
    for i, j, val in _windows(padded, (kh, kw), (sh, sw), (ho, wo)):
        take = (val > maxval) | np.isnan(val)
        maxval = np.where(take, val, maxval)
        maxidx = np.where(take, (top + i) * w + (left + j), maxidx)

    if return_indices:
        return maxval, maxidx.astype(np.int64)
    return maxval


def max_pool2d_backward(grad_y, indices, input_shape):
    """Route each output gradient to the input element that was the maximum.

    ``grad_x[n, c].flat[indices[n, c, a, b]] += grad_y[n, c, a, b]``; overlapping
    windows that share a maximum add up.

    Shape: grad_y, indices (N, C, Ho, Wo), input_shape = (N, C, H, W) -> grad_x (N, C, H, W).
    """
    n, c, h, w = input_shape
    planes = n * c
    outputs_per_plane = grad_y.shape[2] * grad_y.shape[3]

    grad_x = np.zeros((planes, h * w), dtype=grad_y.dtype)
    np.add.at(
        grad_x,
        (np.arange(planes)[:, None], indices.reshape(planes, outputs_per_plane)),
        grad_y.reshape(planes, outputs_per_plane),
    )
    return grad_x.reshape(input_shape)


def relu_max_pool2d(x, kernel_size, stride=None, padding=0, return_indices=False):
    """``max_pool2d(relu(x))``, computed as ``relu(max_pool2d(x))`` (equal: ReLU is monotone
    and keeps NaN); the indices are ``max_pool2d(x)``'s.

    Shape: x (N, C, H, W) -> y (N, C, Ho, Wo) [, indices (N, C, Ho, Wo)].
    """
    y, indices = max_pool2d(x, kernel_size, stride, padding, return_indices=True)
    return (relu(y), indices) if return_indices else relu(y)


def relu_max_pool2d_backward(grad_y, y, indices, input_shape):
    """Gradient of relu_max_pool2d: ReLU's backward on the pooled output, then the pooling's.

    Shape: grad_y, y, indices (N, C, Ho, Wo), input_shape = (N, C, H, W) -> grad_x (N, C, H, W).
    """
    return max_pool2d_backward(relu_backward(grad_y, y), indices, input_shape)


def conv2d_relu_max_pool2d(x, weight, bias=None, stride=1, padding=0, pool_size=2, pool_stride=None,
                           pool_padding=0, return_indices=False):
    """``relu_max_pool2d(conv2d(x, weight, bias, stride, padding), pool_size, pool_stride, pool_padding)``.

    Shape: x (N, C, H, W), weight (O, C, kh, kw) -> y [, indices] (N, O, pooled H, pooled W).
    """
    return relu_max_pool2d(conv2d(x, weight, bias, stride, padding), pool_size, pool_stride, pool_padding,
                           return_indices)


def conv2d_relu_max_pool2d_backward(grad_y, y, indices, x, weight, stride=1, padding=0, *, grad_input=True):
    """The pooling's backward, then the convolution's.

    Shape: grad_y, y, indices (N, O, pooled H, pooled W), x (N, C, H, W), weight (O, C, kh, kw)
    -> (grad_x or None, grad_weight, grad_bias).
    """
    n, _, h, w = x.shape
    o, _, kh, kw = weight.shape
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    conv_shape = (n, o, _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw))
    grad_conv = relu_max_pool2d_backward(grad_y, y, indices, conv_shape)
    return conv2d_backward(grad_conv, x, weight, stride, padding, grad_input=grad_input)


# ----------------------------------------------------------------------------
# average pooling


def _avg_divisor(h, w, kernel, stride, padding, out_shape, count_include_pad, dtype):
    """The divisor of every output: kh*kw, or the number of the window's taps inside the image."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    if count_include_pad:
        return kh * kw
    ones = np.pad(np.ones((h, w), dtype), ((ph, ph), (pw, pw)))
    return sum(view for _, _, view in _windows(ones, kernel, stride, out_shape))


def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad=True):
    """Mean over every (kh, kw) window, PyTorch's ``avg_pool2d``.

    ``y[n, c, a, b] = sum_{i,j} xpad[n, c, a*sh + i, b*sw + j] / divisor`` with ``xpad`` padded
    with zeros; the divisor is kh*kw with ``count_include_pad``, else the number of the window's
    elements inside the image.

    Shape: x (N, C, H, W) -> y (N, C, Ho, Wo).
    """
    kernel = _pair(kernel_size)
    stride = _pair(kernel_size if stride is None else stride)
    padding = _pair(padding)
    n, c, h, w = x.shape
    out = (_out_size(h, kernel[0], stride[0], padding[0]), _out_size(w, kernel[1], stride[1], padding[1]))
    padded = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    total = sum(view for _, _, view in _windows(padded, kernel, stride, out))
    return total / _avg_divisor(h, w, kernel, stride, padding, out, count_include_pad, x.dtype)


def avg_pool2d_backward(grad_y, input_shape, kernel_size, stride=None, padding=0, count_include_pad=True):
    """Each output's gradient, divided by its divisor, spread over its window (overlaps add up).

    Shape: grad_y (N, C, Ho, Wo), input_shape = (N, C, H, W) -> grad_x (N, C, H, W).
    """
    kernel = _pair(kernel_size)
    stride = _pair(kernel_size if stride is None else stride)
    (ph, pw) = padding = _pair(padding)
    n, c, h, w = input_shape
    out = grad_y.shape[2:]
    share = grad_y / _avg_divisor(h, w, kernel, stride, padding, out, count_include_pad, grad_y.dtype)
    padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=grad_y.dtype)
    for _, _, view in _windows(padded, kernel, stride, out):
        view += share  # a strided view: adds into padded
    return padded[:, :, ph:ph + h, pw:pw + w].copy()


# ----------------------------------------------------------------------------
# adaptive average pooling


def _adaptive_bins(n_in, n_out, dtype):
    """(n_out, n_in) matrix averaging each of PyTorch's bins: row i holds 1/size over
    inputs [floor(i*n_in/n_out), ceil((i+1)*n_in/n_out))."""
    m = np.zeros((n_out, n_in), dtype)
    for i in range(n_out):
        lo, hi = i * n_in // n_out, -(-(i + 1) * n_in // n_out)
        m[i, lo:hi] = 1 / (hi - lo)
    return m


def adaptive_avg_pool2d(x, output_size):
    """Mean over each of PyTorch's adaptive bins. The bins are rectangles, so the mean is
    separable: ``y[n, c] = Ph @ x[n, c] @ Pw.T`` with Ph, Pw the per-axis averaging matrices.

    Shape: x (N, C, H, W) -> y (N, C, Ho, Wo).
    """
    ho, wo = _pair(output_size)
    ph, pw = _adaptive_bins(x.shape[2], ho, x.dtype), _adaptive_bins(x.shape[3], wo, x.dtype)
    return np.matmul(np.matmul(ph, x), pw.T)


def adaptive_avg_pool2d_backward(grad_y, input_shape, output_size):
    """The transpose of the forward's linear map: ``grad_x[n, c] = Ph.T @ grad_y[n, c] @ Pw``.

    Shape: grad_y (N, C, Ho, Wo), input_shape = (N, C, H, W) -> grad_x (N, C, H, W).
    """
    ho, wo = _pair(output_size)
    n, c, h, w = input_shape
    ph, pw = _adaptive_bins(h, ho, grad_y.dtype), _adaptive_bins(w, wo, grad_y.dtype)
    return np.matmul(np.matmul(ph.T, grad_y), pw).reshape(n, c, h, w)


# ----------------------------------------------------------------------------
# relu


def relu(x):
    """``y = x if not (x <= 0) else 0``: NaN stays NaN.

    Shape: any -> same.
    """
    return np.where(x <= 0, 0, x)


def relu_backward(grad_y, x):
    """``grad_x = 0 where x <= 0, else grad_y`` (the derivative at 0 is taken as 0).

    Shape: grad_y, x (any, equal) -> grad_x (same).
    """
    return np.where(x <= 0, 0, grad_y)


# ----------------------------------------------------------------------------
# hardtanh, relu6


def hardtanh(x, min_val=-1.0, max_val=1.0):
    """``y = min_val where x < min_val, max_val where x > max_val, else x``: NaN stays NaN.

    Shape: any -> same.
    """
    lo, hi = x.dtype.type(min_val), x.dtype.type(max_val)
    return np.where(x < lo, lo, np.where(x > hi, hi, x))


def hardtanh_backward(grad_y, x, min_val=-1.0, max_val=1.0):
    """``grad_x = 0 where x <= min_val or x >= max_val, else grad_y`` (0 at the bounds, as PyTorch).

    Shape: grad_y, x (any, equal) -> grad_x (same).
    """
    lo, hi = x.dtype.type(min_val), x.dtype.type(max_val)
    return np.where((x <= lo) | (x >= hi), 0, grad_y).astype(grad_y.dtype)


def relu6(x):
    """``hardtanh(x, 0, 6)``. Shape: any -> same."""
    return hardtanh(x, 0.0, 6.0)


def relu6_backward(grad_y, x):
    """``hardtanh_backward(grad_y, x, 0, 6)``. Shape: any -> same."""
    return hardtanh_backward(grad_y, x, 0.0, 6.0)


# ----------------------------------------------------------------------------
# sigmoid, tanh: backward from the forward's output y


def add(a, b, relu=False):
    """a + b, then max(., 0) when relu."""
    y = a + b
    return np.where(y <= 0, 0, y).astype(y.dtype) if relu else y  # NaN stays NaN


def concat(xs):
    """The arrays joined along axis 1."""
    return np.concatenate(list(xs), axis=1)


def concat_backward(grad_y, channels):
    """grad_y split along axis 1 into pieces of channels[i]."""
    bounds = np.cumsum([0] + [int(c) for c in channels])
    return tuple(grad_y[:, lo:hi].copy() for lo, hi in zip(bounds[:-1], bounds[1:]))


def sigmoid(x):
    """``y = 1 / (1 + exp(-x))``.

    Shape: any -> same.
    """
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x < -88 (float32): y = 0, the limit
        return (1 / (1 + np.exp(-x))).astype(x.dtype)


def sigmoid_backward(grad_y, y):
    """``grad_x = grad_y * y * (1 - y)``, y being sigmoid's output.

    Shape: grad_y, y (any, equal) -> grad_x (same).
    """
    return grad_y * (y * (1 - y))


def tanh(x):
    """``y = tanh(x)``.

    Shape: any -> same.
    """
    return np.tanh(x)


def tanh_backward(grad_y, y):
    """``grad_x = grad_y * (1 - y**2)``, y being tanh's output.

    Shape: grad_y, y (any, equal) -> grad_x (same).
    """
    return grad_y * (1 - y * y)


# ----------------------------------------------------------------------------
# softmax, log_softmax over the last axis


def softmax(x):
    """``y = exp(x - max) / sum(exp(x - max))`` along the last axis.

    Shape: (N, K) -> (N, K).
    """
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward(grad_y, y):
    """``grad_x = y * (grad_y - sum(grad_y * y))`` along the last axis, y being softmax's output.

    Shape: (N, K), (N, K) -> (N, K).
    """
    return y * (grad_y - (grad_y * y).sum(axis=-1, keepdims=True))


def log_softmax(x):
    """``y = x - max - log(sum(exp(x - max)))`` along the last axis.

    Shape: (N, K) -> (N, K).
    """
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def log_softmax_backward(grad_y, y):
    """``grad_x = grad_y - exp(y) * sum(grad_y)`` along the last axis, y being log_softmax's output.

    Shape: (N, K), (N, K) -> (N, K).
    """
    return grad_y - np.exp(y) * grad_y.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------
# dropout: the mask is a hash of (seed, element index), as csrc/dropout.c computes it


def _mix32(h):
    """The "lowbias32" integer hash, on uint32 arrays (which wrap on overflow, as C's uint32_t)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x7FEB352D)
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(0x846CA68B)
    return h ^ (h >> np.uint32(16))


def dropout(x, p=0.5, *, seed, training=True):
    """Inverted dropout: element i of x (in C order) is kept, times 1 / (1 - p), when

        h = mix32(mix32(i ^ k0) + k1) has (h >> 8) >= round(p * 2**24)

    with k0 = mix32(low 32 bits of seed ^ 0x9e3779b9), k1 = mix32(high 32 bits ^ 0x85ebca6b); else it
    becomes x * 0. training=False returns x.
    """
    if not training:
        return x
    halves = np.array([seed & 0xFFFFFFFF, seed >> 32], np.uint32)
    k0, k1 = _mix32(halves ^ np.array([0x9E3779B9, 0x85EBCA6B], np.uint32))
    h = _mix32(_mix32(np.arange(x.size, dtype=np.uint32) ^ k0) + k1)
    keep = (h >> np.uint32(8)) >= round(p * 2**24)
    scale = x.dtype.type(1 / (1 - p) if p < 1 else 0)
    return x * np.where(keep, scale, x.dtype.type(0)).reshape(x.shape)


def dropout_backward(grad_y, p=0.5, *, seed):
    """grad_y through dropout's mask and scale for the same seed."""
    return dropout(grad_y, p, seed=seed)


# ----------------------------------------------------------------------------
# batch_norm over axis 1


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
               return_stats=False):
    """``y = (x - mean) / sqrt(var + eps) * weight + bias`` per channel (axis 1).

    training: mean and (biased) var of the batch over every axis but 1; running_mean and
    running_var (if given) become ``(1 - momentum) * running + momentum * stat`` (var unbiased:
    times M / (M - 1), M the values per channel). Else the running statistics.
    return_stats: also (mean, invstd) with invstd = 1 / sqrt(var + eps).
    """
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    if training:
        mean = x.mean(axis=axes, dtype=np.float64)
        var = ((x - mean.reshape(shape)) ** 2).mean(axis=axes, dtype=np.float64)
        if running_mean is not None:
            m = x.size // x.shape[1]
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            running_var[...] = (1 - momentum) * running_var + momentum * var * m / (m - 1)
    else:
        mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
    invstd = 1 / np.sqrt(var + eps)
    y = (x - mean.reshape(shape)) * invstd.reshape(shape)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    y = y.astype(x.dtype)
    return (y, mean.astype(x.dtype), invstd.astype(x.dtype)) if return_stats else y


def batch_norm_backward(grad_y, x, weight, mean, invstd, training=True, *, grad_input=True):
    """Gradients of :func:`batch_norm`: (grad_x or None, grad_weight, grad_bias); the last two are
    None when weight is None. With xhat = (x - mean) * invstd and g = weight * invstd (or invstd):

        training:  grad_x = g * (grad_y - mean(grad_y) - xhat * mean(grad_y * xhat))
        eval:      grad_x = g * grad_y
        grad_weight = sum(grad_y * xhat), grad_bias = sum(grad_y)   (over every axis but 1)
    """
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    xhat = (x - mean.reshape(shape)).astype(np.float64) * invstd.reshape(shape)
    sum_dy = grad_y.sum(axis=axes, dtype=np.float64)
    sum_dy_xhat = (grad_y * xhat).sum(axis=axes)
    grads = (None, None) if weight is None else (sum_dy_xhat.astype(x.dtype), sum_dy.astype(x.dtype))
    if not grad_input:
        return (None,) + grads
    g = (invstd if weight is None else weight * invstd).astype(np.float64).reshape(shape)
    if training:
        m = x.size // x.shape[1]
        grad_x = g * (grad_y - (sum_dy / m).reshape(shape) - xhat * (sum_dy_xhat / m).reshape(shape))
    else:
        grad_x = g * grad_y
    return (grad_x.astype(x.dtype),) + grads


# ----------------------------------------------------------------------------
# linear


def linear(x, weight, bias=None):
    """``y = x @ weight.T + bias``.

    Shape: x (N, in_features), weight (out_features, in_features),
    bias (out_features,) or None -> y (N, out_features).
    """
    y = x @ weight.T
    if bias is not None:
        y += bias
    return y


def linear_backward(grad_y, x, weight, *, grad_input=True):
    """Gradients of :func:`linear`: grad_x = grad_y @ weight,
    grad_weight = grad_y.T @ x, grad_bias = sum of grad_y over N.

    Shape: grad_y (N, out_features) -> grad_x (N, in_features) or None when
    grad_input=False, grad_weight (out_features, in_features), grad_bias (out_features,).
    """
    grad_x = grad_y @ weight if grad_input else None
    return grad_x, grad_y.T @ x, grad_y.sum(axis=0)


# ----------------------------------------------------------------------------
# softmax_cross_entropy


def softmax_cross_entropy(logits, target):
    """Mean cross-entropy of softmax(logits) against class indices, and its gradient.

    ``loss = mean_n [logsumexp(logits[n]) - logits[n, target[n]]]``, computed after
    subtracting each row's maximum so large logits do not overflow.
    ``grad_logits = (softmax(logits) - onehot(target)) / N``.

    Shape: logits (N, K), target integer (N,) -> (loss: float, grad_logits (N, K)).
    Raises ValueError for N == 0: the mean over an empty batch is undefined.
    """
    n = logits.shape[0]
    if n == 0:
        raise ValueError(
            "softmax_cross_entropy(): logits must have at least one row "
            f"(the loss is a mean over the batch), got shape {logits.shape}"
        )
    rows = np.arange(n)

    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[rows, target].mean()

    grad_logits = np.exp(log_probs)
    grad_logits[rows, target] -= 1
    grad_logits /= n
    return float(loss), grad_logits


# ----------------------------------------------------------------------------
# sgd_update


def sgd_update(param, grad, momentum_buffer, lr, momentum=0.0, weight_decay=0.0, first_step=False):
    """One in-place SGD step (torch.optim.SGD, no dampening, no Nesterov)::

        g = grad + weight_decay * param
        momentum_buffer = g if first_step else momentum * momentum_buffer + g   (if not None)
        param -= lr * (momentum_buffer if not None else g)

    Computed in the dtype of param (Python-float hyperparameters do not promote it).
    """
    g = param * weight_decay + grad if weight_decay else grad
    if momentum_buffer is not None:
        if first_step:
            momentum_buffer[...] = g
        else:
            momentum_buffer *= momentum
            momentum_buffer += g
        g = momentum_buffer
    param -= g * lr


# ----------------------------------------------------------------------------
# adam_update


def adam_update(param, grad, exp_avg, exp_avg_sq, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                decoupled=False):
    """One in-place Adam step (torch.optim.Adam; decoupled=True: AdamW), without amsgrad::

        g = grad + weight_decay * param          (Adam)
        param = param * (1 - lr * weight_decay)  (AdamW)
        exp_avg    = beta1 * exp_avg + (1 - beta1) * g
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
        param -= lr / (1 - beta1**step) * exp_avg / (sqrt(exp_avg_sq) / sqrt(1 - beta2**step) + eps)

    Computed in the dtype of param, in the order written (the compiled kernel's order).
    """
    t = param.dtype.type
    beta1, beta2 = betas
    step_size, sqrt_bc2 = t(lr / (1 - beta1**step)), t(np.sqrt(1 - beta2**step))
    if decoupled:
        g = grad
        param *= t(1 - t(lr) * t(weight_decay))
    else:
        g = param * t(weight_decay) + grad if weight_decay else grad
    exp_avg[...] = exp_avg * t(beta1) + g * t(1 - t(beta1))
    exp_avg_sq[...] = exp_avg_sq * t(beta2) + (g * g) * t(1 - t(beta2))
    param -= step_size * exp_avg / (np.sqrt(exp_avg_sq) / sqrt_bc2 + t(eps))
