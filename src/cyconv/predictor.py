"""cyconv.compile: a model's inference pass as one compiled call.

    predictor = cyconv.compile(model, batch_size=64)
    logits = predictor(x)                  # equals model.eval()(x), to float rounding

`compile` copies the model's parameters (changing the model afterwards does not change the
predictor: compile it again), packs the float convolutions' weights once for the GEMM of the ISA
tier in use, and plans the layers as ops of one compiled call (`cyconv._kernels.predict`): no Python
between layers, every intermediate buffer allocated once and reused, and the threads woken once per
call, splitting what the batch makes worth splitting (images; each image's columns and channels
when there are fewer images than threads; the linear layers' output columns; planes). Runs of
Conv2d -> activation -> pooling, activation -> MaxPool2d and Linear -> activation run as one op.
A BatchNorm (eval mode: a fixed scale and shift per channel) right after a Conv2d or Linear is
folded into its weights and bias; anywhere else it is a per-channel affine op (with the activation
after it). Dropout does nothing at inference and is left out.

The plan is made for the first input shape a predictor sees (or `input_shape`), and buffers grow
to the largest batch seen (`batch_size` sizes them up front). A predictor is safe to call from
several threads (calls take turns). Inference only: eval semantics, no gradients.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from . import _kernels, nn
from ._isa import TIERS, get_isa
from ._threads import MIN_WORK_PER_THREAD, get_num_threads, threads_for

__all__ = ["compile", "Predictor"]

_F = _kernels.op_fields()
_ACTIVATIONS = {nn.ReLU: _F["ACT_RELU"], nn.Sigmoid: _F["ACT_SIGMOID"], nn.Tanh: _F["ACT_TANH"]}
_POOLS = {nn.MaxPool2d: _F["POOL_MAX"], nn.AvgPool2d: _F["POOL_AVG"]}
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
# Layers that do nothing at inference (Dropout, and Identity when cyconv has it) are listed here.
_IDENTITY_AT_INFERENCE = tuple(getattr(nn, name) for name in ("Dropout", "Identity") if hasattr(nn, name))


def compile(model, *, batch_size=None, input_shape=None):  # noqa: A001 (cyconv.compile, as torch.compile)
    """A Predictor that runs `model`'s inference pass as one compiled call (see the module docstring).

    model: a Sequential (nested ones are flattened) or a single layer of cyconv.nn.
    batch_size: size the buffers for batches of up to this many images now (default: on first use).
    input_shape: one image's shape, e.g. (1, 28, 28), to plan now (default: from the first input).
    """
    return Predictor(model, batch_size=batch_size, input_shape=input_shape)


class Predictor:
    """A compiled inference pass: `predictor(x)` -> the model's output for the batch x.

    Attributes: dtype (of the parameters, and of the inputs it takes), isa (the tier its weights
    were packed for), input_shape (one image's, once planned), batch_size (what the buffers hold).
    """

    def __init__(self, model, *, batch_size=None, input_shape=None):
        layers = _flatten(model)
        params = [p for layer in layers for p in layer.parameters()]
        dtypes = {p.data.dtype for p in params}
        if len(dtypes) > 1:
            raise TypeError(f"compile(): the model mixes parameter dtypes {sorted(map(str, dtypes))}")
        self.dtype = dtypes.pop() if dtypes else np.dtype(np.float32)
        for layer in layers:
            if not isinstance(layer, _COMPILABLE):
                raise TypeError(f"compile(): no compiled form for {type(layer).__name__}; compilable layers: "
                                f"{', '.join(sorted(cls.__name__ for cls in _COMPILABLE))}")
        # Snapshots: the predictor keeps nothing mutable of the model.
        self._layers = _fold_batch_norms([_Snapshot(layer) for layer in layers])
        self.isa = get_isa()
        self.input_shape = None
        self.batch_size = 0
        self._lock = threading.Lock()
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"compile(): batch_size must be a positive int, got {batch_size!r}")
        if input_shape is not None:
            self._plan(_shape(input_shape))
            if batch_size is not None:
                self._reserve(batch_size)
        self._wanted_batch = batch_size

    def __call__(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"Predictor: x must be a numpy.ndarray, got {type(x).__name__}")
        if x.dtype != self.dtype:
            raise TypeError(f"Predictor: x has dtype {x.dtype}, the model's parameters {self.dtype} "
                            "(cyconv never converts dtypes silently)")
        if x.ndim < 2:
            raise ValueError(f"Predictor: x must be a batch (N, ...) of inputs, got shape {x.shape}")
        with self._lock:
            if self.input_shape is None:
                self._plan(tuple(int(s) for s in x.shape[1:]))
            if x.shape[1:] != self.input_shape:
                raise ValueError(f"Predictor: x must have shape (N, {', '.join(map(str, self.input_shape))}) "
                                 f"as planned, got {x.shape}")
            n = x.shape[0]
            out = np.empty((n,) + self.output_shape, self.dtype)
            if n == 0:
                return out
            if not self._ops.shape[0]:  # only Flatten and friends
                out[...] = x.reshape(out.shape)
                return out
            self._reserve(max(n, self._wanted_batch or 0))
            x = np.ascontiguousarray(x)
            nt = threads_for(max(1, n * self._macs // MIN_WORK_PER_THREAD), MIN_WORK_PER_THREAD)
            if nt * self._per_thread > self._scratch.size:
                self._scratch = np.empty(get_num_threads() * self._per_thread, self.dtype)
            _kernels.predict(out.reshape(-1), x.reshape(-1), self._ops, self._params, self._packed,
                             TIERS.index(self.isa), self._act[0], self._act[1], self._scratch,
                             self._per_thread, n, nt)
            return out

    def __repr__(self):
        shape = "unplanned" if self.input_shape is None else f"input {self.input_shape} -> {self.output_shape}"
        return (f"Predictor({len(self._layers)} layers, {shape}, dtype={self.dtype}, isa={self.isa!r}, "
                f"batch_size={self.batch_size})")

    # -- planning -----------------------------------------------------------

    def _plan(self, input_shape):
        rows, params, packed = [], [], []
        shape, macs, per_thread = input_shape, 0, 0
        layers, i = self._layers, 0
        use_packed = self.dtype == np.float32 and _kernels.own_gemm_enabled()
        isa = TIERS.index(self.isa)

        def add(store, array):
            start = sum(a.size for a in store)
            store.append(np.ascontiguousarray(array, dtype=np.float32 if store is packed else self.dtype)
                         .reshape(-1))
            return start

        while i < len(layers):
            layer, kind = layers[i], layers[i].cls
            row = np.zeros(_F["count"], np.intp)
            row[_F["weight"]] = row[_F["bias"]] = row[_F["packed"]] = -1
            in_shape = shape
            if kind is nn.Conv2d:
                C, H, W = _image(shape, layer, i)
                if C != layer.in_channels:
                    raise ValueError(f"compile(): layer {i} (Conv2d) expects {layer.in_channels} channels, "
                                     f"the input has {C} ({shape})")
                (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
                Ho, Wo = _window_out(H, W, (kh, kw), (sh, sw), (ph, pw), layer.name, i)
                O, K = layer.out_channels, C * kh * kw
                row[[_F[k] for k in ("kind", "C", "H", "W", "O", "kh", "kw", "sh", "sw", "ph", "pw", "Ho", "Wo")]] = \
                    (_F["OP_CONV"], C, H, W, O, kh, kw, sh, sw, ph, pw, Ho, Wo)
                row[_F["weight"]] = add(params, layer.weight)
                if layer.bias is not None:
                    row[_F["bias"]] = add(params, layer.bias)
                if use_packed:
                    buffer = np.empty(_kernels.packed_size(O, K, isa), np.float32)
                    _kernels.pack_weights(buffer, layer.weight.reshape(-1).astype(np.float32), O, K, isa)
                    row[_F["packed"]] = add(packed, buffer)
                shape, macs = (O, Ho, Wo), macs + O * Ho * Wo * K
                i = self._fuse_act(row, i + 1)
                i = self._fuse_pool(row, i, shape)
                if row[_F["pool"]]:
                    shape = (O, row[_F["pHo"]], row[_F["pWo"]])
                per_thread = max(per_thread, (K + O) * Ho * Wo)
            elif kind is nn.Linear:
                if len(shape) != 1 or shape[0] != layer.in_features:
                    raise ValueError(f"compile(): layer {i} (Linear) expects {layer.in_features} features, the "
                                     f"input is {shape} (a Flatten missing?)")
                row[[_F["kind"], _F["C"], _F["O"]]] = (_F["OP_LINEAR"], layer.in_features, layer.out_features)
                row[_F["weight"]] = add(params, layer.weight)
                if layer.bias is not None:
                    row[_F["bias"]] = add(params, layer.bias)
                shape, macs = (layer.out_features,), macs + layer.in_features * layer.out_features
                i = self._fuse_act(row, i + 1)
            elif kind in _BATCH_NORMS:  # one that could not be folded into a convolution or linear layer
                C, L = shape[0], int(math.prod(shape[1:]))
                if C != layer.num_features or len(shape) not in ((3,) if kind is nn.BatchNorm2d else (1, 2)):
                    raise ValueError(f"compile(): layer {i} ({layer.name}) expects {layer.num_features} channels, "
                                     f"the input is {shape} per image")
                row[[_F["kind"], _F["C"], _F["H"], _F["W"]]] = (_F["OP_AFFINE"], C, L, 1)
                row[_F["weight"]], row[_F["bias"]] = add(params, layer.scale), add(params, layer.shift)
                i = self._fuse_act(row, i + 1)
            elif kind in _ACTIVATIONS:
                row[_F["act"]] = _ACTIVATIONS[kind]
                nxt = layers[i + 1].cls if i + 1 < len(layers) else None
                if kind is nn.ReLU and nxt is nn.MaxPool2d and len(shape) == 3:  # max_pool2d(relu(x)) in one pass
                    self._pool_row(row, layers[i + 1], shape, i + 1)
                    shape, i = (shape[0], row[_F["pHo"]], row[_F["pWo"]]), i + 2
                else:
                    row[_F["kind"]], i = _F["OP_ACT"], i + 1
            elif kind in _POOLS:
                self._pool_row(row, layer, _image(shape, layer, i), i)
                shape, i = (shape[0], row[_F["pHo"]], row[_F["pWo"]]), i + 1
            elif kind in (nn.Softmax, nn.LogSoftmax):
                if len(shape) != 1:
                    raise ValueError(f"compile(): layer {i} ({kind.__name__}) needs (N, K) scores, the input is "
                                     f"{shape} per image")
                row[_F["kind"]] = _F["OP_SOFTMAX"]
                row[_F["act"]] = _F["ACT_LOG"] if kind is nn.LogSoftmax else _F["ACT_NONE"]
                i += 1
            elif kind is nn.Flatten:
                shape, i = (int(math.prod(shape)),), i + 1
                continue
            else:  # identity at inference
                i += 1
                continue
            shape = tuple(int(s) for s in shape)
            row[_F["In"]], row[_F["Out"]] = math.prod(in_shape), math.prod(shape)
            rows.append(row)
        self._ops = np.array(rows, np.intp).reshape(-1, _F["count"])
        self._params = np.concatenate(params) if params else np.zeros(1, self.dtype)
        self._packed = np.concatenate(packed) if packed else np.zeros(1, np.float32)
        self._per_thread, self._macs = max(per_thread, 1), max(macs, 1)
        self.input_shape, self.output_shape = input_shape, tuple(int(s) for s in shape)
        self._largest = max([int(r[_F["Out"]]) for r in rows[:-1]], default=1)
        self._act = (np.empty(0, self.dtype), np.empty(0, self.dtype))
        self._scratch = np.empty(0, self.dtype)
        self.batch_size = 0

    def _fuse_act(self, row, i):
        """An activation right after a convolution or linear layer joins its op."""
        if i < len(self._layers) and self._layers[i].cls in _ACTIVATIONS:
            row[_F["act"]] = _ACTIVATIONS[self._layers[i].cls]
            return i + 1
        return i

    def _fuse_pool(self, row, i, shape):
        """A pooling right after a convolution (and its activation) joins its op."""
        if i < len(self._layers) and self._layers[i].cls in _POOLS:
            self._pool_row(row, self._layers[i], shape, i, after_conv=True)
            return i + 1
        return i

    def _pool_row(self, row, layer, shape, i, *, after_conv=False):
        """The pooling's columns of row: its own op (over shape), or the end of a convolution's."""
        C, H, W = shape
        Ho, Wo = _window_out(H, W, layer.kernel_size, layer.stride, layer.padding, layer.name, i)
        if not after_conv:
            row[[_F["kind"], _F["C"], _F["H"], _F["W"]]] = (_F["OP_POOL"], C, H, W)
        row[_F["pool"]] = _POOLS[layer.cls]
        row[[_F[k] for k in ("pkh", "pkw", "psh", "psw", "pph", "ppw", "pHo", "pWo")]] = \
            (*layer.kernel_size, *layer.stride, *layer.padding, Ho, Wo)
        row[_F["pincl"]] = int(getattr(layer, "count_include_pad", True))

    def _reserve(self, n):
        """Buffers for batches of up to n images."""
        if n > self.batch_size:
            self._act = (np.empty(n * self._largest, self.dtype), np.empty(n * self._largest, self.dtype))
            self._scratch = np.empty(get_num_threads() * self._per_thread, self.dtype)
            self.batch_size = n


class _Snapshot:
    """What a predictor keeps of a layer: its class, hyper-parameters and a copy of its parameters
    (a BatchNorm's as the scale and shift per channel it applies in eval mode)."""

    def __init__(self, layer):
        self.cls, self.name = type(layer), type(layer).__name__
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "in_features",
                     "out_features", "count_include_pad", "num_features"):
            if hasattr(layer, attr):
                setattr(self, attr, getattr(layer, attr))
        self.weight = layer.weight.data.copy() if getattr(layer, "weight", None) is not None else None
        self.bias = layer.bias.data.copy() if getattr(layer, "bias", None) is not None else None
        if isinstance(layer, _BATCH_NORMS):
            if not layer.track_running_stats:
                raise TypeError(f"compile(): {self.name} without running statistics normalises with each batch's "
                                "own; a predictor needs the fixed ones of eval mode")
            invstd = 1 / np.sqrt(layer.running_var.astype(np.float64) + layer.eps)
            self.scale = invstd if self.weight is None else invstd * self.weight
            self.shift = -layer.running_mean * self.scale + (0 if self.bias is None else self.bias)


def _fold_batch_norms(layers):
    """The layers with each BatchNorm that directly follows a Conv2d or Linear folded into it:
    weight * scale per output channel, bias * scale + shift (in float64, then the model's dtype)."""
    folded = []
    for layer in layers:
        previous = folded[-1] if folded else None
        if layer.cls in _BATCH_NORMS and previous is not None and previous.cls in (nn.Conv2d, nn.Linear):
            dtype = previous.weight.dtype
            scale = layer.scale.reshape((-1,) + (1,) * (previous.weight.ndim - 1))
            previous.weight = (previous.weight * scale).astype(dtype)
            bias = 0 if previous.bias is None else previous.bias.astype(np.float64)
            previous.bias = (bias * layer.scale + layer.shift).astype(dtype)
            continue
        folded.append(layer)
    return folded


_COMPILABLE = (nn.Conv2d, nn.Linear, nn.Flatten, nn.Softmax, nn.LogSoftmax, *_ACTIVATIONS, *_POOLS, *_BATCH_NORMS,
               *_IDENTITY_AT_INFERENCE)


def _flatten(model):
    if isinstance(model, nn.Sequential):
        return [layer for child in model for layer in _flatten(child)]
    if not isinstance(model, nn.Module):
        raise TypeError(f"compile(): model must be a cyconv.nn module, got {type(model).__name__}")
    return [model]


def _shape(input_shape):
    if not (isinstance(input_shape, (tuple, list)) and input_shape
            and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in input_shape)):
        raise ValueError(f"compile(): input_shape must be one image's shape, positive ints, got {input_shape!r}")
    return tuple(int(s) for s in input_shape)


def _image(shape, layer, i):
    if len(shape) != 3:
        raise ValueError(f"compile(): layer {i} ({layer.name}) needs (C, H, W) images, the input is {shape} "
                         "per image")
    return shape


def _window_out(H, W, kernel, stride, padding, name, i):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    if H + 2 * ph < kh or W + 2 * pw < kw:
        raise ValueError(f"compile(): layer {i} ({name}): kernel {kernel} is larger than its padded input "
                         f"{(H + 2 * ph, W + 2 * pw)}")
    return (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
