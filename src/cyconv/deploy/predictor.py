"""cyconv.compile: a model's inference pass as one compiled call.

    predictor = cyconv.compile(model, batch_size=64)
    logits = predictor(x)                  # equals model.eval()(x), to float rounding

`compile` copies the model's parameters (changing the model afterwards does not change the predictor:
compile it again), packs the float convolutions' weights once for the GEMM of the ISA tier in use,
and plans the model's graph (cyconv.graph: the same description training runs) as ops of one compiled
call (`cyconv._kernels.predict`): no Python between layers, every intermediate value in a buffer
allocated once and reused once the value is dead, and the threads woken once per call, splitting
what the batch makes worth splitting (images; each image's columns and channels when there are fewer
images than threads; the linear layers' output columns; planes). The graph is rewritten first, each
rewrite written once in cyconv.graph: every eval-mode BatchNorm right after a Conv2d or Linear is
folded into its weights and bias (anywhere else it is a per-channel affine op), and the fusions run
Conv2d -> activation -> pooling, Conv2d -> activation, ReLU -> MaxPool2d, Linear -> activation,
BatchNorm -> activation and Add -> activation as one op each. Flatten, Identity and Dropout (nothing
at inference) are no op at all: their output is their input's buffer.

The plan is made for the first input shape a predictor sees (or `input_shape`), and buffers grow
to the largest batch seen (`batch_size` sizes them up front). A predictor is safe to call from
several threads (calls take turns). Inference only: eval semantics, no gradients.
"""

from __future__ import annotations

import copy
import math
import threading

import numpy as np

from ..kernels import _kernels
from ..layers import graph, nn
from ..layers import functional as F
from ..kernels.isa import TIERS, get_isa
from ..kernels.threads import MIN_WORK_PER_THREAD, threads_for

__all__ = ["compile", "Predictor"]

_F = _kernels.op_fields()
_ACTIVATIONS = {nn.ReLU: _F["ACT_RELU"], nn.Sigmoid: _F["ACT_SIGMOID"], nn.Tanh: _F["ACT_TANH"],
                nn.Hardtanh: _F["ACT_HARDTANH"], nn.ReLU6: _F["ACT_HARDTANH"]}
_POOLS = {nn.MaxPool2d: _F["POOL_MAX"], nn.AvgPool2d: _F["POOL_AVG"]}
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_ALIASES = (nn.Flatten, nn.Identity, nn.Dropout)  # no op: the value is the input's buffer
_COMPILABLE = (nn.Conv2d, nn.Linear, nn.Softmax, nn.LogSoftmax, nn.Add, nn.Concat, nn.AdaptiveAvgPool2d,
               *_ACTIVATIONS, *_POOLS, *_BATCH_NORMS, *_ALIASES)


def compile(model, *, batch_size=None, input_shape=None):  # noqa: A001 (cyconv.compile, as torch.compile)
    """A Predictor that runs `model`'s inference pass as one compiled call (see the module docstring).

    model: any cyconv.nn model (a Sequential, an nn.Graph, a composite Module) or a single layer.
    batch_size: size the buffers for batches of up to this many images now (default: on first use).
    input_shape: one image's shape, e.g. (1, 28, 28), to plan now (default: from the first input).
    """
    return Predictor(model, batch_size=batch_size, input_shape=input_shape)


