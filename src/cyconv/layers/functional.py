"""cyconv.functional: the public kernel API (stateless, NumPy in, NumPy out).

Layout NCHW; float32 and float64, never converted silently (int, float16 and
mixed dtypes raise TypeError). All validation happens here, once; the compiled
kernels trust what they are given. A non-contiguous or Fortran-ordered input is
copied to C order first. `kernel_size`, `stride` and `padding` take an int or
an (h, w) pair.

Empty batches (N == 0) are valid and give empty outputs (and zero weight
gradients); `softmax_cross_entropy` on an empty batch raises (its mean is
undefined).

Every function has a NumPy twin of the same name and signature in
`cyconv.reference`; the tests hold these to it.
"""

import math
import os
import threading
import time

import numpy as np

from ..kernels import _kernels
from ..kernels.isa import get_isa
from ..kernels.threads import get_num_threads, record_work_split, threads_for

__all__ = [
    "conv2d", "conv2d_backward", "im2col", "col2im", "max_pool2d", "max_pool2d_backward",
    "relu_max_pool2d", "relu_max_pool2d_backward", "conv2d_relu_max_pool2d",
    "conv2d_relu_max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward", "adaptive_avg_pool2d",
    "adaptive_avg_pool2d_backward", "relu", "relu_backward", "hardtanh", "hardtanh_backward", "relu6", "relu6_backward",
    "sigmoid", "sigmoid_backward", "tanh", "tanh_backward", "softmax", "softmax_backward", "log_softmax",
    "log_softmax_backward", "dropout", "dropout_backward", "batch_norm", "batch_norm_backward", "linear",
    "linear_backward", "softmax_cross_entropy", "sgd_update", "adam_update", "conv_algorithm",
    "set_conv_algorithm", "get_conv_algorithm", "measure_candidates", "measured_conv_algorithms", "ALGORITHMS",
]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_BLAS_INT_MAX = 2**31 - 1  # BLAS takes 32-bit int sizes
_GEOMETRY_MAX = 2**31 - 1  # largest kernel_size, stride or padding


# ---------------------------------------------------------------------------
# Validation helpers. Messages read "<function>(): <argument> <problem>, got <value>".

def _pair(value, name, fn, minimum):
    """An int or an (h, w) pair of ints, each >= minimum, as a tuple."""
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

    if is_int(value):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{fn}(): {name} must be an int or an (h, w) pair, got {value!r}")
        if not all(is_int(v) for v in value):
            raise TypeError(f"{fn}(): {name} must contain ints, got {value!r}")
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{fn}(): {name} must be an int or an (h, w) pair, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{fn}(): {name} must be >= {minimum}, got {value!r}")
    # Far beyond any image; the cap keeps the kernels' index arithmetic (and the
    # conversion to Py_ssize_t, an OverflowError otherwise) within 64 bits.
    if max(pair) > _GEOMETRY_MAX:
        raise ValueError(f"{fn}(): {name} must be at most 2**31 - 1, got {value!r}")
    return pair


