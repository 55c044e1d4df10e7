"""cyconv.onnx: models in and out as ONNX, the format models move between frameworks in.

    cyconv.onnx.export(model, "lenet5.onnx")      # any Sequential of cyconv's layers, opset 17
    model = cyconv.onnx.load("lenet5.onnx")        # a Sequential (float32, eval mode)

export writes input "input" and output "logits" with a dynamic batch dimension (the image size too,
unless input_shape is given); `onnx.checker.check_model(..., full_check=True)` passes on the result.

load takes graphs that are a chain of: Conv (group 1, any kernel, stride and symmetric pads; auto_pad
NOTSET, VALID, or SAME_UPPER where that pads symmetrically), Relu, Sigmoid, Tanh, MaxPool,
AveragePool, BatchNormalization (inference mode), Flatten, Reshape to (N, -1), Gemm (alpha = beta =
1, transB 0 or 1), MatMul + Add, Dropout (a Dropout layer: nothing at inference, its ratio kept for
training), Identity, and a final Softmax or LogSoftmax (kept as a layer, or dropped with
final_softmax="drop" when only the scores matter). Anything else is refused with
UnsupportedModelError naming the node, its op type and what is not supported; a file that is not
ONNX, is truncated, or whose initializers contradict themselves raises InvalidModelError. Both are
ValueErrors. Nothing is allocated from a size the file claims before the data backing it is seen.

Needs the `onnx` package: pip install "cyconv[onnx]".
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from . import nn
from ._files import atomic_write

__all__ = ["export", "load", "UnsupportedModelError", "InvalidModelError", "OPSET"]

OPSET = 17          # what export writes
IR_VERSION = 8      # the ONNX IR version of opset 17
MAX_FILE_BYTES = 2 << 30   # protobuf's own limit for one message


class UnsupportedModelError(ValueError):
    """A valid ONNX graph that cyconv cannot run: the message names the node, its op type and why."""


class InvalidModelError(ValueError):
    """A file that is not a (complete, self-consistent) ONNX model."""


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("cyconv.onnx needs the onnx package: pip install 'cyconv[onnx]'") from None
    return onnx


# ---------------------------------------------------------------------------------------------------------
# Export


def export(model, path, *, input_shape=None):
    """Write `model` (a Sequential of cyconv's layers, or one layer) to `path` as an ONNX model (opset 17).

    input_shape: one image's shape, e.g. (1, 28, 28), to write fixed sizes; by default the batch and, for
    images, the height and width are dynamic. The file is written atomically.
    """
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    from . import __version__
    from . import graph

    layers = [node.module for node in graph.trace(model).nodes]
    params = [p.data for layer in layers for p in layer.parameters()]
    dtypes = {p.dtype for p in params} or {np.dtype(np.float32)}
    if len(dtypes) > 1:
        raise TypeError(f"export(): the model mixes parameter dtypes {sorted(map(str, dtypes))}")
    dtype = dtypes.pop()
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    nodes, initializers = [], []
    current = "input"
    for i, layer in enumerate(layers):
        out = "logits" if i == len(layers) - 1 else f"{i}.out"

        def init(name, array):
            initializers.append(numpy_helper.from_array(np.array(array, order="C"), f"{i}.{name}"))  # 0-d stays 0-d
            return f"{i}.{name}"

        kind = type(layer)
        if kind is nn.Conv2d:
            inputs = [current, init("weight", layer.weight.data)]
            if layer.bias is not None:
                inputs.append(init("bias", layer.bias.data))
            (ph, pw) = layer.padding
            nodes.append(helper.make_node("Conv", inputs, [out], name=f"{i}.Conv2d",
                                          kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                                          pads=[ph, pw, ph, pw], dilations=[1, 1], group=1))
        elif kind is nn.Linear:
            inputs = [current, init("weight", layer.weight.data)]
            if layer.bias is not None:
                inputs.append(init("bias", layer.bias.data))
            nodes.append(helper.make_node("Gemm", inputs, [out], name=f"{i}.Linear", alpha=1.0, beta=1.0,
                                          transB=1))
        elif kind in (nn.MaxPool2d, nn.AvgPool2d):
            (ph, pw) = layer.padding
            attrs = dict(kernel_shape=list(layer.kernel_size), strides=list(layer.stride), pads=[ph, pw, ph, pw])
            if kind is nn.AvgPool2d:
                attrs["count_include_pad"] = int(layer.count_include_pad)
            nodes.append(helper.make_node("MaxPool" if kind is nn.MaxPool2d else "AveragePool", [current], [out],
                                          name=f"{i}.{kind.__name__}", **attrs))
        elif kind in (nn.BatchNorm1d, nn.BatchNorm2d):
            if not layer.track_running_stats:
                raise TypeError(f"export(): {kind.__name__} (layer {i}) has no running statistics: it normalises "
                                "with each batch's own, which ONNX's inference BatchNormalization cannot express")
            C = layer.num_features
            scale = layer.weight.data if layer.affine else np.ones(C, dtype)
            shift = layer.bias.data if layer.affine else np.zeros(C, dtype)
            inputs = [current, init("weight", scale), init("bias", shift), init("running_mean", layer.running_mean),
                      init("running_var", layer.running_var)]
            # ONNX's momentum weighs the running value (PyTorch's, the batch's).
            nodes.append(helper.make_node("BatchNormalization", inputs, [out], name=f"{i}.{kind.__name__}",
                                          epsilon=layer.eps, momentum=1 - (layer.momentum or 0.1)))
        elif kind is nn.Dropout:
            nodes.append(helper.make_node("Dropout", [current, init("ratio", np.array(layer.p, dtype))], [out],
                                          name=f"{i}.Dropout"))
        elif kind in _EXPORT_SIMPLE:
            op, attrs = _EXPORT_SIMPLE[kind]
            nodes.append(helper.make_node(op, [current], [out], name=f"{i}.{kind.__name__}", **attrs))
        elif kind in _IDENTITY_AT_INFERENCE:
            nodes.append(helper.make_node("Identity", [current], [out], name=f"{i}.{kind.__name__}"))
        else:
            raise TypeError(f"export(): no ONNX form for {kind.__name__} (layer {i})")
        current = out
    if not layers:
        raise ValueError("export(): the model has no layers")
    input_dims = _input_dims(layers, input_shape)
    graph = helper.make_graph(nodes, "cyconv", [helper.make_tensor_value_info("input", elem, input_dims)],
                              [helper.make_tensor_value_info("logits", elem, _output_dims(layers, input_dims))],
                              initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cyconv",
                              producer_version=__version__)
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    atomic_write(Path(path), lambda f: f.write(data))


_EXPORT_SIMPLE = {
    nn.ReLU: ("Relu", {}), nn.Sigmoid: ("Sigmoid", {}), nn.Tanh: ("Tanh", {}), nn.Flatten: ("Flatten", {"axis": 1}),
    nn.Softmax: ("Softmax", {"axis": 1}), nn.LogSoftmax: ("LogSoftmax", {"axis": 1}),
}
_IDENTITY_AT_INFERENCE = tuple(getattr(nn, name) for name in ("Identity",) if hasattr(nn, name))


def _input_dims(layers, input_shape):
    if input_shape is not None:
        if not (isinstance(input_shape, (tuple, list)) and all(isinstance(s, int) and s >= 1 for s in input_shape)):
            raise ValueError(f"export(): input_shape must be one image's shape, positive ints, got {input_shape!r}")
        return ["batch", *input_shape]
    first = layers[0]
    if type(first) is nn.Conv2d:
        return ["batch", first.in_channels, "height", "width"]
    if type(first) is nn.Linear:
        return ["batch", first.in_features]
    raise ValueError(f"export(): the input's shape cannot be told from a first layer {type(first).__name__}; "
                     "give input_shape=(...) (one image's shape)")


def _output_dims(layers, dims):
    """The output's dims, walked from the input's: ints where known, None where they depend on a
    dynamic size, "batch" for the batch."""
    dims = list(dims)
    for layer in layers:
        kind = type(layer)
        if kind in (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d):
            channels = layer.out_channels if kind is nn.Conv2d else dims[1]
            sizes = [None if not isinstance(n, int) else (n + 2 * p - k) // s + 1
                     for n, k, s, p in zip(dims[2:], layer.kernel_size, layer.stride, layer.padding)]
            dims = ["batch", channels, *sizes]
        elif kind is nn.Flatten:
            rest = dims[1:]
            dims = ["batch", math.prod(rest) if all(isinstance(n, int) for n in rest) else None]
        elif kind is nn.Linear:
            dims = ["batch", layer.out_features]
    return dims


# ---------------------------------------------------------------------------------------------------------
# Load


def load(path, *, final_softmax="keep"):
    """The cyconv Sequential (float32) equivalent to the ONNX model at `path` (see the module docstring), in
    eval mode, as the graph runs at inference (call .train() on it to fine-tune).

    final_softmax: "keep" a final Softmax/LogSoftmax as a layer, or "drop" it (the scores, for training
    with softmax_cross_entropy or for an argmax).
    """
    if final_softmax not in ("keep", "drop"):
        raise ValueError(f"load(): final_softmax must be 'keep' or 'drop', got {final_softmax!r}")
    proto = _read(Path(path))
    return _Loader(proto, str(path), final_softmax == "drop").build()


def _read(path: Path):
    onnx = _onnx()
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise FileNotFoundError(2, "No such file", str(path)) from None
    if path.is_dir():
        raise InvalidModelError(f"{path}: is a directory, not an ONNX model")
    if size > MAX_FILE_BYTES:
        raise InvalidModelError(f"{path}: {size} bytes, more than an ONNX model can hold (2 GiB)")
    data = path.read_bytes()
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as e:  # protobuf's DecodeError, or anything its parser raises on garbage
        raise InvalidModelError(f"{path}: not an ONNX model (the file does not parse: {type(e).__name__})") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise InvalidModelError(f"{path}: not an ONNX model (no graph, or a graph without nodes)")
    return proto


class _Loader:
    """One graph walked as a chain of layers; `current` is the tensor the next node must consume."""

    def __init__(self, proto, source, drop_final_softmax):
        from onnx import TensorProto

        self.proto, self.graph, self.source = proto, proto.graph, source
        self.drop_final_softmax = drop_final_softmax
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        if self.opset is None:
            raise UnsupportedModelError(f"{source}: the graph imports no standard ONNX opset")
        self.float_types = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64,
                            TensorProto.FLOAT16: np.float16}
        self.initializers = {t.name: t for t in self.graph.initializer}
        self.layers = []

    def fail(self, node, index, reason):
        name = node.name or f"#{index}"
        raise UnsupportedModelError(f"{self.source}: node {name} ({node.op_type}): {reason}")

    def build(self):
        inputs = [v for v in self.graph.input if v.name not in self.initializers]
        if len(inputs) != 1 or len(self.graph.output) != 1:
            raise UnsupportedModelError(f"{self.source}: the graph must have one input and one output, it has "
                                        f"{len(inputs)} and {len(self.graph.output)}")
        if inputs[0].type.tensor_type.elem_type not in self.float_types:
            raise UnsupportedModelError(f"{self.source}: input {inputs[0].name!r} is not a float tensor")
        dims = inputs[0].type.tensor_type.shape.dim
        self.rank = len(dims) if inputs[0].type.tensor_type.HasField("shape") else None
        current, nodes = inputs[0].name, list(self.graph.node)
        i = 0
        while i < len(nodes):
            node = nodes[i]
            if node.domain not in ("", "ai.onnx"):
                self.fail(node, i, f"operators of domain {node.domain!r} are not supported")
            data_inputs = [name for name in node.input if name and name not in self.initializers]
            if data_inputs != [current] or (node.input and node.input[0] != current):
                self.fail(node, i, f"takes {list(node.input)}; cyconv runs chains whose every node takes the "
                                   f"previous one's output ({current!r}) first, and constants after it")
            handler = getattr(self, f"_{node.op_type}", None)
            if handler is None:
                self.fail(node, i, "op type not supported (cyconv.onnx's docstring lists those that are)")
            i = handler(node, i, nodes)
            current = nodes[i - 1].output[0]
            if node.op_type in ("Conv", "MaxPool", "AveragePool"):
                self.rank = 4
            elif node.op_type in ("Flatten", "Reshape", "Gemm", "MatMul"):
                self.rank = 2
        if current != self.graph.output[0].name:
            raise UnsupportedModelError(f"{self.source}: the graph's output {self.graph.output[0].name!r} is not "
                                        f"the last node's ({current!r})")
        return nn.Sequential(*self.layers).eval()

    # -- helpers ------------------------------------------------------------

    def attrs(self, node, index, allowed):
        from onnx import helper

        got = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        for name in got:
            if name not in allowed:
                self.fail(node, index, f"attribute {name} is not supported")
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in got.items()}

    def constant(self, node, index, name, ndim=None):
        """An initializer as a float32 array, checked against its own dims before it is materialised."""
        from onnx import numpy_helper

        tensor = self.initializers.get(name)
        if tensor is None:
            self.fail(node, index, f"input {name!r} must be a constant (an initializer)")
        if tensor.data_location == tensor.EXTERNAL or tensor.external_data:
            self.fail(node, index, f"initializer {name!r} keeps its data in an external file")
        dims = list(tensor.dims)
        if any(d < 0 for d in dims):
            raise InvalidModelError(f"{self.source}: initializer {name!r} has negative dims {dims}")
        count = math.prod(dims)
        if tensor.data_type in self.float_types:
            itemsize = np.dtype(self.float_types[tensor.data_type]).itemsize
            stored = len(tensor.raw_data) // itemsize if tensor.raw_data else (
                len(tensor.float_data) or len(tensor.double_data) or len(tensor.int32_data))
        elif tensor.data_type == 7:  # INT64 (a Reshape's shape)
            stored = len(tensor.raw_data) // 8 if tensor.raw_data else len(tensor.int64_data)
        else:
            self.fail(node, index, f"initializer {name!r} has an unsupported element type {tensor.data_type}")
        if stored != count:
            raise InvalidModelError(f"{self.source}: initializer {name!r} claims dims {dims} ({count} values) "
                                    f"but holds {stored}")
        array = numpy_helper.to_array(tensor)
        if ndim is not None and array.ndim != ndim:
            self.fail(node, index, f"input {name!r} must be {ndim}-D, got shape {array.shape}")
        return array.astype(np.float32) if array.dtype.kind == "f" else array

    def symmetric_pads(self, node, index, pads):
        if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
            self.fail(node, index, f"pads {list(pads)}: cyconv pads top/bottom and left/right alike")
        return pads[0], pads[1]

    def window(self, node, index, a, kernel):
        strides = tuple(a.get("strides", [1, 1]))
        if len(kernel) != 2 or len(strides) != 2:
            self.fail(node, index, f"kernel_shape {list(kernel)}: only 2-D windows are supported")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            self.fail(node, index, f"dilations {a['dilations']} are not supported")
        auto_pad = a.get("auto_pad", "NOTSET")
        if auto_pad == "NOTSET":
            pads = self.symmetric_pads(node, index, a.get("pads", [0, 0, 0, 0]))
        elif auto_pad == "VALID":
            pads = (0, 0)
        elif auto_pad == "SAME_UPPER" and strides == (1, 1) and all(k % 2 == 1 for k in kernel):
            pads = ((kernel[0] - 1) // 2, (kernel[1] - 1) // 2)  # the same on both sides, whatever the image size
        else:
            self.fail(node, index, f"auto_pad {auto_pad} (with strides {list(strides)}, kernel {list(kernel)}) "
                                   "is not supported: NOTSET, VALID, and SAME_UPPER for odd kernels at stride 1 are")
        return tuple(int(k) for k in kernel), tuple(int(s) for s in strides), tuple(int(p) for p in pads)

    def linear(self, weight, bias):
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, rng=np.random.default_rng(0))
        layer.weight.data[...] = weight
        if bias is not None:
            layer.bias.data[...] = bias
        self.layers.append(layer)

    # -- op types -----------------------------------------------------------

    def _Conv(self, node, i, nodes):
        a = self.attrs(node, i, {"kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"})
        if a.get("group", 1) != 1:
            self.fail(node, i, f"group {a['group']}: grouped convolutions are not supported")
        weight = self.constant(node, i, node.input[1], ndim=4)
        bias = self.constant(node, i, node.input[2], ndim=1) if len(node.input) > 2 and node.input[2] else None
        kernel = tuple(a.get("kernel_shape", weight.shape[2:]))
        if kernel != weight.shape[2:]:
            self.fail(node, i, f"kernel_shape {list(kernel)} does not match the weight's {weight.shape}")
        if bias is not None and bias.shape != (weight.shape[0],):
            raise InvalidModelError(f"{self.source}: node {node.name} (Conv): bias shape {bias.shape} for "
                                    f"{weight.shape[0]} output channels")
        kernel, stride, padding = self.window(node, i, a, kernel)
        layer = nn.Conv2d(weight.shape[1], weight.shape[0], kernel, stride, padding, bias=bias is not None,
                          rng=np.random.default_rng(0))
        layer.weight.data[...] = weight
        if bias is not None:
            layer.bias.data[...] = bias
        self.layers.append(layer)
        return i + 1

    def _pool(self, node, i, allowed):
        a = self.attrs(node, i, allowed)
        if a.get("ceil_mode", 0) != 0:
            self.fail(node, i, "ceil_mode 1 is not supported")
        if a.get("storage_order", 0) != 0:
            self.fail(node, i, "storage_order 1 is not supported")
        if len(node.output) > 1 and node.output[1]:
            self.fail(node, i, "the Indices output is not supported")
        if "kernel_shape" not in a:
            self.fail(node, i, "kernel_shape is required")
        kernel, stride, padding = self.window(node, i, a, a["kernel_shape"])
        if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
            self.fail(node, i, f"pads {list(padding)} over half the kernel {list(kernel)} are not supported")
        return a, kernel, stride, padding

    def _MaxPool(self, node, i, nodes):
        _, kernel, stride, padding = self._pool(
            node, i, {"kernel_shape", "strides", "pads", "dilations", "auto_pad", "ceil_mode", "storage_order"})
        self.layers.append(nn.MaxPool2d(kernel, stride, padding))
        return i + 1

    def _AveragePool(self, node, i, nodes):
        a, kernel, stride, padding = self._pool(
            node, i, {"kernel_shape", "strides", "pads", "auto_pad", "ceil_mode", "count_include_pad", "dilations"})
        self.layers.append(nn.AvgPool2d(kernel, stride, padding, count_include_pad=bool(a.get("count_include_pad",
                                                                                               0))))
        return i + 1

    def _Relu(self, node, i, nodes):
        self.attrs(node, i, set())
        self.layers.append(nn.ReLU())
        return i + 1

    def _Sigmoid(self, node, i, nodes):
        self.attrs(node, i, set())
        self.layers.append(nn.Sigmoid())
        return i + 1

    def _Tanh(self, node, i, nodes):
        self.attrs(node, i, set())
        self.layers.append(nn.Tanh())
        return i + 1

    def _Flatten(self, node, i, nodes):
        a = self.attrs(node, i, {"axis"})
        if a.get("axis", 1) != 1:
            self.fail(node, i, f"axis {a['axis']}: only axis 1 (keep the batch) is supported")
        self.layers.append(nn.Flatten())
        return i + 1

    def _Reshape(self, node, i, nodes):
        self.attrs(node, i, {"allowzero"})
        shape = self.constant(node, i, node.input[1], ndim=1)
        if shape.dtype.kind != "i" or len(shape) != 2 or shape[0] not in (0, -1) or \
                (shape[0] == -1 and shape[1] < 1) or (shape[0] == 0 and shape[1] != -1):
            self.fail(node, i, f"shape {shape.tolist()}: only a reshape to (N, -1) (a flatten) is supported")
        self.layers.append(nn.Flatten())
        return i + 1

    def _Gemm(self, node, i, nodes):
        a = self.attrs(node, i, {"alpha", "beta", "transA", "transB"})
        if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0) != 0:
            self.fail(node, i, f"alpha {a.get('alpha', 1.0)}, beta {a.get('beta', 1.0)}, transA "
                               f"{a.get('transA', 0)}: only alpha = beta = 1 and transA 0 are supported")
        weight = self.constant(node, i, node.input[1], ndim=2)
        if a.get("transB", 0) == 0:
            weight = weight.T  # Gemm's B is (in, out); a Linear's weight (out, in)
        bias = self.constant(node, i, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if bias is not None:
            if bias.size != weight.shape[0] or bias.ndim > 2:
                self.fail(node, i, f"bias of shape {bias.shape}: only one bias per output ({weight.shape[0]}) "
                                   "is supported")
            bias = bias.reshape(-1)
        self.linear(np.ascontiguousarray(weight), bias)
        return i + 1

    def _MatMul(self, node, i, nodes):
        self.attrs(node, i, set())
        weight = self.constant(node, i, node.input[1], ndim=2)  # (in, out)
        bias = None
        if i + 1 < len(nodes) and nodes[i + 1].op_type == "Add" and node.output[0] in nodes[i + 1].input:
            add = nodes[i + 1]
            other = [name for name in add.input if name != node.output[0]]
            if len(other) == 1 and other[0] in self.initializers:
                bias = self.constant(add, i + 1, other[0])
                if bias.size != weight.shape[1]:
                    self.fail(add, i + 1, f"bias of shape {bias.shape} for {weight.shape[1]} outputs")
                self.linear(np.ascontiguousarray(weight.T), bias.reshape(-1))
                return i + 2
        self.linear(np.ascontiguousarray(weight.T), bias)
        return i + 1

    def _Dropout(self, node, i, nodes):
        a = self.attrs(node, i, {"seed", "ratio"})  # opset < 12 kept ratio as an attribute
        if len(node.output) > 1 and node.output[1] and any(node.output[1] in n.input for n in nodes):
            self.fail(node, i, "its mask output is used")
        if len(node.input) > 2 and node.input[2]:
            mode = self.constant(node, i, node.input[2])
            if mode.size != 1 or bool(mode.reshape(-1)[0]):
                self.fail(node, i, "training_mode must be a constant false (inference)")
        ratio = a.get("ratio", 0.5)
        if len(node.input) > 1 and node.input[1]:
            ratio = self.constant(node, i, node.input[1])
            if ratio.size != 1:
                self.fail(node, i, f"ratio of shape {ratio.shape}: must be a scalar")
            ratio = float(ratio.reshape(-1)[0])
        if not 0 <= ratio < 1:
            self.fail(node, i, f"ratio {ratio}: must be in [0, 1)")
        self.layers.append(nn.Dropout(ratio, rng=np.random.default_rng(0)))  # nothing at inference
        return i + 1

    def _BatchNormalization(self, node, i, nodes):
        a = self.attrs(node, i, {"epsilon", "momentum", "training_mode", "spatial", "is_test"})
        if a.get("training_mode", 0) != 0:
            self.fail(node, i, "training_mode 1: only inference-mode batch normalisation is supported")
        if a.get("spatial", 1) != 1:
            self.fail(node, i, "spatial 0 (per-location statistics) is not supported")
        if len(node.input) != 5 or len(node.output) > 1 and any(node.output[1:]):
            self.fail(node, i, "needs the 5 inputs (X, scale, B, mean, var) and uses only the output Y")
        scale, bias, mean, var = (self.constant(node, i, name, ndim=1) for name in node.input[1:])
        C = scale.shape[0]
        if not all(v.shape == (C,) for v in (bias, mean, var)):
            raise InvalidModelError(f"{self.source}: node {node.name} (BatchNormalization): scale, B, mean and "
                                    f"var must all have shape ({C},), got {[v.shape for v in (scale, bias, mean, var)]}")
        if (var < 0).any():
            raise InvalidModelError(f"{self.source}: node {node.name} (BatchNormalization): negative variance")
        if self.rank not in (2, 3, 4):
            self.fail(node, i, "cannot tell whether its input is (N, C) or (N, C, H, W): give the graph input "
                               "a shape, or put the node after a Conv/Gemm")
        cls = nn.BatchNorm2d if self.rank == 4 else nn.BatchNorm1d
        momentum = 1 - float(a.get("momentum", 0.9))
        layer = cls(C, eps=float(a.get("epsilon", 1e-5)), momentum=min(max(momentum, 0.0), 1.0))
        layer.weight.data[...], layer.bias.data[...] = scale, bias
        layer.running_mean[...], layer.running_var[...] = mean, var
        self.layers.append(layer)
        return i + 1

    def _Identity(self, node, i, nodes):
        return i + 1

    def _softmax(self, node, i, nodes, layer):
        a = self.attrs(node, i, {"axis"})
        if i != len(nodes) - 1:
            self.fail(node, i, "only as the graph's last node (over the classes of the scores)")
        default = -1 if self.opset >= 13 else 1
        if a.get("axis", default) not in (1, -1):
            self.fail(node, i, f"axis {a['axis']}: only the classes (axis 1 of (N, K) scores) are supported")
        if not self.drop_final_softmax:
            self.layers.append(layer)
        return i + 1

    def _Softmax(self, node, i, nodes):
        return self._softmax(node, i, nodes, nn.Softmax(dim=1))

    def _LogSoftmax(self, node, i, nodes):
        return self._softmax(node, i, nodes, nn.LogSoftmax(dim=1))