class Predictor:
    """A compiled inference pass: `predictor(x)` -> the model's output for the batch x.

    Attributes: dtype (of the parameters, and of the inputs it takes), isa (the tier its weights
    were packed for), input_shape (one image's, once planned), batch_size (what the buffers hold),
    algorithms ([(layer, the algorithm its convolution runs)], once planned). A layer whose algorithm
    is "measure" (or any "auto" one under CYCONV_CONV_ALGO=measure / set_conv_algorithm("measure"))
    gets the fastest of its candidates compiled alone, timed when the plan is made (at batch_size
    images, or the first batch's) and kept for the process (functional.measured_conv_algorithms()).
    """

    def __init__(self, model, *, batch_size=None, input_shape=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"compile(): model must be a cyconv.nn module, got {type(model).__name__}")
        dtypes = {p.data.dtype for p in model.parameters()}
        if len(dtypes) > 1:
            raise TypeError(f"compile(): the model mixes parameter dtypes {sorted(map(str, dtypes))}")
        self.dtype = dtypes.pop() if dtypes else np.dtype(np.float32)
        tr = graph.trace(model)
        for node in tr.nodes:
            if type(node.module) not in _COMPILABLE:
                raise TypeError(f"compile(): no compiled form for {type(node.module).__name__} (layer {node.name}); "
                                f"compilable layers: {', '.join(sorted(c.__name__ for c in _COMPILABLE))}")
            if isinstance(node.module, _BATCH_NORMS) and not node.module.track_running_stats:
                raise TypeError(f"compile(): {type(node.module).__name__} without running statistics normalises "
                                "with each batch's own; a predictor needs the fixed ones of eval mode")
        # Snapshots: the predictor keeps nothing mutable of the model.
        self._trace = graph.fold_batch_norms(graph.Trace([graph.Node(n.name, _snapshot(n.module), n.inputs)
                                                          for n in tr.nodes], tr.output))
        self._steps = graph.fuse(self._trace, training=False)
        self.isa = get_isa()
        self.input_shape = None
        self.batch_size = 0
        self._lock = threading.Lock()
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"compile(): batch_size must be a positive int, got {batch_size!r}")
        self._wanted_batch = batch_size
        if input_shape is not None:
            self._plan(_shape(input_shape), batch_size or 1)
            if batch_size is not None:
                self._reserve(batch_size)

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
                self._plan(tuple(int(s) for s in x.shape[1:]), max(x.shape[0], self._wanted_batch or 1))
            if x.shape[1:] != self.input_shape:
                raise ValueError(f"Predictor: x must have shape (N, {', '.join(map(str, self.input_shape))}) "
                                 f"as planned, got {x.shape}")
            n = x.shape[0]
            out = np.empty((n,) + self.output_shape, self.dtype)
            if n == 0:
                return out
            if self._output_is_input:  # nothing but Flatten and friends on the way out
                out[...] = x.reshape(out.shape)
                return out
            self._reserve(max(n, self._wanted_batch or 0))
            x = np.ascontiguousarray(x)
            nt = self._threads(n)
            if nt * self._per_thread > self._scratch.size:  # more threads than any call before
                self._scratch = np.empty(nt * self._per_thread, self.dtype)
            _kernels.predict(out.reshape(-1), x.reshape(-1), self._ops, self._params, self._packed,
                             TIERS.index(self.isa), self._arena, n * self._largest, self._scratch,
                             self._per_thread, self._xpack, n, nt)
            return out

    def __repr__(self):
        shape = "unplanned" if self.input_shape is None else f"input {self.input_shape} -> {self.output_shape}"
        return (f"Predictor({len(self._trace.nodes)} layers, {shape}, dtype={self.dtype}, isa={self.isa!r}, "
                f"batch_size={self.batch_size})")

    # -- planning -----------------------------------------------------------

    def _plan(self, input_shape, batch):
        """Plan for images of input_shape; batch: the batch "measure" times the convolutions at."""
        try:
            shapes = graph.shapes(self._trace, input_shape)
        except ValueError as e:
            raise ValueError(f"compile(): {e}") from None
        rows, params, packed = [], [], []
        macs, per_thread = 0, 0
        use_packed = self.dtype == np.float32 and _kernels.own_gemm_enabled()
        isa = TIERS.index(self.isa)

        def add(store, array):
            start = sum(a.size for a in store)
            store.append(np.ascontiguousarray(array, dtype=np.float32 if store is packed else self.dtype)
                         .reshape(-1))
            return start

        owners = []  # per row: (the op's name, its layers); `name` and `layers` are the loop's below

        def new_row(kind, src, dst, in_shape, out_shape):
            owners.append((name, layers))
            row = np.zeros(_F["count"], np.intp)
            row[_F["weight"]] = row[_F["bias"]] = row[_F["packed"]] = -1
            row[_F["kind"]], row[_F["src"]], row[_F["dst"]] = _F[kind], src, dst
            row[_F["src2"]] = _F["LOC_X"]  # read by OP_ADD only
            row[_F["In"]], row[_F["Out"]] = math.prod(in_shape), math.prod(out_shape)
            rows.append(row)
            return row

        self.algorithms = []  # (layer, the algorithm its convolution runs)
        self._linear_in = 0   # the widest input of a linear layer on the own GEMM (its packed batch: xpack)
        alias = {0: 0}  # value -> the value whose buffer holds it
        ops = []        # (kind, layers, name, input values, output value)
        for out, step in self._steps:
            layers = step.layers if isinstance(step, graph.Fused) else (step.module,)
            inputs = tuple(alias[v] for v in step.inputs)
            if isinstance(step, graph.Node) and isinstance(step.module, _ALIASES):
                alias[out] = inputs[0]
                continue
            alias[out] = out
            ops.append((layers, step.name, inputs, out))

        # Where each value lives: the output's buffer for the model's output, else a slot of the arena
        # taken when the value is made and given back after its last reader.
        output = alias[self._trace.output]
        last_read = {}
        for k, (_, _, inputs, _) in enumerate(ops):
            for v in inputs:
                last_read[v] = k
        where, free, nslots, largest = {0: _F["LOC_X"]}, [], 0, 1
        for k, (layers, name, inputs, out) in enumerate(ops):
            if out == output:
                where[out] = _F["LOC_OUT"]
            else:
                if not free:
                    free.append(nslots)
                    nslots += 1
                where[out] = free.pop()
                largest = max(largest, math.prod(shapes[out]))
            for v in set(inputs):
                if last_read[v] == k and where[v] >= 0 and v != out:
                    free.append(where[v])

        for layers, name, inputs, out in ops:
            first, kind = layers[0], type(layers[0])
            in_shape, out_shape = shapes[inputs[0]], shapes[out]
            src, dst = where[inputs[0]], where[out]
            act_layer = next((m for m in layers[1:] if type(m) in _ACTIVATIONS), None)
            pool = next((m for m in layers[1:] if type(m) in _POOLS), None)

            def activation(row, layer=act_layer):
                """The activation's columns of row (its bounds among the parameters for Hardtanh)."""
                if layer is not None:
                    row[_F["act"]] = _ACTIVATIONS[type(layer)]
                    if isinstance(layer, nn.Hardtanh):
                        row[_F["actp"]] = add(params, np.array([layer.min_val, layer.max_val]))

            if kind is nn.Conv2d:
                row = new_row("OP_CONV", src, dst, in_shape, out_shape)
                C, H, W = in_shape
                (kh, kw), (sh, sw), (ph, pw), (dh, dw) = first.kernel_size, first.stride, first.padding, first.dilation
                O, G = first.out_channels, first.groups
                Ho, Wo = first.output_shape(in_shape)[1:]
                row[[_F[k] for k in ("C", "H", "W", "O", "kh", "kw", "sh", "sw", "ph", "pw", "Ho", "Wo", "G", "dh",
                                     "dw")]] = (C, H, W, O, kh, kw, sh, sw, ph, pw, Ho, Wo, G, dh, dw)
                activation(row)
                row[_F["weight"]] = add(params, first.weight.data)
                if first.bias is not None:
                    row[_F["bias"]] = add(params, first.bias.data)
                depthwise = G == C and (G, dh, dw) != (1, 1, 1)  # the kernels functional.conv2d picks
                algorithm = F.resolve_conv_algorithm(f"compile(): layer {name}", first.algorithm, C, O, H, W,
                                                     (kh, kw), (sh, sw), (ph, pw), (dh, dw), G, None, self.dtype,
                                                     measure_batch=batch)
                self.algorithms.append((name, algorithm))
                if algorithm.startswith("winograd"):
                    # the filters transformed once (float32: packed for the tier's GEMM, which Winograd's
                    # multiply stage runs on whatever the convolutions' GEMM path)
                    m, is_float = int(algorithm[len("winograd"):]), self.dtype == np.float32
                    u = np.empty(_kernels.winograd_filters_size(O, C, m, kh, isa, is_float), self.dtype)
                    _kernels.winograd_filters(u, first.weight.data.reshape(-1), O, C, m, kh, isa)
                    row[_F["wino"]] = m
                    row[_F["u"]] = add(packed if is_float else params, u)
                    size, tmp = _kernels.winograd_sizes(C, O, Ho, Wo, m, kh)
                    per_thread = max(per_thread, size + tmp + O * Ho * Wo)
                    macs += O * Ho * Wo * C * kh * kw
                    if pool is not None:
                        self._pool_columns(row, pool, (O, Ho, Wo))
                    continue
                Og, Kg = O // G, C // G * kh * kw  # one group's GEMM: (Og, Kg) @ (Kg, L)
                direct = (algorithm == "direct" and self.dtype == np.float32 and G == 1
                          and (kh, kw, sh, sw, ph, pw) != (1, 1, 1, 1, 0, 0))  # (that one: conv_image's own)
                if direct:  # csrc/direct.c, from the weights packed for the own GEMM whatever path the rest takes
                    row[_F["direct"]] = 1
                    use_packed_here = True
                    per_thread = max(per_thread, _kernels.conv2d_direct_scratch(C, kh, kw, Ho, Wo) + O * Ho * Wo)
                else:
                    use_packed_here = use_packed
                if use_packed_here and not depthwise:
                    stride = _kernels.packed_size(Og, Kg, isa)
                    buffer = np.empty(G * stride, np.float32)
                    weight = first.weight.data.reshape(G, Og * Kg).astype(np.float32)
                    for gi in range(G):
                        _kernels.pack_weights(buffer[gi * stride:(gi + 1) * stride], weight[gi], Og, Kg, isa)
                    row[_F["packed"]], row[_F["pstride"]] = add(packed, buffer), stride
                if pool is not None:
                    self._pool_columns(row, pool, (O, Ho, Wo))
                macs += O * Ho * Wo * Kg
                # scratch per thread: a pooled plane (depthwise), or one group's columns and the image's output
                per_thread = max(per_thread, Ho * Wo if depthwise else (Kg + O) * Ho * Wo)
            elif kind is nn.Linear:
                row = new_row("OP_LINEAR", src, dst, in_shape, out_shape)
                row[[_F["C"], _F["O"]]] = (first.in_features, first.out_features)
                activation(row)
                if use_packed:  # on the own GEMM, from weight.T: an image's outputs whatever its batch
                    row[_F["wt"]] = 1
                    row[_F["weight"]] = add(params, first.weight.data.T)
                    self._linear_in = max(self._linear_in, first.in_features)
                else:
                    row[_F["weight"]] = add(params, first.weight.data)
                if first.bias is not None:
                    row[_F["bias"]] = add(params, first.bias.data)
                macs += first.in_features * first.out_features
            elif kind in _BATCH_NORMS:  # one that could not be folded into a convolution or linear layer
                row = new_row("OP_AFFINE", src, dst, in_shape, out_shape)
                scale, shift = graph.batch_norm_scale_shift(first)
                row[[_F["C"], _F["H"], _F["W"]]] = (in_shape[0], math.prod(in_shape[1:]), 1)
                activation(row)
                row[_F["weight"]], row[_F["bias"]] = add(params, scale), add(params, shift)
            elif kind in _POOLS or (kind is nn.ReLU and pool is not None):  # a pooling alone, or ReLU -> MaxPool2d
                row = new_row("OP_POOL", src, dst, in_shape, out_shape)
                row[[_F["C"], _F["H"], _F["W"]]] = in_shape
                row[_F["act"]] = _F["ACT_RELU"] if kind is nn.ReLU else _F["ACT_NONE"]
                self._pool_columns(row, first if pool is None else pool, in_shape)
            elif kind is nn.AdaptiveAvgPool2d:
                row = new_row("OP_POOL", src, dst, in_shape, out_shape)
                row[[_F["C"], _F["H"], _F["W"], _F["pHo"], _F["pWo"]]] = (*in_shape, *out_shape[1:])
                row[_F["pool"]] = _F["POOL_ADAPTIVE"]
            elif kind in _ACTIVATIONS:
                row = new_row("OP_ACT", src, dst, in_shape, out_shape)
                activation(row, first)
            elif kind in (nn.Softmax, nn.LogSoftmax):
                row = new_row("OP_SOFTMAX", src, dst, in_shape, out_shape)
                row[_F["act"]] = _F["ACT_LOG"] if kind is nn.LogSoftmax else _F["ACT_NONE"]
            elif kind is nn.Add:  # a + b (+ c ...) summed into the output, the activation with the last one
                acc = src
                for i, v in enumerate(inputs[1:], 1):
                    row = new_row("OP_ADD", acc, dst, in_shape, out_shape)
                    row[_F["src2"]] = where[v]
                    if i == len(inputs) - 1:
                        activation(row)
                    acc = dst
            elif kind is nn.Concat:  # each input copied into its channels of the output
                offset = 0
                for v in inputs:
                    row = new_row("OP_COPY", where[v], dst, shapes[v], shapes[v])
                    row[_F["coff"]], row[_F["ctot"]] = offset, math.prod(out_shape)
                    offset += math.prod(shapes[v])
            else:  # pragma: no cover (_check_compilable refused it)
                raise TypeError(f"compile(): no compiled form for {kind.__name__} (layer {name})")

        self._ops = np.array(rows, np.intp).reshape(-1, _F["count"])
        self._owners = owners
        self._params = np.concatenate(params) if params else np.zeros(1, self.dtype)
        self._packed = np.concatenate(packed) if packed else np.zeros(1, np.float32)
        self._per_thread, self._macs = max(per_thread, 1), max(macs, 1)
        self.input_shape, self.output_shape = input_shape, shapes[self._trace.output]
        self._output_is_input = output == 0
        self._nslots, self._largest = nslots, largest
        self._arena = np.empty(0, self.dtype)
        self._xpack = np.empty(0, self.dtype)
        self._scratch = np.empty(0, self.dtype)
        self.batch_size = 0

    def profile(self, x, repeats=10, statistic="median"):
        """Where a call's time goes: [(op name, its layers' types joined by "+", the algorithm of its
        convolution or None, multiply-adds for the batch, seconds)] in plan order, each op run alone
        `repeats` times (after one warm-up) with the threads the whole call would use, on the values a
        whole call left in the buffers; and, last, ("(whole call)", "", None, all the multiply-adds,
        the whole call's seconds). seconds: the "median" or the "min" of the runs (on a shared machine
        the min is the op's own cost, the median what it costs amid the load). An op's name is its first
        layer's; a BatchNorm folded into it and the layers fused with it are among its layers."""
        import time

        if statistic not in ("median", "min"):
            raise ValueError(f"Predictor.profile(): statistic must be 'median' or 'min', got {statistic!r}")
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"Predictor.profile(): repeats must be a positive int, got {repeats!r}")
        reduce = np.median if statistic == "median" else np.min

        y = self(x)  # plans, reserves, checks x, and leaves realistic values in the arena
        n = x.shape[0]
        x = np.ascontiguousarray(x)
        algorithms = dict(self.algorithms)
        nt = threads_for(max(1, n * self._macs // MIN_WORK_PER_THREAD), MIN_WORK_PER_THREAD)

        def median_time(run):
            run()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            return float(reduce(times))

        out = np.empty_like(y)
        spans = {}
        for r, (name, _) in enumerate(self._owners):
            spans.setdefault(name, []).append(r)
        result = []
        with self._lock:
            for name, rows in spans.items():
                layers = self._owners[rows[0]][1]
                ops = np.ascontiguousarray(self._ops[rows[0]:rows[-1] + 1])
                seconds = median_time(lambda: _kernels.predict(
                    out.reshape(-1), x.reshape(-1), ops, self._params, self._packed, TIERS.index(self.isa),
                    self._arena, n * self._largest, self._scratch, self._per_thread, self._xpack, n, nt))
                result.append((name, "+".join(type(m).__name__ for m in layers), algorithms.get(name),
                               n * sum(_op_macs(self._ops[r]) for r in rows), seconds))
        result.append(("(whole call)", "", None, n * self._macs, median_time(lambda: self(x))))
        return result

    @staticmethod
    def _pool_columns(row, layer, shape):
        """The pooling's columns of row: its own op (over shape), or the end of a convolution's."""
        _, Ho, Wo = layer.output_shape(shape)
        row[_F["pool"]] = _POOLS[type(layer)]
        row[[_F[k] for k in ("pkh", "pkw", "psh", "psw", "pph", "ppw", "pHo", "pWo")]] = \
            (*layer.kernel_size, *layer.stride, *layer.padding, Ho, Wo)
        row[_F["pincl"]] = int(getattr(layer, "count_include_pad", True))

    def _threads(self, n):
        """The threads a batch of n images runs on: as many as its multiply-adds justify (threads_for)."""
        return threads_for(max(1, n * self._macs // MIN_WORK_PER_THREAD), MIN_WORK_PER_THREAD)

    def _reserve(self, n):
        """Buffers for batches of up to n images (the per-thread scratch: for the threads such a batch gets)."""
        if n > self.batch_size:
            self._arena = np.empty(max(1, self._nslots * n * self._largest), self.dtype)
            self._xpack = np.empty(max(1, n * self._linear_in), self.dtype)
            if self._threads(n) * self._per_thread > self._scratch.size:
                self._scratch = np.empty(self._threads(n) * self._per_thread, self.dtype)
            self.batch_size = n


def _op_macs(row):
    """The multiply-adds of one image through a convolution or linear op row (0 for the others), as
    im2col + GEMM counts them (Winograd does fewer multiplies; see conv_algorithm)."""
    if row[_F["kind"]] == _F["OP_CONV"]:
        return int(row[_F["O"]] * row[_F["Ho"]] * row[_F["Wo"]] * row[_F["C"]] // row[_F["G"]] * row[_F["kh"]]
                   * row[_F["kw"]])
    if row[_F["kind"]] == _F["OP_LINEAR"]:
        return int(row[_F["C"]] * row[_F["O"]])
    return 0


def _snapshot(layer):
    """A copy of layer holding copies of its parameters and buffers, and nothing it saved for backward."""
    snap = copy.copy(layer)
    snap._saved = None
    for name, value in vars(layer).items():
        if isinstance(value, nn.Parameter):
            setattr(snap, name, nn.Parameter(value.data.copy()))
    for name in layer._buffers:
        setattr(snap, name, getattr(layer, name).copy())
    return snap


def _shape(input_shape):
    if not (isinstance(input_shape, (tuple, list)) and input_shape
            and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in input_shape)):
        raise ValueError(f"compile(): input_shape must be one image's shape, positive ints, got {input_shape!r}")
    return tuple(int(s) for s in input_shape)