def _float_array(a, name, fn, ndim=None, dtype=None):
    """Check a float array argument; return it C-contiguous (copied if needed)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{fn}(): {name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in _FLOATS:
        raise TypeError(
            f"{fn}(): {name} must be float32 or float64, got {a.dtype} "
            "(cyconv never converts dtypes silently)"
        )
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{fn}(): {name} has dtype {a.dtype} but x has {dtype}; they must match")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{fn}(): {name} must be {ndim}-D, got shape {a.shape}")
    # np.ascontiguousarray would turn a 0-d array into shape (1,).
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _gradient_outputs(fn, out, accumulate, weight_shape, bias_size, dtype, inputs):
    """The (grad_weight, grad_bias) arrays a backward writes into: fresh ones, or the
    caller's `out` pair (either may be None: a fresh array), checked; accumulate=True
    adds into `out` instead of overwriting it."""
    if not isinstance(accumulate, (bool, np.bool_)):
        raise TypeError(f"{fn}(): accumulate must be True or False, got {accumulate!r}")
    if out is None:
        if accumulate:
            raise ValueError(f"{fn}(): accumulate=True needs out=(grad_weight, grad_bias) to add into")
        return np.empty(weight_shape, dtype), np.empty(bias_size, dtype)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"{fn}(): out must be a (grad_weight, grad_bias) tuple, got {type(out).__name__}")
    arrays = []
    for a, name, shape in zip(out, ("grad_weight", "grad_bias"), (weight_shape, (bias_size,))):
        if a is None:
            arrays.append(np.zeros(shape, dtype) if accumulate else np.empty(shape, dtype))
            continue
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{fn}(): out {name} must be a numpy.ndarray or None, got {type(a).__name__}")
        if a.shape != shape or a.dtype != dtype:
            raise ValueError(f"{fn}(): out {name} must have shape {shape} and dtype {dtype}, "
                             f"got {a.shape} {a.dtype}")
        if not (a.flags.c_contiguous and a.flags.writeable):
            raise ValueError(f"{fn}(): out {name} must be C-contiguous and writeable")
        if any(np.may_share_memory(a, b) for b in inputs + arrays if b is not None):
            raise ValueError(f"{fn}(): out {name} overlaps another argument")
        arrays.append(a)
    return tuple(arrays)


def _output_size(size, kernel, stride, padding):
    return (size + 2 * padding - kernel) // stride + 1


def _check_window_fits(fn, hw, kernel, padding):
    """The kernel must fit in the padded input (at least one output position)."""
    if hw[0] + 2 * padding[0] < kernel[0] or hw[1] + 2 * padding[1] < kernel[1]:
        raise ValueError(
            f"{fn}(): kernel_size {kernel} is larger than the padded input "
            f"{(hw[0] + 2 * padding[0], hw[1] + 2 * padding[1])}"
        )


def _check_blas_size(fn, *sizes):
    if max(sizes) > _BLAS_INT_MAX:
        raise ValueError(f"{fn}(): a per-image matrix has {max(sizes)} elements, more than BLAS's 2**31 - 1")


def _conv_geometry(fn, x, weight, stride, padding):
    N, C, H, W = x.shape
    O, Cw, kh, kw = weight.shape
    if Cw != C:
        raise ValueError(
            f"{fn}(): weight expects {Cw} in_channels but x has {C} channels "
            f"(x {x.shape}, weight {weight.shape})"
        )
    if min(O, C, kh, kw, H, W) < 1:
        raise ValueError(f"{fn}(): x {x.shape} and weight {weight.shape} must have no zero-size axis but the batch")
    sh, sw = _pair(stride, "stride", fn, 1)
    ph, pw = _pair(padding, "padding", fn, 0)
    _check_window_fits(fn, (H, W), (kh, kw), (ph, pw))
    Ho, Wo = _output_size(H, kh, sh, ph), _output_size(W, kw, sw, pw)
    _check_blas_size(fn, C * kh * kw * Ho * Wo, O * Ho * Wo, O * C * kh * kw)
    return (N, C, H, W, O, kh, kw, sh, sw, ph, pw, Ho, Wo)


# ---------------------------------------------------------------------------
# Convolution algorithms. conv2d and conv2d_backward take algorithm=:
#   "im2col"    im2col + GEMM (every shape; grouped layers per group, depthwise ones too)
#   "winograd"  Winograd F(m x m, r x r) (csrc/winograd.c) for 3x3 and 5x5 kernels with stride 1,
#               dilation 1 and groups 1, any padding; "winograd2" / "winograd4" / "winograd6" force
#               the output tile m (6 for 3x3 only), "winograd" lets conv_algorithm() pick it
#   "direct"    no im2col buffer: 1x1 kernels with stride 1 and no padding (the image is its own
#               columns), depthwise layers (groups == in_channels: csrc/depthwise.c), and the
#               ungrouped, undilated layers Winograd does not take: every 1x1 (strided or padded:
#               ResNet's downsample shortcuts), every strided layer (the 3x3 stride-2 ones) and
#               every 7x7 (the stem): csrc/direct.c gathers the GEMM's columns from the input a
#               band of output rows at a time (float32; float64 and the gradients stay on im2col)
#   "auto"      conv_algorithm()'s choice for the shape (the default)
#   "measure"   the fastest of measure_candidates() on this machine, timed once per (direction, shape,
#               batch, dtype, tier, thread count) and kept for the process (cuDNN's benchmark mode)
# CYCONV_CONV_ALGO (read at import) or set_conv_algorithm() overrides "auto" everywhere, e.g. to
# run a whole model on im2col or on measured choices; an algorithm asked for a layer it cannot run
# raises ValueError.

ALGORITHMS = ("auto", "im2col", "winograd", "direct", "measure")
_WINOGRAD_TILES = {3: (2, 4, 6), 5: (2, 4)}  # kernel size -> output tiles csrc/winograd.c has
_NAMES = ALGORITHMS + ("winograd2", "winograd4", "winograd6")


def _algorithm_name(value, where):
    if not isinstance(value, str) or value not in _NAMES:
        raise ValueError(f"{where}: algorithm must be one of {', '.join(map(repr, _NAMES))}, got {value!r}")
    return value


_override = _algorithm_name(os.environ.get("CYCONV_CONV_ALGO", "").strip() or "auto", "CYCONV_CONV_ALGO")


def get_conv_algorithm():
    """The algorithm "auto" stands for now: "auto" (conv_algorithm() per shape) unless overridden."""
    return _override


class set_conv_algorithm:
    """Make every algorithm="auto" convolution run `algorithm` ("auto" restores the per-shape
    choice, "measure" times the candidates of each new shape once: see conv2d); also a context
    manager that restores the previous setting on exit:

        with cyconv.functional.set_conv_algorithm("im2col"):
            model(x)
    """

    def __init__(self, algorithm):
        global _override
        self._previous = _override
        _override = _algorithm_name(algorithm, "set_conv_algorithm()")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        global _override
        _override = self._previous
        return False


def conv_algorithm(C, O, H, W, kh, kw, stride=1, padding=0, dilation=1, groups=1, batch=None,
                   dtype=np.float32, isa=None):
    """The algorithm "auto" runs for a layer: "im2col", "direct", "winograd2" or "winograd4".

    The heuristic, measured on a 2-core Sapphire Rapids (benchmarks/RESULTS.md, "Convolution
    algorithms"), float32 forward, batch 1 and 32:
      - depthwise (groups == C) and 1x1 stride-1 unpadded layers: "direct";
      - float32 1x1 layers with a stride or padding (ResNet's shortcuts), 7x7 layers (the stem) and
        strided layers with at least 28x28 outputs: "direct" (csrc/direct.c, bands of output rows:
        the stem 0.53-0.66x of im2col's time, the 1x1 shortcuts 0.7-1.0x, ResNet-18's 3x3 stride-2
        64->128 0.8x; at 7x7 outputs it is im2col's time, so im2col stays);
      - Winograd only for float32, 3x3, stride 1, undilated, ungrouped layers whose GEMMs are large
        enough to hide the transforms: C*O/(C+O) >= 32 (the transforms cost C + O per tile, the
        GEMM C*O), and a plane of at least 14x14 unless C*O/(C+O) >= 128 (ResNet-18's 512x7x7), and
        (when batch is given) batch*Ho*Wo >= 1024, since the filter transform is paid per call;
      - the tile: F(4x4) from 16x16 outputs up, F(2x2) below (on 7x7 a 4x4 tile computes 8x8);
        F(6x6) never won here (its transforms are twice F(4x4)'s and its error 3x larger);
      - everything else, LeNet's 5x5 layers (F(2x2,5x5) measured 1.4x slower than im2col at
        20->50 channels) and ResNet-20's 16- and 32-channel layers included: "im2col".
    The same rule holds for every tier: on AVX2 the GEMM is slower, which only favours Winograd
    more (see RESULTS.md). `isa` is accepted for callers that plan for another tier.
    """
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (_pair(v, n, "conv_algorithm", m) for v, n, m in (
        ((kh, kw), "kernel_size", 1), (stride, "stride", 1), (padding, "padding", 0), (dilation, "dilation", 1)))
    if groups == C and groups > 1:
        return "direct"
    if groups != 1:
        return "im2col"
    if (kh, kw, sh, sw, ph, pw, dh, dw) == (1, 1, 1, 1, 0, 0, 1, 1):
        return "direct"
    Ho, Wo = _output_size(H, kh, sh, ph), _output_size(W, kw, sw, pw)
    if np.dtype(dtype) == np.float32 and _direct_takes(kh, kw, sh, sw, dh, dw, groups) and (
            (kh, kw) in ((1, 1), (7, 7)) or Ho * Wo >= 784):
        return "direct"
    if np.dtype(dtype) != np.float32 or (kh, kw, sh, sw, dh, dw) != (3, 3, 1, 1, 1, 1) or min(Ho, Wo) < 1:
        return "im2col"
    h = C * O / (C + O)
    if h < 32 or (Ho * Wo < 196 and h < 128) or (batch is not None and batch * Ho * Wo < 1024):
        return "im2col"
    return "winograd4" if min(Ho, Wo) >= 16 else "winograd2"


def _direct_takes(kh, kw, sh, sw, dh, dw, groups):
    """Whether algorithm="direct" runs this ungrouped layer: 1x1 (any stride and padding), any
    stride above 1, or a 7x7 kernel; undilated."""
    if (groups, dh, dw) != (1, 1, 1):
        return False
    return (kh, kw) == (1, 1) or (kh, kw) == (7, 7) or sh > 1 or sw > 1


def _check_algorithm(fn, algorithm, C, kernel, stride, padding, dilation, groups):
    """The algorithm name checked against the layer's shape (C: in_channels, or None if unknown);
    ValueError naming the shape if that algorithm cannot run it."""
    algorithm = _algorithm_name(algorithm, f"{fn}()")
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    shape = (f"kernel_size {(kh, kw)}, stride {(sh, sw)}, padding {(ph, pw)}, dilation {(dh, dw)}, "
             f"groups {groups}")
    if algorithm.startswith("winograd"):
        tiles = _WINOGRAD_TILES.get(kh, ()) if kh == kw else ()
        if not tiles or (sh, sw, dh, dw, groups) != (1, 1, 1, 1, 1):
            raise ValueError(f"{fn}(): algorithm={algorithm!r} takes 3x3 and 5x5 kernels with stride 1, "
                             f"dilation 1 and groups 1; this layer has {shape}")
        if algorithm != "winograd" and int(algorithm[8:]) not in tiles:
            raise ValueError(f"{fn}(): algorithm={algorithm!r}: a {kh}x{kw} kernel has output tiles "
                             f"{', '.join(map(str, tiles))}; this layer has {shape}")
    elif algorithm == "direct":
        depthwise = groups > 1 and (C is None or groups == C)
        if not depthwise and not _direct_takes(kh, kw, sh, sw, dh, dw, groups):
            raise ValueError(f"{fn}(): algorithm='direct' takes depthwise layers (groups == in_channels) and, "
                             f"with dilation 1 and groups 1, 1x1 kernels, strided layers and 7x7 kernels; "
                             f"this layer has {shape}")
    return algorithm


def _resolve_algorithm(fn, algorithm, x, weight, stride, padding, dilation, groups, direction="forward"):
    """The algorithm a conv2d (or its backward) on these checked arguments runs: "im2col",
    "direct", or "winograd<m>"."""
    C, O, (H, W), (kh, kw) = x.shape[1], weight.shape[0], x.shape[2:], weight.shape[2:]
    return resolve_conv_algorithm(fn, algorithm, C, O, H, W, (kh, kw), stride, padding, dilation, groups,
                                  x.shape[0], x.dtype, direction=direction)


def resolve_conv_algorithm(fn, algorithm, C, O, H, W, kernel, stride, padding, dilation, groups, batch, dtype, *,
                           direction="forward", measure_batch=1):
    """What a convolution asked to run `algorithm` runs on this shape, after CYCONV_CONV_ALGO /
    set_conv_algorithm and conv_algorithm()'s choice: "im2col", "direct", or "winograd<m>". batch
    None: a predictor's layer, whose filters are transformed once, so the batch does not matter
    (but for "measure", which times the compiled layer at measure_batch images). direction
    ("forward" or "backward": conv2d_backward's) is what "measure" times."""
    kh, kw = kernel
    algorithm = _check_algorithm(fn, algorithm, C, (kh, kw), stride, padding, dilation, groups)
    if algorithm == "auto" and _override != "auto":
        algorithm = _check_algorithm(f"{fn}() with CYCONV_CONV_ALGO / set_conv_algorithm", _override, C,
                                     (kh, kw), stride, padding, dilation, groups)
    if algorithm == "measure":
        if batch is None:
            direction, batch = "predict", measure_batch
        return _measured_choice(direction, C, O, H, W, (kh, kw), stride, padding, dilation, groups, batch, dtype)
    if algorithm in ("auto", "winograd"):
        chosen = conv_algorithm(C, O, H, W, kh, kw, stride, padding, dilation, groups, batch=batch, dtype=dtype)
        if algorithm == "auto":
            return chosen
        return chosen if chosen.startswith("winograd") else ("winograd2" if kh == 5 else "winograd4")
    return algorithm


# ---------------------------------------------------------------------------
# The measured choice (algorithm="measure"). Each candidate the layer admits runs on random data of the
# layer's shape: one warm-up, then three rounds taking the candidates in turn (so a burst of load on a
# shared machine hits all of them), and the lowest median wins. "forward" times conv2d, "backward"
# conv2d_backward (the input and parameter gradients: a layer may pick differently for each), "predict"
# the layer compiled alone (cyconv.compile, at the predictor's batch). The key holds everything the
# timing depends on, so a thread-count or tier change measures again. Every candidate gives the same
# bits for any thread count, so a run is deterministic given the choices; two processes may choose
# differently on a noisy machine (their results then differ within the algorithms' tolerances).

_measured = {}  # key -> (chosen algorithm, {candidate: median seconds})
_measure_lock = threading.RLock()
_MEASURE_ROUNDS = 3


def measure_candidates(C, kernel, stride=1, padding=0, dilation=1, groups=1, dtype=np.float32,
                       direction="forward"):
    """The algorithms algorithm="measure" times for a layer: those its shape admits that run code of
    their own. "im2col" always; "winograd2" and "winograd4" (and "winograd2" for 5x5) for 3x3 / 5x5
    stride-1 undilated ungrouped layers (F(6x6) only when asked by name: its error is 3x F(4x4)'s,
    tests/test_winograd.py); "direct" for depthwise layers, and in the forward for the float32
    ungrouped layers csrc/direct.c takes (1x1 stride 1 unpadded is im2col's own path already, and
    direct's backward is im2col's)."""
    fn = "measure_candidates"
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (_pair(v, n, fn, m) for v, n, m in (
        (kernel, "kernel_size", 1), (stride, "stride", 1), (padding, "padding", 0), (dilation, "dilation", 1)))
    if direction not in ("forward", "backward", "predict"):
        raise ValueError(f"{fn}(): direction must be 'forward', 'backward' or 'predict', got {direction!r}")
    candidates = ["im2col"]
    if kh == kw and (sh, sw, dh, dw, groups) == (1, 1, 1, 1, 1):
        candidates += [f"winograd{m}" for m in _WINOGRAD_TILES.get(kh, ()) if m != 6]
    if groups == C and groups > 1:
        candidates.append("direct")
    elif (direction != "backward" and np.dtype(dtype) == np.float32 and _direct_takes(kh, kw, sh, sw, dh, dw, groups)
          and (kh, kw, sh, sw, ph, pw) != (1, 1, 1, 1, 0, 0)):
        candidates.append("direct")
    return candidates


def measured_conv_algorithms():
    """{(direction, C, O, H, W, kernel, stride, padding, dilation, groups, batch, dtype, isa, threads):
    (the algorithm chosen, {candidate: median seconds})}: what algorithm="measure" has timed in this
    process (a copy)."""
    with _measure_lock:
        return {k: (a, dict(t)) for k, (a, t) in _measured.items()}


def _measured_choice(direction, C, O, H, W, kernel, stride, padding, dilation, groups, batch, dtype):
    dtype = np.dtype(dtype)
    key = (direction, C, O, H, W, tuple(kernel), tuple(stride), tuple(padding), tuple(dilation), groups, batch,
           dtype.name, get_isa(), get_num_threads())
    with _measure_lock:
        if key not in _measured:
            candidates = measure_candidates(C, kernel, stride, padding, dilation, groups, dtype, direction)
            times = {}
            if len(candidates) > 1 and batch > 0:
                runs = [_candidate_run(direction, a, C, O, H, W, kernel, stride, padding, dilation, groups, batch,
                                       dtype) for a in candidates]
                samples = [[] for _ in candidates]
                for r in range(_MEASURE_ROUNDS + 1):
                    for run, sample in zip(runs, samples):
                        start = time.perf_counter()
                        run()
                        if r:  # round 0 warms up (first-touch pages, packed weights, caches)
                            sample.append(time.perf_counter() - start)
                times = {a: float(np.median(t)) for a, t in zip(candidates, samples)}
            _measured[key] = (min(candidates, key=lambda a: times.get(a, 0.0)), times)
        return _measured[key][0]


def _candidate_run(direction, algorithm, C, O, H, W, kernel, stride, padding, dilation, groups, batch, dtype):
    """A callable running one candidate on random data of the layer's shape."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, C, H, W)).astype(dtype)
    w = (rng.standard_normal((O, C // groups, *kernel)) / math.sqrt(C // groups * kernel[0] * kernel[1])).astype(dtype)
    b = np.zeros(O, dtype)
    if direction == "forward":
        return lambda: conv2d(x, w, b, stride, padding, dilation, groups, algorithm=algorithm)
    if direction == "backward":
        y = conv2d(x, w, b, stride, padding, dilation, groups, algorithm="im2col")
        g = rng.standard_normal(y.shape).astype(dtype)
        return lambda: conv2d_backward(g, x, w, stride, padding, dilation, groups, algorithm=algorithm)
    from . import nn
    from ..deploy.predictor import compile as compile_model

    layer = nn.Conv2d(C, O, kernel, stride, padding, dilation, groups, dtype=dtype, rng=rng, algorithm=algorithm)
    predictor = compile_model(layer, batch_size=batch, input_shape=(C, H, W))
    return lambda: predictor(x)


def _winograd_conv2d(x, weight, bias, geom, m):
    """conv2d on checked arguments by Winograd F(m x m, r x r) (stride 1, as _resolve_algorithm checked)."""
    N, C, H, W, O, kh, kw, sh, sw, ph, pw, Ho, Wo = geom
    y = np.empty((N, O, Ho, Wo), x.dtype)
    if N:
        nt = _conv_threads(geom)
        _kernels.winograd_conv2d_forward(y.reshape(-1), x.reshape(-1), weight.reshape(-1), bias, N, C, H, W, O, kh,
                                         ph, pw, Ho, Wo, m, nt)
    return y


def _direct_conv2d(x, weight, bias, geom):
    """conv2d on checked float32 arguments by csrc/direct.c (bands of output rows, no im2col buffer)."""
    N, C, H, W, O, kh, kw, sh, sw, ph, pw, Ho, Wo = geom
    y = np.empty((N, O, Ho, Wo), x.dtype)
    if N:
        nt = _conv_threads(geom)
        scratch = np.empty(nt * _kernels.direct_scratch_size(C, kh, kw, Ho, Wo), x.dtype)
        _kernels.direct_conv2d_forward(y.reshape(-1), x.reshape(-1), weight.reshape(-1), bias, scratch, *geom, nt)
    return y


def _winograd_input_grad(grad_y, weight, geom, m):
    """The input gradient of a stride-1 convolution: the convolution of grad_y with the filters
    flipped and transposed (O and C swapped), padded by r - 1 - padding (negative: cropped)."""
    N, C, H, W, O, kh, kw, sh, sw, ph, pw, Ho, Wo = geom
    flipped = np.ascontiguousarray(weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    grad_x = np.empty((N, C, H, W), grad_y.dtype)
    if N:
        nt = threads_for(N, split=(C * H * W, O * kh * kw))
        _kernels.winograd_conv2d_forward(grad_x.reshape(-1), grad_y.reshape(-1), flipped.reshape(-1),
                                         np.empty(0, grad_y.dtype), N, O, Ho, Wo, C, kh, kh - 1 - ph, kw - 1 - pw,
                                         H, W, m, nt)
    return grad_x



# ---------------------------------------------------------------------------
# Convolution

def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, algorithm="auto"):
    """2-D convolution (cross-correlation, as in PyTorch) by im2col + GEMM, Winograd or directly.

    algorithm: "auto" (conv_algorithm()'s choice for the shape, or the CYCONV_CONV_ALGO /
    set_conv_algorithm() override), "im2col", "winograd" (3x3 and 5x5, stride 1, dilation 1,
    groups 1; "winograd2"/"winograd4"/"winograd6" force the tile), "direct" (depthwise, and
    with groups 1 and dilation 1: every 1x1, every strided layer and every 7x7; no im2col buffer,
    float32; float64 runs im2col) or "measure" (the fastest of measure_candidates() for this shape,
    batch, dtype, tier and thread count, timed on the first call and kept for the process, as
    cuDNN's benchmark mode; measured_conv_algorithms() lists the choices); one that cannot run the
    shape raises ValueError. Winograd's float32
    results are less accurate than im2col's (tests/test_winograd.py has the table).

    groups splits the channels into that many independent convolutions (C and O divisible by
    groups); groups == C is a depthwise convolution, computed per plane without im2col.
    dilation spaces the kernel's taps (a 3x3 kernel with dilation 2 spans 5x5).

    Shape:
        x (N, C, H, W), weight (O, C // groups, kh, kw), bias (O,) or None -> y (N, O, Ho, Wo),
        Ho = (H + 2*ph - dh*(kh - 1) - 1) // sh + 1,  Wo = (W + 2*pw - dw*(kw - 1) - 1) // sw + 1.

    Example:
        >>> x = np.ones((1, 1, 28, 28), np.float32); w = np.ones((20, 1, 5, 5), np.float32)
        >>> conv2d(x, w, padding=2).shape
        (1, 20, 28, 28)
        >>> conv2d(np.ones((1, 32, 112, 112), np.float32), np.ones((32, 1, 3, 3), np.float32),
        ...        stride=2, padding=1, groups=32).shape
        (1, 32, 56, 56)
    """
    fn = "conv2d"
    dilation, groups = _dilation_groups(fn, dilation, groups)
    if groups == 1 and dilation == (1, 1):
        x, weight, bias, geom = _conv_arguments(fn, x, weight, bias, stride, padding)
        algorithm = _resolve_algorithm(fn, algorithm, x, weight, geom[7:9], geom[9:11], dilation, groups)
        if algorithm.startswith("winograd"):
            return _winograd_conv2d(x, weight, bias, geom, int(algorithm[8:]))
        if algorithm == "direct" and x.dtype == np.float32 and geom[5:11] != (1, 1, 1, 1, 0, 0):
            return _direct_conv2d(x, weight, bias, geom)
        return _conv2d(x, weight, bias, geom)
    x, weight, bias, geom = _grouped_conv_arguments(fn, x, weight, bias, stride, padding, dilation, groups)
    N, C, H, W, O, G, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo = geom
    algorithm = _resolve_algorithm(fn, algorithm, x, weight, (sh, sw), (ph, pw), dilation, groups)
    y = np.empty((N, O, Ho, Wo), x.dtype)
    if N == 0:
        return y
    if G == C and algorithm != "im2col":
        _kernels.depthwise_conv2d_forward(y.reshape(-1), x.reshape(-1), weight.reshape(-1), bias, N, C, H, W, O,
                                          kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo,
                                          threads_for(N * O, Ho * Wo * kh * kw))
        return y
    K, L = C // G * kh * kw, Ho * Wo
    nt = threads_for(N * G, O // G * K * L)
    direct = (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0)
    scratch = np.empty(0 if direct else nt * K * L, x.dtype)
    _kernels.grouped_conv2d_forward(y.reshape(-1), x.reshape(-1), weight.reshape(-1), bias, scratch, *geom, nt)
    return y


def _dilation_groups(fn, dilation, groups):
    """(dilation pair, groups) checked: dilation >= 1, groups a positive int."""
    dilation = _pair(dilation, "dilation", fn, 1)
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, (bool, np.bool_)):
        raise TypeError(f"{fn}(): groups must be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"{fn}(): groups must be >= 1, got {groups}")
    return dilation, int(groups)


def _grouped_conv_geometry(fn, x, weight, stride, padding, dilation, groups):
    """(N, C, H, W, O, G, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo) of a grouped, dilated convolution."""
    N, C, H, W = x.shape
    O, Cg, kh, kw = weight.shape
    G = groups
    if min(O, C, kh, kw, H, W) < 1:
        raise ValueError(f"{fn}(): x {x.shape} and weight {weight.shape} must have no zero-size axis but the batch")
    if C % G:
        raise ValueError(f"{fn}(): groups={G} must divide x's {C} channels (x {x.shape})")
    if O % G:
        raise ValueError(f"{fn}(): groups={G} must divide the {O} out_channels (weight {weight.shape})")
    if Cg != C // G:
        raise ValueError(f"{fn}(): weight must have shape ({O}, {C // G}, kh, kw) (in_channels // groups = "
                         f"{C} // {G}), got {weight.shape}")
    sh, sw = _pair(stride, "stride", fn, 1)
    ph, pw = _pair(padding, "padding", fn, 0)
    dh, dw = dilation
    span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)  # the dilated kernel's extent
    if H + 2 * ph < span[0] or W + 2 * pw < span[1]:
        raise ValueError(f"{fn}(): kernel_size {(kh, kw)} with dilation {dilation} spans {span}, larger than "
                         f"the padded input {(H + 2 * ph, W + 2 * pw)}")
    Ho, Wo = _output_size(H, span[0], sh, ph), _output_size(W, span[1], sw, pw)
    _check_blas_size(fn, C // G * kh * kw * Ho * Wo, O * Ho * Wo, O * C // G * kh * kw)
    return (N, C, H, W, O, G, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo)


def _conv_bias(fn, bias, O, dtype):
    """bias checked against O out_channels, C-contiguous; an empty array for None."""
    if bias is None:
        return np.empty(0, dtype)
    bias = _float_array(bias, "bias", fn, ndim=1, dtype=dtype)
    if bias.shape[0] != O:
        raise ValueError(f"{fn}(): bias must have shape ({O},) for {O} out_channels, got {bias.shape}")
    return bias


def _grouped_conv_arguments(fn, x, weight, bias, stride, padding, dilation, groups):
    """As _conv_arguments, with the geometry of _grouped_conv_geometry."""
    x = _float_array(x, "x", fn, ndim=4)
    weight = _float_array(weight, "weight", fn, ndim=4, dtype=x.dtype)
    geom = _grouped_conv_geometry(fn, x, weight, stride, padding, dilation, groups)
    return x, weight, _conv_bias(fn, bias, geom[4], x.dtype), geom


def _conv2d(x, weight, bias, geom):
    """conv2d on checked arguments (see _conv_arguments)."""
    N, C, H, W, O, kh, kw, sh, sw, ph, pw, Ho, Wo = geom
    y = np.empty((N, O, Ho, Wo), x.dtype)
    if N == 0:
        return y
    nt = _conv_threads(geom)
    direct = (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0)
    scratch = np.empty(0 if direct else min(nt, N) * C * kh * kw * Ho * Wo, x.dtype)
    _kernels.conv2d_forward(y.reshape(-1), x.reshape(-1), weight.reshape(-1), bias, scratch, *geom, nt)
    if N >= nt:
        _record_work_split(nt, N)
    return y


def _record_work_split(nt, items):
    """After a convolution that handed its items (images, or chunks of them) to threads as they came free."""
    if nt > 1:
        record_work_split(_kernels.last_work_split(nt), items)


def _conv_arguments(fn, x, weight, bias, stride, padding):
    """x, weight and bias (empty for None) checked and C-contiguous, and the geometry."""
    x = _float_array(x, "x", fn, ndim=4)
    weight = _float_array(weight, "weight", fn, ndim=4, dtype=x.dtype)
    geom = _conv_geometry(fn, x, weight, stride, padding)
    return x, weight, _conv_bias(fn, bias, geom[4], x.dtype), geom


def _conv_threads(geom):
    """One image per thread; with fewer images than threads, the kernel splits
    each image's GEMM (O*Ho*Wo outputs of C*kh*kw multiply-adds) instead."""
    N, C, H, W, O, kh, kw, sh, sw, ph, pw, Ho, Wo = geom
    return threads_for(N, split=(O * Ho * Wo, C * kh * kw))


def conv2d_relu_max_pool2d(x, weight, bias=None, stride=1, padding=0, pool_size=2, pool_stride=None,
                           pool_padding=0, return_indices=False):
    """max_pool2d(relu(conv2d(x, weight, bias, stride, padding)), pool_size, pool_stride, pool_padding)
    without writing the convolution's output to memory: each image's is pooled while in cache.

    Returns y, or (y, indices) with return_indices=True: the positions of the maxima in the
    convolution's output planes, as relu_max_pool2d gives them. conv2d_relu_max_pool2d_backward
    takes y and indices back. nn.Sequential runs every Conv2d -> ReLU -> MaxPool2d this way.
    The results equal the three ops one after the other, bit for bit.
    """
    fn = "conv2d_relu_max_pool2d"
    x, weight, bias, geom = _conv_arguments(fn, x, weight, bias, stride, padding)
    N, C, H, W, O, kh, kw, sh, sw, ph, pw, Ho, Wo = geom
    pool = _pool_geometry(fn, (Ho, Wo), pool_size, pool_stride, pool_padding,
                          ("pool_size", "pool_stride", "pool_padding"), "the convolution's output")
    nt = _conv_threads(geom)
    y = np.empty((N, O, pool[6], pool[7]), x.dtype)
    indices = np.empty(y.shape if return_indices else 0, np.int64)
    if N and N >= nt:
        direct = (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0)
        scratch = np.empty(nt * ((0 if direct else C * kh * kw * Ho * Wo) + O * Ho * Wo), x.dtype)
        _kernels.conv2d_relu_max_pool2d_forward(y.reshape(-1), indices.reshape(-1), x.reshape(-1),
                                                weight.reshape(-1), bias, scratch, np.array(pool, np.intp),
                                                *geom, nt)
        _record_work_split(nt, N)
    elif N:  # fewer images than threads: the convolution splits each image's GEMM, then the pooling
        conv = _conv2d(x, weight, bias, geom)
        _kernels.maxpool2d_forward(y.reshape(-1), indices.reshape(-1), conv.reshape(-1), N * O, Ho, Wo,
                                   *pool, True, threads_for(N * O, Ho * Wo))
    return (y, indices) if return_indices else y


def conv2d_relu_max_pool2d_backward(grad_y, y, indices, x, weight, stride=1, padding=0, *, grad_input=True,
                                    out=None, accumulate=False):
    """Gradients of conv2d_relu_max_pool2d with respect to x, weight and bias, from its output y and
    indices: (grad_x or None, grad_weight, grad_bias), `out` and `accumulate` as in conv2d_backward.
    The convolution's output gradient is built per image in cache, never in memory."""
    fn = "conv2d_relu_max_pool2d_backward"
    x = _float_array(x, "x", fn, ndim=4)
    weight = _float_array(weight, "weight", fn, ndim=4, dtype=x.dtype)
    grad_y = _float_array(grad_y, "grad_y", fn, ndim=4, dtype=x.dtype)
    y = _float_array(y, "y", fn, ndim=4, dtype=x.dtype)
    geom = _conv_geometry(fn, x, weight, stride, padding)
    N, C, H, W, O, kh, kw, sh, sw, ph, pw, Ho, Wo = geom
    if grad_y.shape[:2] != (N, O):
        raise ValueError(f"{fn}(): grad_y must have shape ({N}, {O}, pooled H, pooled W), got {grad_y.shape}")
    indices = _pooling_indices(fn, "conv2d_relu_max_pool2d", grad_y, y, indices)
    grad_x = np.empty(x.shape, x.dtype) if grad_input else None
    grad_weight, grad_bias = _gradient_outputs(fn, out, accumulate, weight.shape, O, x.dtype,
                                               [x, weight, grad_y, y])
    PL = grad_y.shape[2] * grad_y.shape[3]
    if N == 0 or PL == 0:
        if not accumulate:
            grad_weight.fill(0)
            grad_bias.fill(0)
        if grad_input:
            grad_x.fill(0)
        return grad_x, grad_weight, grad_bias
    nt = threads_for(N)
    scratch = np.empty(nt * (2 * C * kh * kw + O) * Ho * Wo, x.dtype)
    acc = np.zeros(_kernels.weight_grad_chunks(N) * (O * C * kh * kw + O), x.dtype)
    bad = _kernels.conv2d_relu_max_pool2d_backward(
        grad_x.reshape(-1) if grad_input else np.empty(0, x.dtype), grad_weight.reshape(-1), grad_bias,
        grad_y.reshape(-1), y.reshape(-1), indices.reshape(-1), x.reshape(-1), weight.reshape(-1),
        scratch, acc, PL, *geom, grad_input, accumulate, nt)
    _record_work_split(nt, _kernels.weight_grad_chunks(N))
    if bad:
        raise ValueError(f"{fn}(): indices has {bad} entries outside [0, H*W) = [0, {Ho * Wo}) of the "
                         "convolution's output planes")
    return grad_x, grad_weight, grad_bias


def conv2d_backward(grad_y, x, weight, stride=1, padding=0, dilation=1, groups=1, *, grad_input=True, out=None,
                    accumulate=False, algorithm="auto"):
    """Gradients of conv2d with respect to its input, weight and bias.

    Shape:
        grad_y (N, O, Ho, Wo), x (N, C, H, W), weight (O, C // groups, kh, kw)
        -> grad_x (N, C, H, W) or None when grad_input=False (a network's first
           layer needs no input gradient), grad_weight (O, C // groups, kh, kw), grad_bias (O,).

    grad_weight = sum_n grad_y[n] @ im2col(x)[n].T;  grad_x = col2im(weight.T @ grad_y).

    out=(grad_weight, grad_bias) writes the parameter gradients into those arrays
    (C-contiguous, the right shape and dtype; either may be None) and returns them;
    with accumulate=True they are added into them, as a module adds into `.grad`.

    algorithm as in conv2d (the forward's choice, for the same arguments; "measure" times the
    backward's candidates apart from the forward's, so the two may differ). With Winograd only the
    input gradient is computed by it (the forward on grad_y with the flipped, transposed filters);
    the weight and bias gradients stay on im2col's kernel. "direct" has a backward of its own for
    depthwise layers only: its strided, padded and 7x7 layers run im2col's backward.
    """
    fn = "conv2d_backward"
    dilation, groups = _dilation_groups(fn, dilation, groups)
    if groups != 1 or dilation != (1, 1):
        return _grouped_conv2d_backward(fn, grad_y, x, weight, stride, padding, dilation, groups, grad_input, out,
                                        accumulate, algorithm)
    x = _float_array(x, "x", fn, ndim=4)
    weight = _float_array(weight, "weight", fn, ndim=4, dtype=x.dtype)
    grad_y = _float_array(grad_y, "grad_y", fn, ndim=4, dtype=x.dtype)
    geom = _conv_geometry(fn, x, weight, stride, padding)
    N, C, H, W, O, kh, kw, sh, sw, ph, pw, Ho, Wo = geom
    if grad_y.shape != (N, O, Ho, Wo):
        raise ValueError(f"{fn}(): grad_y must have shape {(N, O, Ho, Wo)} (the output of conv2d), got {grad_y.shape}")
    algorithm = _resolve_algorithm(fn, algorithm, x, weight, (sh, sw), (ph, pw), dilation, groups, "backward")
    if algorithm.startswith("winograd"):
        _, grad_weight, grad_bias = conv2d_backward(grad_y, x, weight, stride, padding, grad_input=False, out=out,
                                                    accumulate=accumulate, algorithm="im2col")
        grad_x = _winograd_input_grad(grad_y, weight, geom, int(algorithm[8:])) if grad_input else None
        return grad_x, grad_weight, grad_bias
    grad_x = np.empty(x.shape, x.dtype) if grad_input else None
    # The kernel writes (or adds into) every element of these, from zeroed per-thread accumulators.
    grad_weight, grad_bias = _gradient_outputs(fn, out, accumulate, weight.shape, O, x.dtype,
                                                [x, weight, grad_y])
    if N == 0:
        if not accumulate:
            grad_weight.fill(0)
            grad_bias.fill(0)
        return grad_x, grad_weight, grad_bias
    nt = threads_for(N)
    scratch = np.empty(nt * 2 * C * kh * kw * Ho * Wo, x.dtype)
    acc = np.zeros(_kernels.weight_grad_chunks(N) * (O * C * kh * kw + O), x.dtype)
    _kernels.conv2d_backward(
        grad_x.reshape(-1) if grad_input else np.empty(0, x.dtype), grad_weight.reshape(-1), grad_bias,
        grad_y.reshape(-1), x.reshape(-1), weight.reshape(-1), scratch, acc, *geom, grad_input, accumulate, nt)
    _record_work_split(nt, _kernels.weight_grad_chunks(N))
    return grad_x, grad_weight, grad_bias


def _grouped_conv2d_backward(fn, grad_y, x, weight, stride, padding, dilation, groups, grad_input, out,
                             accumulate, algorithm):
    """conv2d_backward with groups > 1 or dilation > 1 (arguments as there)."""
    x = _float_array(x, "x", fn, ndim=4)
    weight = _float_array(weight, "weight", fn, ndim=4, dtype=x.dtype)
    grad_y = _float_array(grad_y, "grad_y", fn, ndim=4, dtype=x.dtype)
    geom = _grouped_conv_geometry(fn, x, weight, stride, padding, dilation, groups)
    N, C, H, W, O, G, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo = geom
    if grad_y.shape != (N, O, Ho, Wo):
        raise ValueError(f"{fn}(): grad_y must have shape {(N, O, Ho, Wo)} (the output of conv2d), got {grad_y.shape}")
    grad_x = np.empty(x.shape, x.dtype) if grad_input else None
    grad_weight, grad_bias = _gradient_outputs(fn, out, accumulate, weight.shape, O, x.dtype, [x, weight, grad_y])
    algorithm = _resolve_algorithm(fn, algorithm, x, weight, (sh, sw), (ph, pw), dilation, groups, "backward")
    if N == 0:
        if not accumulate:
            grad_weight.fill(0)
            grad_bias.fill(0)
        return grad_x, grad_weight, grad_bias
    no_grad_x = np.empty(0, x.dtype)
    K, L = C // G * kh * kw, Ho * Wo
    if G == C and algorithm != "im2col":
        nt = threads_for(O, N * L * kh * kw)  # the weight gradient's items: the input gradient has more
        acc = np.zeros(O * (kh * kw + 1), x.dtype)
        _kernels.depthwise_conv2d_backward(
            grad_x.reshape(-1) if grad_input else no_grad_x, grad_weight.reshape(-1), grad_bias, grad_y.reshape(-1),
            x.reshape(-1), weight.reshape(-1), acc, N, C, H, W, O, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo,
            grad_input, accumulate, nt)
        return grad_x, grad_weight, grad_bias
    chunks = _kernels.weight_grad_chunks(N)
    nt = threads_for(chunks * G, N // chunks * O // G * K * L)
    scratch = np.empty(nt * 2 * K * L, x.dtype)
    acc = np.zeros(chunks * (O * K + O), x.dtype)
    _kernels.grouped_conv2d_backward(
        grad_x.reshape(-1) if grad_input else no_grad_x, grad_weight.reshape(-1), grad_bias, grad_y.reshape(-1),
        x.reshape(-1), weight.reshape(-1), scratch, acc, *geom, grad_input, accumulate, nt)
    return grad_x, grad_weight, grad_bias


def im2col(x, kernel_size, stride=1, padding=0):
    """Unfold every kernel-sized patch of x into a column (torch.nn.functional.unfold).

    Shape:
        x (N, C, H, W) -> cols (N, C*kh*kw, Ho*Wo), rows ordered (channel, kernel row,
        kernel column); cols[n, (c*kh + i)*kw + j, oh*Wo + ow] = x[n, c, oh*sh - ph + i,
        ow*sw - pw + j], 0 in the padding.
    """
    fn = "im2col"
    x = _float_array(x, "x", fn, ndim=4)
    kh, kw = _pair(kernel_size, "kernel_size", fn, 1)
    sh, sw = _pair(stride, "stride", fn, 1)
    ph, pw = _pair(padding, "padding", fn, 0)
    N, C, H, W = x.shape
    _check_window_fits(fn, (H, W), (kh, kw), (ph, pw))
    Ho, Wo = _output_size(H, kh, sh, ph), _output_size(W, kw, sw, pw)
    cols = np.empty((N, C * kh * kw, Ho * Wo), x.dtype)
    if cols.size:
        _kernels.im2col(cols.reshape(-1), x.reshape(-1), N, C, H, W, kh, kw, sh, sw, ph, pw,
                        Ho, Wo, threads_for(N * C, kh * kw * Ho * Wo))
    return cols


def col2im(cols, input_shape, kernel_size, stride=1, padding=0):
    """The adjoint of im2col (torch.nn.functional.fold): overlapping entries are summed.

    Shape:
        cols (N, C*kh*kw, Ho*Wo), input_shape (N, C, H, W) -> x (N, C, H, W).
    """
    fn = "col2im"
    cols = _float_array(cols, "cols", fn, ndim=3)
    N, C, H, W = _input_shape(fn, input_shape)
    kh, kw = _pair(kernel_size, "kernel_size", fn, 1)
    sh, sw = _pair(stride, "stride", fn, 1)
    ph, pw = _pair(padding, "padding", fn, 0)
    _check_window_fits(fn, (H, W), (kh, kw), (ph, pw))
    Ho, Wo = _output_size(H, kh, sh, ph), _output_size(W, kw, sw, pw)
    if cols.shape != (N, C * kh * kw, Ho * Wo):
        raise ValueError(
            f"{fn}(): cols must have shape {(N, C * kh * kw, Ho * Wo)} for input_shape "
            f"{tuple(input_shape)} and kernel_size {(kh, kw)}, got {cols.shape}"
        )
    x = np.zeros((N, C, H, W), cols.dtype)  # stays zero if N*C == 0; col2im overwrites the rest
    if x.size:
        _kernels.col2im(x.reshape(-1), cols.reshape(-1), N, C, H, W, kh, kw, sh, sw, ph, pw,
                        Ho, Wo, threads_for(N * C, kh * kw * Ho * Wo))
    return x


# ---------------------------------------------------------------------------
# Max pooling

def max_pool2d(x, kernel_size, stride=None, padding=0, return_indices=False):
    """2-D max pooling; padding acts as -inf.

    Shape:
        x (N, C, H, W) -> y (N, C, Ho, Wo), Ho = (H + 2*ph - kh) // sh + 1.
        indices (int64, same shape as y, with return_indices=True): the flat position
        h*W + w in its input plane of each maximum (PyTorch's convention).

    stride defaults to kernel_size; padding must be at most half the kernel. The
    first maximum in row-major window order wins ties; a NaN in the window gives NaN.
    """
    return _max_pool2d("max_pool2d", x, kernel_size, stride, padding, return_indices, relu=False)


def relu_max_pool2d(x, kernel_size, stride=None, padding=0, return_indices=False):
    """max_pool2d(relu(x)) in one pass over x.

    y = max_pool2d(relu(x)) = relu(max_pool2d(x)) (ReLU is monotone and keeps NaN); the
    indices (return_indices=True) are max_pool2d(x)'s, the positions in x of each window's
    maximum, and relu_max_pool2d_backward turns them and y into the exact gradient of the
    pair. Saves the separate ReLU pass over x (a read and a write) and its backward;
    nn.Sequential runs every ReLU followed by a MaxPool2d this way.
    """
    return _max_pool2d("relu_max_pool2d", x, kernel_size, stride, padding, return_indices, relu=True)


def _pool_geometry(fn, hw, kernel_size, stride, padding, names=("kernel_size", "stride", "padding"),
                   input_name="x"):
    """(kh, kw, sh, sw, ph, pw, Ho, Wo) of a max pooling over planes of size hw, checked."""
    kh, kw = _pair(kernel_size, names[0], fn, 1)
    sh, sw = _pair((kh, kw) if stride is None else stride, names[1], fn, 1)
    ph, pw = _pair(padding, names[2], fn, 0)
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"{fn}(): {names[2]} must be at most half the kernel {(kh, kw)}, got {padding!r}")
    if min(hw) < 1:
        # A window of padding alone has no element for its index to point at.
        raise ValueError(f"{fn}(): {input_name} must have non-empty planes (H, W >= 1), got {tuple(hw)}")
    _check_window_fits(fn, hw, (kh, kw), (ph, pw))
    return kh, kw, sh, sw, ph, pw, _output_size(hw[0], kh, sh, ph), _output_size(hw[1], kw, sw, pw)


def _max_pool2d(fn, x, kernel_size, stride, padding, return_indices, relu):
    x = _float_array(x, "x", fn, ndim=4)
    N, C, H, W = x.shape
    kh, kw, sh, sw, ph, pw, Ho, Wo = _pool_geometry(fn, (H, W), kernel_size, stride, padding)
    y = np.empty((N, C, Ho, Wo), x.dtype)
    indices = np.empty((N, C, Ho, Wo) if return_indices else 0, np.int64)
    if y.size:
        _kernels.maxpool2d_forward(y.reshape(-1), indices.reshape(-1), x.reshape(-1), N * C, H, W,
                                   kh, kw, sh, sw, ph, pw, Ho, Wo, relu, threads_for(N * C, H * W))
    return (y, indices) if return_indices else y


def max_pool2d_backward(grad_y, indices, input_shape):
    """Gradient of max_pool2d: grad_y scattered (summed) to the positions in indices.

    Shape:
        grad_y (N, C, Ho, Wo), indices int64 (N, C, Ho, Wo), input_shape (N, C, H, W)
        -> grad_x (N, C, H, W).
    """
    return _max_pool2d_backward("max_pool2d_backward", grad_y, None, indices, input_shape)


def relu_max_pool2d_backward(grad_y, y, indices, input_shape):
    """Gradient of relu_max_pool2d with respect to x, from its outputs y and indices:
    max_pool2d_backward(grad_y where y > 0 (or NaN), else 0, indices, input_shape)."""
    return _max_pool2d_backward("relu_max_pool2d_backward", grad_y, y, indices, input_shape)


def _pooling_indices(fn, source, grad_y, y, indices):
    """A pooling backward's indices (from `source`), checked against grad_y (and y, the output
    of a ReLU-fused forward, unless None) and made C-contiguous."""
    if y is not None and y.shape != grad_y.shape:
        raise ValueError(f"{fn}(): y must have grad_y's shape {grad_y.shape}, got {y.shape}")
    if not isinstance(indices, np.ndarray) or indices.dtype != np.int64:
        got = indices.dtype if isinstance(indices, np.ndarray) else type(indices).__name__
        raise TypeError(f"{fn}(): indices must be an int64 array (from {source}), got {got}")
    if indices.shape != grad_y.shape:
        raise ValueError(f"{fn}(): indices must have grad_y's shape {grad_y.shape}, got {indices.shape}")
    return np.ascontiguousarray(indices)


def _max_pool2d_backward(fn, grad_y, y, indices, input_shape):
    grad_y = _float_array(grad_y, "grad_y", fn, ndim=4)
    if y is not None:
        y = _float_array(y, "y", fn, ndim=4, dtype=grad_y.dtype)
    indices = _pooling_indices(fn, "max_pool2d", grad_y, y, indices)
    N, C, H, W = _input_shape(fn, input_shape)
    if (N, C) != grad_y.shape[:2]:
        raise ValueError(f"{fn}(): input_shape {tuple(input_shape)} does not match grad_y's (N, C) {grad_y.shape[:2]}")
    if grad_y.size == 0:
        return np.zeros((N, C, H, W), grad_y.dtype)
    if H * W == 0:
        raise ValueError(f"{fn}(): indices has {indices.size} entries outside [0, H*W) = [0, 0)")
    grad_x = np.empty((N, C, H, W), grad_y.dtype)  # the kernel zeroes each plane first
    L = grad_y.shape[2] * grad_y.shape[3]
    relu_output = np.empty(0, grad_y.dtype) if y is None else y.reshape(-1)
    bad = _kernels.maxpool2d_backward(grad_x.reshape(-1), grad_y.reshape(-1), indices.reshape(-1),
                                      relu_output, N * C, H * W, L, threads_for(N * C, H * W))
    if bad:
        raise ValueError(f"{fn}(): indices has {bad} entries outside [0, H*W) = [0, {H * W})")
    return grad_x


# ---------------------------------------------------------------------------
# Average pooling

def avg_pool2d(x, kernel_size, stride=None, padding=0, count_include_pad=True):
    """2-D average pooling, PyTorch's semantics: padding counts as zeros, and the divisor is the
    whole window (count_include_pad=True, PyTorch's default) or its taps inside the image.

    Shape:
        x (N, C, H, W) -> y (N, C, Ho, Wo), Ho = (H + 2*ph - kh) // sh + 1.

    stride defaults to kernel_size; padding must be at most half the kernel.
    """
    fn = "avg_pool2d"
    x = _float_array(x, "x", fn, ndim=4)
    N, C, H, W = x.shape
    geom = _pool_geometry(fn, (H, W), kernel_size, stride, padding)
    flag = _bool_flag(fn, "count_include_pad", count_include_pad)
    y = np.empty((N, C, geom[6], geom[7]), x.dtype)
    if y.size:
        _kernels.avgpool2d_forward(y.reshape(-1), x.reshape(-1), N * C, H, W, *geom, flag,
                                   threads_for(N * C, H * W))
    return y


def avg_pool2d_backward(grad_y, input_shape, kernel_size, stride=None, padding=0, count_include_pad=True):
    """Gradient of avg_pool2d: each output's gradient, divided by its divisor, spread over its window.

    Shape:
        grad_y (N, C, Ho, Wo), input_shape (N, C, H, W) -> grad_x (N, C, H, W).
    """
    fn = "avg_pool2d_backward"
    grad_y = _float_array(grad_y, "grad_y", fn, ndim=4)
    N, C, H, W = _input_shape(fn, input_shape)
    if (N, C) != grad_y.shape[:2]:
        raise ValueError(f"{fn}(): input_shape {tuple(input_shape)} does not match grad_y's (N, C) {grad_y.shape[:2]}")
    geom = _pool_geometry(fn, (H, W), kernel_size, stride, padding)
    if grad_y.shape[2:] != geom[6:]:
        raise ValueError(f"{fn}(): grad_y must have shape {(N, C) + geom[6:]} for input_shape "
                         f"{tuple(input_shape)}, got {grad_y.shape}")
    flag = _bool_flag(fn, "count_include_pad", count_include_pad)
    grad_x = np.empty((N, C, H, W), grad_y.dtype)  # the kernel overwrites every plane
    if grad_x.size:
        _kernels.avgpool2d_backward(grad_x.reshape(-1), grad_y.reshape(-1), N * C, H, W, *geom, flag,
                                    threads_for(N * C, H * W))
    return grad_x


# ---------------------------------------------------------------------------
# Adaptive average pooling

def adaptive_avg_pool2d(x, output_size):
    """Average pooling to a given output size, PyTorch's bins: output row i averages input rows
    floor(i*H/Ho) to ceil((i+1)*H/Ho) (exclusive), and the same along the width. Bins may
    overlap. output_size 1 is a global average pool (the head of ResNet and MobileNet).

    Shape:
        x (N, C, H, W), output_size Ho or (Ho, Wo) -> y (N, C, Ho, Wo).
    """
    fn = "adaptive_avg_pool2d"
    x = _float_array(x, "x", fn, ndim=4)
    N, C, H, W = x.shape
    Ho, Wo = _adaptive_output_size(fn, output_size, (H, W))
    y = np.empty((N, C, Ho, Wo), x.dtype)
    if y.size:
        _kernels.adaptive_avgpool2d_forward(y.reshape(-1), x.reshape(-1), N * C, H, W, Ho, Wo,
                                            threads_for(N * C, H * W))
    return y


def adaptive_avg_pool2d_backward(grad_y, input_shape, output_size):
    """Gradient of adaptive_avg_pool2d: each output's gradient, divided by its bin's size,
    spread over its bin (overlaps add up).

    Shape:
        grad_y (N, C, Ho, Wo), input_shape (N, C, H, W) -> grad_x (N, C, H, W).
    """
    fn = "adaptive_avg_pool2d_backward"
    grad_y = _float_array(grad_y, "grad_y", fn, ndim=4)
    N, C, H, W = _input_shape(fn, input_shape)
    Ho, Wo = _adaptive_output_size(fn, output_size, (H, W))
    if grad_y.shape != (N, C, Ho, Wo):
        raise ValueError(f"{fn}(): grad_y must have shape {(N, C, Ho, Wo)} for input_shape {tuple(input_shape)} "
                         f"and output_size {output_size!r}, got {grad_y.shape}")
    grad_x = np.empty((N, C, H, W), grad_y.dtype)  # the kernel overwrites every plane
    if grad_x.size:
        _kernels.adaptive_avgpool2d_backward(grad_x.reshape(-1), grad_y.reshape(-1), N * C, H, W, Ho, Wo,
                                             threads_for(N * C, H * W))
    return grad_x


def _adaptive_output_size(fn, output_size, hw):
    """output_size as an (Ho, Wo) pair of ints >= 1, for non-empty planes hw."""
    size = _pair(output_size, "output_size", fn, 1)
    if min(hw) < 1:
        raise ValueError(f"{fn}(): x must have non-empty planes (H, W >= 1), got {tuple(hw)}")
    return size


def _bool_flag(fn, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}(): {name} must be True or False, got {value!r}")
    return bool(value)


def _input_shape(fn, input_shape):
    """input_shape checked: 4 non-negative ints (N, C, H, W)."""
    if not (isinstance(input_shape, (tuple, list)) and len(input_shape) == 4
            and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0
                    for s in input_shape)):
        raise ValueError(f"{fn}(): input_shape must be 4 non-negative ints (N, C, H, W), got {input_shape!r}")
    return tuple(int(s) for s in input_shape)


# ---------------------------------------------------------------------------
# ReLU

def relu(x):
    """y = max(x, 0), elementwise; NaN stays NaN. Any shape."""
    x = _float_array(x, "x", "relu")
    y = np.empty_like(x)
    _kernels.relu_forward(y.reshape(-1), x.reshape(-1), threads_for(x.size, 1))
    return y


def relu_backward(grad_y, x):
    """grad_x = 0 where x <= 0, else grad_y (0 at the kink x == 0; a NaN x passes grad_y, as in PyTorch)."""
    fn = "relu_backward"
    x = _float_array(x, "x", fn)
    grad_y = _float_array(grad_y, "grad_y", fn, dtype=x.dtype)
    if grad_y.shape != x.shape:
        raise ValueError(f"{fn}(): grad_y must have x's shape {x.shape}, got {grad_y.shape}")
    grad_x = np.empty_like(x)
    _kernels.relu_backward(grad_x.reshape(-1), grad_y.reshape(-1), x.reshape(-1),
                          threads_for(x.size, 1))
    return grad_x


# ---------------------------------------------------------------------------
# Add and concat: the merges of a graph

def add(a, b, relu=False):
    """y = a + b elementwise (a residual connection), then ReLU when relu=True (relu(a + b) in one
    pass: the end of a ResNet block). a and b have one shape and dtype. Backward: the gradient of
    a + b is grad_y for both; with relu, relu_backward(grad_y, y) for both."""
    fn = "add"
    a = _float_array(a, "a", fn)
    b = _float_array(b, "b", fn, dtype=a.dtype)
    if a.shape != b.shape:
        raise ValueError(f"{fn}(): a and b must have one shape, got {a.shape} and {b.shape}")
    relu = _bool_flag(fn, "relu", relu)
    y = np.empty_like(a)
    _kernels.add_forward(y.reshape(-1), a.reshape(-1), b.reshape(-1), relu, threads_for(a.size, 1))
    return y


def concat(xs):
    """The arrays of xs joined along axis 1 (channels): (N, C1, ...), (N, C2, ...) -> (N, C1 + C2, ...).
    All of one dtype, equal but for axis 1."""
    fn = "concat"
    if not isinstance(xs, (list, tuple)) or not xs:
        raise ValueError(f"{fn}(): xs must be a non-empty list of arrays, got {type(xs).__name__}")
    first = _float_array(xs[0], "xs[0]", fn)
    arrays = [first] + [_float_array(x, f"xs[{i}]", fn, dtype=first.dtype) for i, x in enumerate(xs[1:], 1)]
    for i, x in enumerate(arrays):
        if x.ndim < 2 or x.shape[:1] + x.shape[2:] != first.shape[:1] + first.shape[2:]:
            raise ValueError(f"{fn}(): xs[{i}] has shape {x.shape}, which differs from xs[0]'s {first.shape} "
                             "on an axis other than 1")
    return np.concatenate(arrays, axis=1)


def concat_backward(grad_y, channels):
    """The gradient of concat, split back: a tuple of arrays with channels[i] channels each."""
    fn = "concat_backward"
    grad_y = _float_array(grad_y, "grad_y", fn)
    channels = [int(c) for c in channels]
    if grad_y.ndim < 2 or sum(channels) != grad_y.shape[1] or min(channels, default=0) < 0:
        raise ValueError(f"{fn}(): channels {channels} must sum to grad_y's axis 1, got shape {grad_y.shape}")
    bounds = np.cumsum([0] + channels)
    return tuple(np.ascontiguousarray(grad_y[:, lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:]))


# ---------------------------------------------------------------------------
# Hardtanh and ReLU6

def hardtanh(x, min_val=-1.0, max_val=1.0):
    """y = min(max(x, min_val), max_val), elementwise; NaN stays NaN. Any shape.
    The bounds are rounded to x's dtype."""
    fn = "hardtanh"
    x = _float_array(x, "x", fn)
    lo, hi = _bounds(fn, min_val, max_val)
    y = np.empty_like(x)
    _kernels.hardtanh_forward(y.reshape(-1), x.reshape(-1), lo, hi, threads_for(x.size, 1))
    return y


def hardtanh_backward(grad_y, x, min_val=-1.0, max_val=1.0):
    """grad_x = grad_y strictly inside (min_val, max_val), 0 at the bounds and beyond (PyTorch's rule;
    a NaN x passes grad_y, as there)."""
    fn = "hardtanh_backward"
    x = _float_array(x, "x", fn)
    grad_y = _float_array(grad_y, "grad_y", fn, dtype=x.dtype)
    if grad_y.shape != x.shape:
        raise ValueError(f"{fn}(): grad_y must have x's shape {x.shape}, got {grad_y.shape}")
    lo, hi = _bounds(fn, min_val, max_val)
    grad_x = np.empty_like(x)
    _kernels.hardtanh_backward(grad_x.reshape(-1), grad_y.reshape(-1), x.reshape(-1), lo, hi,
                               threads_for(x.size, 1))
    return grad_x


def relu6(x):
    """y = min(max(x, 0), 6): hardtanh(x, 0, 6) (MobileNetV2's activation)."""
    return hardtanh(x, 0.0, 6.0)


def relu6_backward(grad_y, x):
    """hardtanh_backward(grad_y, x, 0, 6)."""
    return hardtanh_backward(grad_y, x, 0.0, 6.0)


def _bounds(fn, min_val, max_val):
    """(min_val, max_val) as floats, checked: real numbers, finite or infinite, min_val <= max_val."""
    bounds = []
    for name, v in (("min_val", min_val), ("max_val", max_val)):
        if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, (bool, np.bool_)):
            raise TypeError(f"{fn}(): {name} must be a real number, got {v!r}")
        if math.isnan(v):
            raise ValueError(f"{fn}(): {name} must not be NaN")
        bounds.append(float(v))
    if bounds[0] > bounds[1]:
        raise ValueError(f"{fn}(): min_val must be <= max_val, got {min_val!r} > {max_val!r}")
    return tuple(bounds)


# ---------------------------------------------------------------------------
# Sigmoid and tanh: backward from the forward's output

def sigmoid(x):
    """y = 1 / (1 + exp(-x)), elementwise; NaN stays NaN. Any shape.

    float32 uses a vectorised exp (within 2 ulp of expf), clamped below -87: sigmoid(-100)
    gives ~1e-38 (exactly: 4e-44); float64 uses the C library's exp.
    """
    return _saturating(0, "sigmoid", x)


def sigmoid_backward(grad_y, y):
    """grad_x = grad_y * y * (1 - y), from sigmoid's output y (as PyTorch's backward does)."""
    return _saturating_backward(0, "sigmoid_backward", grad_y, y)


def tanh(x):
    """y = tanh(x), elementwise; NaN stays NaN. Any shape."""
    return _saturating(1, "tanh", x)


def tanh_backward(grad_y, y):
    """grad_x = grad_y * (1 - y**2), from tanh's output y."""
    return _saturating_backward(1, "tanh_backward", grad_y, y)


def _saturating(op, fn, x):
    x = _float_array(x, "x", fn)
    y = np.empty_like(x)
    _kernels.saturating_forward(op, y.reshape(-1), x.reshape(-1), threads_for(x.size, 8))
    return y


def _saturating_backward(op, fn, grad_y, y):
    y = _float_array(y, "y", fn)
    grad_y = _float_array(grad_y, "grad_y", fn, dtype=y.dtype)
    if grad_y.shape != y.shape:
        raise ValueError(f"{fn}(): grad_y must have y's shape {y.shape}, got {grad_y.shape}")
    grad_x = np.empty_like(y)
    _kernels.saturating_backward(op, grad_x.reshape(-1), grad_y.reshape(-1), y.reshape(-1),
                                 threads_for(y.size, 1))
    return grad_x


# ---------------------------------------------------------------------------
# Softmax and log-softmax over the classes of (N, K) scores. Not a hot loop (K is
# the number of classes): NumPy, with the row maximum subtracted first.

def softmax(x):
    """y = exp(x - max) / sum(exp(x - max)) over the last axis of x (N, K)."""
    return _softmax("softmax", x, False)


def softmax_backward(grad_y, y):
    """grad_x = y * (grad_y - sum(grad_y * y)), from softmax's output y (N, K)."""
    grad_y, y = _class_scores("softmax_backward", grad_y, y)
    return y * (grad_y - (grad_y * y).sum(axis=1, keepdims=True))


def log_softmax(x):
    """y = x - max - log(sum(exp(x - max))) over the last axis of x (N, K)."""
    return _softmax("log_softmax", x, True)


def _softmax(fn, x, take_log):
    """The compiled row kernel the predictor's softmax op runs too."""
    x = _float_array(x, "x", fn, ndim=2)
    y = np.empty_like(x)
    N, K = x.shape
    _kernels.softmax_forward(y.reshape(-1), x.reshape(-1), N, K, take_log, threads_for(N, K * 16))
    return y


def log_softmax_backward(grad_y, y):
    """grad_x = grad_y - exp(y) * sum(grad_y), from log_softmax's output y (N, K)."""
    grad_y, y = _class_scores("log_softmax_backward", grad_y, y)
    return grad_y - np.exp(y) * grad_y.sum(axis=1, keepdims=True)


def _class_scores(fn, grad_y, y):
    y = _float_array(y, "y", fn, ndim=2)
    grad_y = _float_array(grad_y, "grad_y", fn, ndim=2, dtype=y.dtype)
    if grad_y.shape != y.shape:
        raise ValueError(f"{fn}(): grad_y must have y's shape {y.shape}, got {grad_y.shape}")
    return grad_y, y


# ---------------------------------------------------------------------------
# Dropout: inverted (kept elements scaled by 1 / (1 - p)), with the mask a hash of
# (seed, element index) -- see csrc/dropout.c.

_DROPOUT_MAX_ELEMENTS = 2**32  # the hash indexes elements with 32 bits
_SEED_LIMIT = 2**64


def _probability(p, fn, name="p"):
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating)) \
            or not 0 <= p <= 1:
        raise ValueError(f"{fn}(): {name} must be a number in [0, 1], got {p!r}")
    return float(p)


def _seed(seed, fn):
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{fn}(): seed must be an int in [0, 2**64), got {seed!r}")
    if not 0 <= seed < _SEED_LIMIT:
        raise ValueError(f"{fn}(): seed must be in [0, 2**64), got {seed}")
    return int(seed)


def _dropout(fn, name, x, p, seed):
    if isinstance(x, np.ndarray) and x.size >= _DROPOUT_MAX_ELEMENTS:  # before a copy to C order
        raise ValueError(f"{fn}(): {name} has {x.size} elements; dropout takes fewer than 2**32")
    x = _float_array(x, name, fn)
    p, seed = _probability(p, fn), _seed(seed, fn)
    threshold = round(p * 2**24)  # keep when the hash's top 24 bits are >= this
    scale = 1 / (1 - p) if p < 1 else 0.0
    y = np.empty_like(x)
    _kernels.dropout_apply(y.reshape(-1), x.reshape(-1), seed, threshold, scale, threads_for(x.size, 8))
    return y


def dropout(x, p=0.5, *, seed, training=True):
    """Inverted dropout: each element zeroed with probability p, the others scaled by 1 / (1 - p);
    with training=False, x itself (PyTorch's semantics; p=1 gives zeros, and a NaN stays NaN).

    The mask is a function of (seed, the element's index in x) alone: the same on every ISA tier and
    thread count, reproduced by cyconv.reference.dropout, and recomputed by dropout_backward (so it is
    never stored). A different mask needs a different seed (nn.Dropout draws one per call).
    seed: an int in [0, 2**64). x: any shape, fewer than 2**32 elements.
    """
    if not _bool_flag("dropout", "training", training):
        _float_array(x, "x", "dropout")
        return x
    return _dropout("dropout", "x", x, p, seed)


def dropout_backward(grad_y, p=0.5, *, seed):
    """Gradient of dropout(x, p, seed=seed) in training mode: grad_y through the same mask and scale."""
    return _dropout("dropout_backward", "grad_y", grad_y, p, seed)


# ---------------------------------------------------------------------------
# Batch normalisation over the channel axis (1) of (N, C), (N, C, L) or (N, C, H, W):
# the per-channel passes are compiled (csrc/batchnorm.c); the arithmetic on the C
# per-channel numbers between them is NumPy, in float64.

def _channels(fn, name, a, C, dtype, writeable=False):
    if a is None:
        return None
    if writeable and isinstance(a, np.ndarray) and not (a.flags.c_contiguous and a.flags.writeable):
        raise ValueError(f"{fn}(): {name} is updated in place and must be a writeable C-contiguous array")
    a = _float_array(a, name, fn, ndim=1, dtype=dtype)
    if a.shape[0] != C:
        raise ValueError(f"{fn}(): {name} must have shape ({C},), one value per channel of x, got {a.shape}")
    return a


def _batch(fn, x):
    x = _float_array(x, "x", fn)
    if x.ndim < 2:
        raise ValueError(f"{fn}(): x must be (N, C) or (N, C, ...), got shape {x.shape}")
    return x, x.shape[0], x.shape[1], math.prod(x.shape[2:])


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
               return_stats=False):
    """Batch normalisation per channel (axis 1 of x (N, C, ...)), PyTorch's semantics:

        y = (x - mean) / sqrt(var + eps) * weight + bias

    training=True: mean and var are the batch's (over N and the spatial axes; var biased), and
    running_mean and running_var (if given) are updated in place:
        running = (1 - momentum) * running + momentum * batch statistic   (var: unbiased)
    training=False: mean and var are running_mean and running_var (both required).
    weight and bias (C,) may be None (1 and 0). All arrays have x's dtype.
    return_stats=True returns (y, mean, invstd), invstd = 1 / sqrt(var + eps), both (C,) in x's dtype:
    what batch_norm_backward needs.
    """
    fn = "batch_norm"
    x, N, C, L = _batch(fn, x)
    training = _bool_flag(fn, "training", training)
    _bool_flag(fn, "return_stats", return_stats)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{fn}(): running_mean and running_var must both be given or both be None")
    running_mean = _channels(fn, "running_mean", running_mean, C, x.dtype, writeable=training)
    running_var = _channels(fn, "running_var", running_var, C, x.dtype, writeable=training)
    weight = _channels(fn, "weight", weight, C, x.dtype)
    bias = _channels(fn, "bias", bias, C, x.dtype)
    for name, v, low in (("momentum", momentum, 0), ("eps", eps, 0)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or not np.isfinite(v) or v < low or (name == "momentum" and v > 1):
            raise ValueError(f"{fn}(): {name} must be {'in [0, 1]' if name == 'momentum' else 'a number >= 0'}, "
                             f"got {v!r}")
    M = N * L
    if training:
        if M <= 1:
            raise ValueError(f"{fn}(): training needs more than 1 value per channel, got x of shape {x.shape}")
        mean, var = np.empty(C), np.empty(C)
        _kernels.batchnorm_stats(mean, var, x.reshape(-1), N, C, L, threads_for(C, M))
        if running_mean is not None:
            running_mean *= 1 - momentum
            running_mean += (momentum * mean).astype(x.dtype)
            running_var *= 1 - momentum
            running_var += (momentum * var * (M / (M - 1))).astype(x.dtype)
    else:
        if running_mean is None:
            raise ValueError(f"{fn}(): training=False normalises with running_mean and running_var; got None")
        mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
    invstd = 1 / np.sqrt(var + eps)
    scale = invstd if weight is None else invstd * weight
    shift = -mean * scale if bias is None else bias - mean * scale
    y = np.empty_like(x)
    _kernels.channel_affine(y.reshape(-1), x.reshape(-1), scale.astype(x.dtype), shift.astype(x.dtype), N, C, L,
                            threads_for(N, C * L))
    if return_stats:
        return y, mean.astype(x.dtype), invstd.astype(x.dtype)
    return y


def batch_norm_backward(grad_y, x, weight, mean, invstd, training=True, *, grad_input=True, out=None,
                        accumulate=False):
    """Gradients of batch_norm: (grad_x or None, grad_weight, grad_bias), the last two None when
    weight is None. mean and invstd: what batch_norm(..., return_stats=True) returned.

    training=True: the batch statistics depended on x, and grad_x carries that:
        grad_x = weight * invstd * (grad_y - mean(grad_y) - xhat * mean(grad_y * xhat))
    training=False: they were constants: grad_x = grad_y * weight * invstd.
    grad_weight = sum(grad_y * xhat), grad_bias = sum(grad_y), xhat = (x - mean) * invstd.
    out=(grad_weight, grad_bias) and accumulate=True: as in conv2d_backward.
    """
    fn = "batch_norm_backward"
    x, N, C, L = _batch(fn, x)
    grad_y = _float_array(grad_y, "grad_y", fn, dtype=x.dtype)
    if grad_y.shape != x.shape:
        raise ValueError(f"{fn}(): grad_y must have x's shape {x.shape}, got {grad_y.shape}")
    training = _bool_flag(fn, "training", training)
    _bool_flag(fn, "grad_input", grad_input)
    weight = _channels(fn, "weight", weight, C, x.dtype)
    mean = _channels(fn, "mean", mean, C, x.dtype)
    invstd = _channels(fn, "invstd", invstd, C, x.dtype)
    if mean is None or invstd is None:
        raise ValueError(f"{fn}(): mean and invstd are required (batch_norm's return_stats=True gives them)")
    if weight is None and (out is not None or accumulate):
        raise ValueError(f"{fn}(): out and accumulate are for the parameters' gradients; weight is None")
    sum_dy, sum_dy_xmu = np.empty(C), np.empty(C)
    threads = threads_for(C, N * L)
    if weight is not None or (training and grad_input):
        _kernels.batchnorm_backward_sums(sum_dy, sum_dy_xmu, grad_y.reshape(-1), x.reshape(-1), mean, N, C, L,
                                         threads)
    istd = invstd.astype(np.float64)
    grads = (None, None)
    if weight is not None:
        grad_weight, grad_bias = _gradient_outputs(fn, out, accumulate, (C,), C, x.dtype, [x, grad_y, weight])
        if accumulate:
            grad_weight += (sum_dy_xmu * istd).astype(x.dtype)
            grad_bias += sum_dy.astype(x.dtype)
        else:
            grad_weight[...] = sum_dy_xmu * istd
            grad_bias[...] = sum_dy
        grads = (grad_weight, grad_bias)
    if not grad_input:
        return (None,) + grads
    k = istd if weight is None else istd * weight
    grad_x = np.empty_like(x)
    if not training:
        _kernels.channel_affine(grad_x.reshape(-1), grad_y.reshape(-1), k.astype(x.dtype), np.zeros(C, x.dtype),
                                N, C, L, threads_for(N, C * L))
        return (grad_x,) + grads
    # grad_x = grad_y * a + (x * b + d), with a = k, b = -k * invstd^2 * S2 / M,
    # d = k * (mean * invstd^2 * S2 - S1) / M  (S1 = sum_dy, S2 = sum_dy_xmu)
    M = N * L
    c = k * istd * istd * sum_dy_xmu / M
    b, d = -c, c * mean - k * sum_dy / M
    _kernels.channel_affine_grad(grad_x.reshape(-1), grad_y.reshape(-1), x.reshape(-1), k.astype(x.dtype),
                                 b.astype(x.dtype), d.astype(x.dtype), N, C, L, threads_for(N, C * L))
    return (grad_x,) + grads


# ---------------------------------------------------------------------------
# Linear layer and loss

def linear(x, weight, bias=None):
    """y = x @ weight.T + bias.

    Shape:
        x (N, in_features), weight (out_features, in_features), bias (out_features,)
        -> y (N, out_features).
    """
    fn = "linear"
    x = _float_array(x, "x", fn, ndim=2)
    weight = _float_array(weight, "weight", fn, ndim=2, dtype=x.dtype)
    (N, IN), OUT = x.shape, weight.shape[0]
    if weight.shape[1] != IN:
        raise ValueError(
            f"{fn}(): weight has in_features {weight.shape[1]} but x has {IN} features "
            f"(x {x.shape}, weight {weight.shape})"
        )
    if bias is None:
        bias = np.empty(0, x.dtype)
    else:
        bias = _float_array(bias, "bias", fn, ndim=1, dtype=x.dtype)
        if bias.shape[0] != OUT:
            raise ValueError(f"{fn}(): bias must have shape ({OUT},), got {bias.shape}")
    _check_blas_size(fn, N * IN, OUT * IN, N * OUT)
    y = np.empty((N, OUT), x.dtype)
    if y.size and IN == 0:
        # An empty sum; BLAS rejects the zero leading dimension (and prints to stderr).
        y[...] = bias if bias.size else 0
    elif y.size:
        _kernels.linear_forward(y.reshape(-1), x.reshape(-1), weight.reshape(-1), bias,
                                N, IN, OUT, threads_for(N * OUT, IN))
    return y


def linear_backward(grad_y, x, weight, *, grad_input=True, out=None, accumulate=False):
    """Gradients of linear: grad_x = grad_y @ weight (None when grad_input=False),
    grad_weight = grad_y.T @ x, grad_bias = grad_y summed over the batch.

    out=(grad_weight, grad_bias) and accumulate=True: as in conv2d_backward."""
    fn = "linear_backward"
    x = _float_array(x, "x", fn, ndim=2)
    weight = _float_array(weight, "weight", fn, ndim=2, dtype=x.dtype)
    grad_y = _float_array(grad_y, "grad_y", fn, ndim=2, dtype=x.dtype)
    (N, IN), OUT = x.shape, weight.shape[0]
    if weight.shape[1] != IN:
        raise ValueError(f"{fn}(): weight has in_features {weight.shape[1]} but x has {IN} features")
    if grad_y.shape != (N, OUT):
        raise ValueError(f"{fn}(): grad_y must have shape {(N, OUT)}, got {grad_y.shape}")
    _check_blas_size(fn, N * IN, OUT * IN, N * OUT)
    # The kernel writes (or adds into) every element of these.
    grad_weight, grad_bias = _gradient_outputs(fn, out, accumulate, (OUT, IN), OUT, x.dtype,
                                                [x, weight, grad_y])
    if not (N and IN and OUT):
        # grad_bias does not depend on in_features: it is grad_y summed even when IN == 0.
        if not accumulate:
            grad_weight.fill(0)
            grad_bias.fill(0)
        grad_bias += grad_y.sum(axis=0)
        return np.zeros((N, IN), x.dtype) if grad_input else None, grad_weight, grad_bias
    grad_x = np.empty((N, IN), x.dtype) if grad_input else None
    _kernels.linear_backward(grad_x.reshape(-1) if grad_input else np.empty(0, x.dtype),
                             grad_weight.reshape(-1), grad_bias, grad_y.reshape(-1),
                             x.reshape(-1), weight.reshape(-1), N, IN, OUT, grad_input, accumulate,
                             threads_for(N * OUT, IN))
    return grad_x, grad_weight, grad_bias


def softmax_cross_entropy(logits, target):
    """Mean softmax cross-entropy over the batch and its gradient.

    Shape:
        logits (N, K) float, target (N,) int class indices in [0, K)
        -> (loss: float, grad_logits (N, K) = (softmax(logits) - onehot(target)) / N).

    Stable for any finite logits: the row maximum is subtracted before exp.
    """
    fn = "softmax_cross_entropy"
    logits = _float_array(logits, "logits", fn, ndim=2)
    if not isinstance(target, np.ndarray) or target.dtype.kind not in "iu":
        got = target.dtype if isinstance(target, np.ndarray) else type(target).__name__
        raise TypeError(f"{fn}(): target must be an integer array of class indices, got {got}")
    N, K = logits.shape
    if N == 0:
        raise ValueError(f"{fn}(): logits is an empty batch; the mean loss is undefined")
    if target.shape != (N,):
        raise ValueError(f"{fn}(): target must have shape ({N},) to match logits {logits.shape}, got {target.shape}")
    if target.min() < 0 or target.max() >= K:
        raise ValueError(f"{fn}(): target must hold class indices in [0, {K}), got values in [{target.min()}, {target.max()}]")
    rows = np.arange(N)
    # Finite logits further apart than the dtype's range (3e38 - -3e38 in float32)
    # overflow to -inf here, which is the right limit (exp gives 0): no warning.
    with np.errstate(over="ignore"):
        shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1))
    loss = float(np.mean(log_norm - shifted[rows, target], dtype=np.float64))
    grad = np.exp(shifted - log_norm[:, None])
    grad[rows, target] -= 1
    grad /= N
    return loss, grad


# ---------------------------------------------------------------------------
# Optimizer update

def sgd_update(param, grad, momentum_buffer, lr, momentum=0.0, weight_decay=0.0, first_step=False):
    """One in-place SGD step on `param` (and `momentum_buffer`), PyTorch's semantics:

        g = grad + weight_decay * param
        momentum_buffer = g if first_step else momentum * momentum_buffer + g   (if given)
        param -= lr * (momentum_buffer or g)

    param, grad and momentum_buffer (or None: plain SGD) are C-contiguous arrays of
    one shape and float dtype; param and momentum_buffer are updated in place, in
    one pass over memory (cyconv.optim.SGD calls this once per parameter).
    """
    fn = "sgd_update"
    for name, a in (("param", param), ("momentum_buffer", momentum_buffer)):
        if a is not None and isinstance(a, np.ndarray) and not (a.flags.c_contiguous and a.flags.writeable):
            raise ValueError(f"{fn}(): {name} is updated in place and must be a writeable C-contiguous array")
    param = _float_array(param, "param", fn)
    grad = _float_array(grad, "grad", fn, dtype=param.dtype)
    if grad.shape != param.shape:
        raise ValueError(f"{fn}(): grad must have param's shape {param.shape}, got {grad.shape}")
    if momentum_buffer is None:
        buf = np.empty(0, param.dtype)
    else:
        buf = _float_array(momentum_buffer, "momentum_buffer", fn, dtype=param.dtype)
        if buf.shape != param.shape:
            raise ValueError(f"{fn}(): momentum_buffer must have param's shape {param.shape}, got {buf.shape}")
    # The kernel reads and writes them in one pass, as distinct arrays (C restrict): overlap
    # would make its result depend on the order of its loads and stores.
    named = [("param", param), ("grad", grad)] + ([("momentum_buffer", buf)] if momentum_buffer is not None else [])
    for i, (name_a, a) in enumerate(named):
        for name_b, b in named[i + 1:]:
            if np.may_share_memory(a, b):
                raise ValueError(f"{fn}(): {name_a} and {name_b} overlap in memory; they must be distinct arrays")
    _kernels.sgd_update(param.reshape(-1), buf.reshape(-1), grad.reshape(-1), float(lr), float(momentum),
                        float(weight_decay), bool(first_step), threads_for(param.size, 4))


def adam_update(param, grad, exp_avg, exp_avg_sq, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                decoupled=False):
    """One in-place Adam step (decoupled=False: torch.optim.Adam, weight decay as an L2 term in the
    gradient) or AdamW step (decoupled=True: torch.optim.AdamW, the parameter decayed by
    lr * weight_decay first), without amsgrad. step is the 1-based count of this step (for the
    bias corrections):

        g = grad (+ weight_decay * param)               | param *= 1 - lr * weight_decay   (AdamW)
        exp_avg    = beta1 * exp_avg + (1 - beta1) * g
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g * g
        param -= lr / (1 - beta1**step) * exp_avg / (sqrt(exp_avg_sq) / sqrt(1 - beta2**step) + eps)

    param, exp_avg and exp_avg_sq are updated in place, in one pass over memory.
    """
    fn = "adam_update"
    named = []
    for name, a in (("param", param), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if isinstance(a, np.ndarray) and not (a.flags.c_contiguous and a.flags.writeable):
            raise ValueError(f"{fn}(): {name} is updated in place and must be a writeable C-contiguous array")
    param = _float_array(param, "param", fn)
    for name, a in (("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        a = _float_array(a, name, fn, dtype=param.dtype)
        if a.shape != param.shape:
            raise ValueError(f"{fn}(): {name} must have param's shape {param.shape}, got {a.shape}")
        named.append((name, a))
    (_, grad), (_, exp_avg), (_, exp_avg_sq) = named
    named.insert(0, ("param", param))
    for i, (name_a, a) in enumerate(named):
        for name_b, b in named[i + 1:]:
            if np.may_share_memory(a, b):
                raise ValueError(f"{fn}(): {name_a} and {name_b} overlap in memory; they must be distinct arrays")
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"{fn}(): step must be an int >= 1 (the count of this step), got {step!r}")
    beta1, beta2 = _betas(betas, fn)
    bias_correction1 = 1 - beta1 ** int(step)
    sqrt_bc2 = math.sqrt(1 - beta2 ** int(step))
    _kernels.adam_update(param.reshape(-1), exp_avg.reshape(-1), exp_avg_sq.reshape(-1), grad.reshape(-1),
                         float(lr), beta1, beta2, float(eps), float(weight_decay), _bool_flag(fn, "decoupled",
                         decoupled), float(lr) / bias_correction1, sqrt_bc2, threads_for(param.size, 16))


def _betas(betas, fn):
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2
            and all(isinstance(b, (int, float, np.integer, np.floating)) and not isinstance(b, bool)
                    and 0 <= b < 1 for b in betas)):
        raise ValueError(f"{fn}(): betas must be two numbers in [0, 1), got {betas!r}")
    return float(betas[0]), float(betas[1])
