"""cyconv.onnx: models in and out as ONNX, the format models move between frameworks in.

    cyconv.onnx.export(model, "resnet.onnx")       # any cyconv model: a chain or a graph, opset 17
    model = cyconv.onnx.load("resnet.onnx")         # a Sequential for a chain, else an nn.Graph (float32, eval)

export traces the model (cyconv.graph.trace) and writes one ONNX node per layer, named after it
("layer1.0.conv1"), its initializers "<name>.weight" etc.: Conv (grouped and dilated too), Gemm,
MaxPool, AveragePool, GlobalAveragePool (AdaptiveAvgPool2d(1)), BatchNormalization, Relu, Clip (ReLU6,
Hardtanh: bounds as initializers), Sigmoid, Tanh, Flatten, Dropout, Identity, Add (Sum for three
inputs or more), Concat (channels), Softmax, LogSoftmax. Input "input" and output "logits" have a
dynamic batch dimension (the image size too, unless input_shape is given);
`onnx.checker.check_model(..., full_check=True)` passes on the result.

load takes a directed acyclic graph with one input and one output (TorchScript's and the dynamo
exporter's resnet and mobilenet_v2, BatchNorm folded or not; the ONNX model zoo's classic networks, IR 3
and opsets 6 and up, with every initializer listed among the graph inputs too) of:
  Conv (any group and dilation, symmetric pads; auto_pad NOTSET, VALID, or SAME_UPPER where that pads
    symmetrically), MaxPool, AveragePool, GlobalAveragePool, ReduceMean over H and W (axes as attribute
    or input; keepdims 0 adds a Flatten), BatchNormalization (inference: is_test, spatial 1), Relu,
    Sigmoid, Tanh, Clip (bounds as attributes or constant inputs: (0, 6) is ReLU6, (0, inf) ReLU,
    other finite ones Hardtanh), Flatten (axis 1), Reshape to a constant (N, -1), (0, -1), (1, -1) or
    (-1, features), Gemm (alpha = beta = 1, transA 0, any transB, the old broadcast attribute), MatMul,
    Add of two computed values (nn.Add), Add of a per-channel constant to a Conv or Gemm/MatMul whose
    output nothing else reads (its bias), Sum, Concat over channels, Dropout (a Dropout layer: nothing
    at inference, its ratio kept for training), Identity, and Softmax or LogSoftmax producing the
    graph's output (kept as a layer, or dropped with final_softmax="drop" when only the scores
    matter);
  and constants: initializers, Constant nodes, and ConstantOfShape, Transpose, Unsqueeze, Squeeze,
    Reshape, Flatten, Concat, Cast, Identity, Add, Sub, Mul, Div, Sqrt, Reciprocal and Neg of
    constants, folded at load with NumPy (a weight computed by a constant subgraph).
Nodes nothing reads on the way to the output are left out. Anything else is refused with
UnsupportedModelError naming the node, its op type and what is not supported; a file that is not ONNX,
is truncated, whose initializers contradict themselves, or whose graph is not a DAG (a cycle, a value
read before or without being produced, a node without outputs, shapes that do not meet at a merge)
raises InvalidModelError. Both are ValueErrors. Nothing is allocated from a size the file claims
before the data backing it is seen.

Needs the `onnx` package: pip install "cyconv[onnx]".
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..layers import graph, nn
from .._files import atomic_write

__all__ = ["export", "load", "UnsupportedModelError", "InvalidModelError", "OPSET"]

OPSET = 17          # what export writes
IR_VERSION = 8      # the ONNX IR version of opset 17
MAX_FILE_BYTES = 2 << 30   # protobuf's own limit for one message
MAX_FOLDED_VALUES = 1 << 26  # the largest constant load computes (ConstantOfShape's size comes from the file)


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
    """Write `model` (any cyconv model: a layer, a Sequential, an nn.Graph, a Module with a forward) to
    `path` as an ONNX model (opset 17): one node per node of its traced graph (cyconv.graph.trace).

    input_shape: one image's shape, e.g. (1, 28, 28), to write fixed sizes; by default the batch and, for
    images, the height and width are dynamic. The file is written atomically.
    """
    onnx = _onnx()
    from onnx import TensorProto, helper

    from .. import __version__

    tr = graph.trace(model)
    if not tr.nodes:
        raise ValueError("export(): the model has no layers")
    if tr.output == 0:
        raise ValueError("export(): the model returns its input unchanged")
    dtypes = {p.data.dtype for node in tr.nodes for p in node.module.parameters()} or {np.dtype(np.float32)}
    if len(dtypes) > 1:
        raise TypeError(f"export(): the model mixes parameter dtypes {sorted(map(str, dtypes))}")
    dtype = dtypes.pop()
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    names = ["input"] + [node.name if node.name not in ("input", "logits") else f"{node.name}.out"
                         for node in tr.nodes]
    names[tr.output] = "logits"
    nodes, initializers = [], []
    for index, node in enumerate(tr.nodes):
        nodes.extend(_export_node(node, index, [names[v] for v in node.inputs], names[index + 1], dtype,
                                  initializers))
    dims = _value_dims(tr, _input_dims(tr, input_shape))
    onnx_graph = helper.make_graph(nodes, "cyconv", [helper.make_tensor_value_info("input", elem, dims[0])],
                                   [helper.make_tensor_value_info("logits", elem, dims[tr.output])], initializers)
    proto = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cyconv",
                              producer_version=__version__)
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    atomic_write(Path(path), lambda f: f.write(data))


def _export_node(node, index, inputs, out, dtype, initializers):
    """The ONNX node(s) of one traced node; its constants are appended to `initializers`."""
    from onnx import helper, numpy_helper

    layer, kind, name = node.module, node.kind, node.name

    def init(param, array):
        initializers.append(numpy_helper.from_array(np.array(array, dtype=array.dtype, order="C"),
                                                    f"{name}.{param}"))  # 0-d stays 0-d
        return f"{name}.{param}"

    def make(op, args, **attrs):
        return [helper.make_node(op, args, [out], name=name, **attrs)]

    if kind is nn.Conv2d:
        args = [*inputs, init("weight", layer.weight.data)]
        if layer.bias is not None:
            args.append(init("bias", layer.bias.data))
        (ph, pw) = layer.padding
        return make("Conv", args, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                    pads=[ph, pw, ph, pw], dilations=list(layer.dilation),
                    group=layer.groups)
    if kind is nn.Linear:
        args = [*inputs, init("weight", layer.weight.data)]
        if layer.bias is not None:
            args.append(init("bias", layer.bias.data))
        return make("Gemm", args, alpha=1.0, beta=1.0, transB=1)
    if kind in (nn.MaxPool2d, nn.AvgPool2d):
        (ph, pw) = layer.padding
        attrs = dict(kernel_shape=list(layer.kernel_size), strides=list(layer.stride), pads=[ph, pw, ph, pw])
        if kind is nn.AvgPool2d:
            attrs["count_include_pad"] = int(layer.count_include_pad)
        return make("MaxPool" if kind is nn.MaxPool2d else "AveragePool", inputs, **attrs)
    if kind is nn.AdaptiveAvgPool2d:
        if tuple(layer.output_size) != (1, 1):
            raise TypeError(f"export(): no ONNX form for AdaptiveAvgPool2d({layer.output_size}) (layer {name!r}): "
                            "only output size 1 (GlobalAveragePool)")
        return make("GlobalAveragePool", inputs)
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d):
        if not layer.track_running_stats:
            raise TypeError(f"export(): {kind.__name__} (layer {name!r}) has no running statistics: it normalises "
                            "with each batch's own, which ONNX's inference BatchNormalization cannot express")
        C = layer.num_features
        scale = layer.weight.data if layer.affine else np.ones(C, dtype)
        shift = layer.bias.data if layer.affine else np.zeros(C, dtype)
        args = [*inputs, init("weight", scale), init("bias", shift), init("running_mean", layer.running_mean),
                init("running_var", layer.running_var)]
        # ONNX's momentum weighs the running value (PyTorch's, the batch's).
        return make("BatchNormalization", args, epsilon=layer.eps, momentum=1 - (layer.momentum or 0.1))
    if kind is nn.Dropout:
        return make("Dropout", [*inputs, init("ratio", np.array(layer.p, dtype))])
    if kind in _CLIPS:
        low, high = _CLIPS[kind](layer)
        return make("Clip", [*inputs, init("min", np.array(low, dtype)), init("max", np.array(high, dtype))])
    if kind is nn.Add:
        return make("Add" if len(inputs) == 2 else "Sum", inputs)
    if kind is nn.Concat:
        return make("Concat", inputs, axis=1)
    if kind in _EXPORT_SIMPLE:
        op, attrs = _EXPORT_SIMPLE[kind]
        return make(op, inputs, **attrs)
    raise TypeError(f"export(): no ONNX form for {kind.__name__} (layer {name!r})")


_EXPORT_SIMPLE = {
    nn.ReLU: ("Relu", {}), nn.Sigmoid: ("Sigmoid", {}), nn.Tanh: ("Tanh", {}), nn.Flatten: ("Flatten", {"axis": 1}),
    nn.Softmax: ("Softmax", {"axis": 1}), nn.LogSoftmax: ("LogSoftmax", {"axis": 1}), nn.Identity: ("Identity", {}),
}
# Clip's bounds of each clamping layer.
_CLIPS = {cls: (lambda layer: (layer.min_val, layer.max_val)) for cls in (nn.Hardtanh, nn.ReLU6)}


def _input_dims(tr, input_shape):
    if input_shape is not None:
        if not (isinstance(input_shape, (tuple, list)) and all(isinstance(s, int) and s >= 1 for s in input_shape)):
            raise ValueError(f"export(): input_shape must be one image's shape, positive ints, got {input_shape!r}")
        return ["batch", *input_shape]
    first = next(node.module for node in tr.nodes if 0 in node.inputs)
    if type(first) is nn.Conv2d:
        return ["batch", first.in_channels, "height", "width"]
    if type(first) is nn.Linear:
        return ["batch", first.in_features]
    raise ValueError(f"export(): the input's shape cannot be told from a first layer {type(first).__name__}; "
                     "give input_shape=(...) (one image's shape)")


def _value_dims(tr, input_dims):
    """The dims of every value, walked from the input's: ints where known, None where they depend on a
    dynamic size, "batch" for the batch. With a fixed input shape, graph.shapes also checks that the
    layers fit together."""
    if all(isinstance(n, int) for n in input_dims[1:]):
        return [["batch", *s] for s in graph.shapes(tr, input_dims[1:])]
    values = [list(input_dims)]
    for node in tr.nodes:
        values.append(_dims_after(node.module, [values[v] for v in node.inputs]))
    return values


def _dims_after(layer, inputs):
    dims, kind = inputs[0], type(layer)
    if kind in (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d):
        channels = layer.out_channels if kind is nn.Conv2d else dims[1]
        dilation = layer.dilation if kind is nn.Conv2d else (1, 1)
        sizes = [None if not isinstance(n, int) else (n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, k, s, p, d in zip(dims[2:], layer.kernel_size, layer.stride, layer.padding, dilation)]
        return ["batch", channels, *sizes]
    if kind is nn.AdaptiveAvgPool2d:
        return ["batch", dims[1], *layer.output_size]
    if kind is nn.Flatten:
        rest = dims[1:]
        return ["batch", math.prod(rest) if all(isinstance(n, int) for n in rest) else None]
    if kind is nn.Linear:
        return ["batch", layer.out_features]
    if kind is nn.Concat:
        channels = [d[1] for d in inputs]
        return ["batch", sum(channels) if all(isinstance(c, int) for c in channels) else None, *dims[2:]]
    return list(dims)


# ---------------------------------------------------------------------------------------------------------
# Load


def load(path, *, final_softmax="keep"):
    """The cyconv model (float32) equivalent to the ONNX model at `path` (see the module docstring), in eval
    mode, as the graph runs at inference (call .train() on it to fine-tune): an nn.Sequential when the graph
    is a chain, else an nn.Graph whose layers are named after PyTorch's modules where the file tells them
    ("layer1.0.conv1", from its weight "layer1.0.conv1.weight"), else after the ONNX nodes.

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
    """One ONNX graph made a cyconv model: checked to be a DAG, its constants folded, each node that the
    output depends on dispatched through _HANDLERS (op type -> method) to the layer(s) it becomes.

    Values are numbered as in cyconv.graph: 0 is the input, k + 1 the output of layer k."""

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
        self.nodes = list(self.graph.node)
        self.constants = {}   # value name -> array: initializers (materialised when used) and folded values
        self.values = {}      # value name -> value id
        self.shapes = [None]  # value id -> per-image shape, where the input's is known
        self.ranks = [None]   # value id -> rank with the batch axis, where known
        self.layers = []      # (name, module, input value ids)
        self.names = set()

    # -- errors -------------------------------------------------------------

    def label(self, node, index):
        return f"node {node.name or f'#{index}'} ({node.op_type})"

    def fail(self, node, index, reason):
        raise UnsupportedModelError(f"{self.source}: {self.label(node, index)}: {reason}")

    def invalid(self, node, index, reason):
        raise InvalidModelError(f"{self.source}: {self.label(node, index)}: {reason}")

    # -- the graph as a whole -----------------------------------------------

    def build(self):
        self.read_input_and_output()
        producer = self.check_dag()
        output = self.graph.output[0].name
        for i in self.live(producer, output):
            node = self.nodes[i]
            if node.domain not in ("", "ai.onnx"):
                self.fail(node, i, f"operators of domain {node.domain!r} are not supported")
            handler = _HANDLERS.get(node.op_type)
            if handler is None:
                self.fail(node, i, "op type not supported (cyconv.onnx's docstring lists those that are)")
            low, high = _ARITY.get(node.op_type, (1, 1))
            if not low <= len(node.input) <= high or not all(node.input[:low]):
                self.invalid(node, i, f"has inputs {list(node.input)}; {node.op_type} takes {low} to {high}")
            if node.op_type in _FOLDS and all(self.is_constant(name) for name in node.input if name):
                self.fold(node, i)
            else:
                handler(self, node, i)
        if output in self.constants:
            raise UnsupportedModelError(f"{self.source}: the graph's output {output!r} is a constant")
        return self.model(self.values[output])

    def read_input_and_output(self):
        inputs = [v for v in self.graph.input if v.name not in self.initializers]  # IR 3 lists both
        if len(inputs) != 1:
            raise UnsupportedModelError(f"{self.source}: the graph must have one input, it has {len(inputs)} "
                                        f"({[v.name for v in inputs]})")
        if len(self.graph.output) != 1:
            names = [v.name for v in self.graph.output]
            made_by = [self.label(n, i) for i, n in enumerate(self.nodes) if set(n.output) & set(names)]
            raise UnsupportedModelError(f"{self.source}: the graph has {len(names)} outputs {names} (from "
                                        f"{', '.join(made_by) or 'no node'}); cyconv models have one")
        tensor = inputs[0].type.tensor_type
        if tensor.elem_type not in self.float_types:
            raise UnsupportedModelError(f"{self.source}: input {inputs[0].name!r} is not a float tensor")
        if tensor.HasField("shape"):
            dims = tensor.shape.dim
            self.ranks[0] = len(dims)
            per_image = [d.dim_value if d.HasField("dim_value") else 0 for d in dims[1:]]
            if len(dims) >= 2 and all(n > 0 for n in per_image):
                self.shapes[0] = tuple(per_image)
        self.values[inputs[0].name] = 0

    def check_dag(self):
        """{value name: index of the node producing it}, once the nodes are known to be a DAG in execution
        order (as ONNX requires) whose every read value is produced, an input or an initializer."""
        known = {v.name for v in self.graph.input} | set(self.initializers)
        producer = {}
        for i, node in enumerate(self.nodes):
            if not any(node.output):
                self.invalid(node, i, "has no outputs")
            for name in filter(None, node.output):
                if name in producer or name in known:
                    first = "a graph input or initializer" if name in known else \
                        self.label(self.nodes[producer[name]], producer[name])
                    self.invalid(node, i, f"produces {name!r}, which {first} produces too")
                producer[name] = i
        for i, node in enumerate(self.nodes):
            for name in filter(None, node.input):
                if name in known:
                    continue
                j = producer.get(name)
                if j is None:
                    self.invalid(node, i, f"reads {name!r}, which no node produces and which is neither the "
                                          "graph's input nor an initializer")
                if j >= i:
                    cycle = self.find_cycle(producer)
                    if cycle:
                        path = " -> ".join(self.nodes[k].name or f"#{k}" for k in cycle)
                        self.invalid(self.nodes[cycle[0]], cycle[0], f"is on a cycle: {path}")
                    self.invalid(node, i, f"reads {name!r} before {self.label(self.nodes[j], j)} produces it "
                                          "(ONNX lists nodes in execution order)")
        output = self.graph.output[0].name
        if output not in producer and output not in self.values:
            raise InvalidModelError(f"{self.source}: the graph's output {output!r} is produced by no node")
        return producer

    def find_cycle(self, producer):
        """The node indices of one cycle (first repeated at the end), or None."""
        state = [0] * len(self.nodes)  # 0 unseen, 1 on the current path, 2 done
        for start in range(len(self.nodes)):
            if state[start]:
                continue
            path, stack = [], [(start, iter(self.deps(start, producer)))]
            state[start] = 1
            path.append(start)
            while stack:
                k, deps = stack[-1]
                j = next(deps, None)
                if j is None:
                    state[k] = 2
                    stack.pop()
                    path.pop()
                elif state[j] == 1:
                    return path[path.index(j):] + [j]
                elif state[j] == 0:
                    state[j] = 1
                    path.append(j)
                    stack.append((j, iter(self.deps(j, producer))))
        return None

    def deps(self, k, producer):
        return [producer[name] for name in self.nodes[k].input if name in producer]

    def live(self, producer, output):
        """The indices, in order, of the nodes the output depends on; counts each value's readers."""
        needed, todo = set(), [output]
        while todo:
            j = producer.get(todo.pop())
            if j is not None and j not in needed:
                needed.add(j)
                todo.extend(filter(None, self.nodes[j].input))
        self.readers = {output: 1}
        for j in needed:
            for name in set(filter(None, self.nodes[j].input)):
                self.readers[name] = self.readers.get(name, 0) + 1
        return sorted(needed)

    def model(self, output):
        """A Sequential when the layers form a chain ending in the output, else an nn.Graph."""
        if all(inputs == (k,) for k, (_, _, inputs) in enumerate(self.layers)) and output == len(self.layers):
            return nn.Sequential(*(module for _, module, _ in self.layers)).eval()
        g = nn.Graph()
        ports = [g.input()]
        for name, module, inputs in self.layers:
            ports.append(g.node(name, module, *(ports[v] for v in inputs)))
        g.output(ports[output])
        return g.eval()

    # -- values -------------------------------------------------------------

    def is_constant(self, name):
        return name in self.constants or name in self.initializers

    def value(self, node, index, name):
        """The id of the computed value `name` (a layer's input)."""
        if name in self.values:
            return self.values[name]
        if self.is_constant(name):
            self.fail(node, index, f"input {name!r} is a constant where cyconv needs a value computed from the "
                                   "graph's input")
        self.fail(node, index, f"reads {name!r}, an output cyconv does not compute")

    def const(self, node, index, name, ndim=None):
        """The constant `name` (an initializer, as a float32 array if floating, or a folded value)."""
        if name not in self.constants:
            tensor = self.initializers.get(name)
            if tensor is None:
                self.fail(node, index, f"input {name!r} must be a constant (an initializer, or computed from "
                                       "constants only)")
            array = self.tensor(node, index, tensor, f"initializer {name!r}")
            self.constants[name] = array.astype(np.float32) if array.dtype.kind == "f" else array
        array = self.constants[name]
        if ndim is not None and array.ndim != ndim:
            self.fail(node, index, f"input {name!r} must be {ndim}-D, got shape {array.shape}")
        return array

    def optional_const(self, node, index, k, ndim=None):
        return self.const(node, index, node.input[k], ndim) if len(node.input) > k and node.input[k] else None

    def tensor(self, node, index, tensor, what):
        """A TensorProto as an array, checked against its own dims before it is materialised."""
        from onnx import numpy_helper

        if tensor.data_location == tensor.EXTERNAL or tensor.external_data:
            self.fail(node, index, f"{what} keeps its data in an external file")
        dims = list(tensor.dims)
        if any(d < 0 for d in dims):
            raise InvalidModelError(f"{self.source}: {what} has negative dims {dims}")
        count = math.prod(dims)
        if tensor.data_type in self.float_types:
            itemsize = np.dtype(self.float_types[tensor.data_type]).itemsize
            stored = len(tensor.raw_data) // itemsize if tensor.raw_data else (
                len(tensor.float_data) or len(tensor.double_data) or len(tensor.int32_data))
        elif tensor.data_type in _INT_TYPES:
            itemsize = np.dtype(_INT_TYPES[tensor.data_type]).itemsize
            stored = len(tensor.raw_data) // itemsize if tensor.raw_data else (
                len(tensor.int64_data) or len(tensor.int32_data))
        else:
            self.fail(node, index, f"{what} has an unsupported element type {tensor.data_type}")
        if stored != count:
            raise InvalidModelError(f"{self.source}: {what} claims dims {dims} ({count} values) but holds {stored}")
        return numpy_helper.to_array(tensor)

    def emit(self, node, index, module, inputs, name=None, output=True):
        """Add `module` as a layer reading value ids `inputs`; its output becomes the node's first output
        (unless output=False). Shapes are checked where the input's is known. Returns its value id."""
        shapes = [self.shapes[v] for v in inputs]
        shape = None
        if all(s is not None for s in shapes):
            try:
                shape = tuple(int(n) for n in module.output_shape(*shapes))
            except ValueError as e:
                self.invalid(node, index, f"inputs of shapes {' and '.join(map(str, shapes))}: {e}")
        self.layers.append((self.unique(name or self.layer_name(node, index)), module, tuple(inputs)))
        self.shapes.append(shape)
        if shape is not None:
            self.ranks.append(len(shape) + 1)
        elif isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            self.ranks.append(4)
        elif isinstance(module, (nn.Flatten, nn.Linear)):
            self.ranks.append(2)
        else:
            self.ranks.append(self.ranks[inputs[0]])
        if output:
            self.values[node.output[0]] = len(self.layers)
        return len(self.layers)

    def layer_name(self, node, index, weight=None):
        """A weight "layer1.0.conv1.weight" names its layer "layer1.0.conv1" (PyTorch's module path);
        else the node's name, read as PyTorch's scopes where it is one ("/layer1/layer1.0/conv1/Conv" ->
        "layer1.0.conv1")."""
        if weight and weight.endswith(".weight") and not any(c in weight for c in ":/ \t\n"):
            return weight[: -len(".weight")]
        scopes = ["_".join(s.split()) for s in node.name.split("/") if s.strip()]
        if len(scopes) > 1 and scopes[-1].startswith(node.op_type):
            scopes.pop()  # the op, after the module's path
        if not scopes:
            return f"{node.op_type}_{index}"
        name = scopes[0]
        for scope in scopes[1:]:  # each scope repeats the end of its parent's path: "features.1", "conv.0"
            parts = name.split(".")
            k = next((k for k in range(len(parts)) if scope.startswith(".".join(parts[k:]) + ".")), len(parts))
            name = ".".join(parts[:k] + [scope])
        return name

    def unique(self, name):
        base, k = name, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    # -- attributes and windows ---------------------------------------------

    def attrs(self, node, index, allowed):
        from onnx import helper

        got = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        for name in got:
            if name not in allowed:
                self.fail(node, index, f"attribute {name} is not supported")
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in got.items()}

    def symmetric_pads(self, node, index, pads):
        if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
            self.fail(node, index, f"pads {list(pads)}: cyconv pads top/bottom and left/right alike")
        return pads[0], pads[1]

    def window(self, node, index, a, kernel, dilation=(1, 1)):
        strides = tuple(a.get("strides", [1, 1]))
        if len(kernel) != 2 or len(strides) != 2 or len(dilation) != 2:
            self.fail(node, index, f"kernel_shape {list(kernel)}: only 2-D windows are supported")
        auto_pad = a.get("auto_pad", "NOTSET")
        span = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
        if auto_pad == "NOTSET":
            pads = self.symmetric_pads(node, index, a.get("pads", [0, 0, 0, 0]))
        elif auto_pad == "VALID":
            pads = (0, 0)
        elif auto_pad == "SAME_UPPER" and strides == (1, 1) and all(s % 2 == 1 for s in span):
            pads = ((span[0] - 1) // 2, (span[1] - 1) // 2)  # the same on both sides, whatever the image size
        else:
            self.fail(node, index, f"auto_pad {auto_pad} (with strides {list(strides)}, kernel {list(kernel)}) "
                                   "is not supported: NOTSET, VALID, and SAME_UPPER for odd kernels at stride 1 are")
        return tuple(int(k) for k in kernel), tuple(int(s) for s in strides), tuple(int(p) for p in pads)

    def spatial_axes(self, node, index, axes):
        """True if `axes` are H and W of an (N, C, H, W) value."""
        rank = 4 if self.ranks[self.value(node, index, node.input[0])] in (None, 4) else None
        return rank is not None and sorted(int(a) % 4 if a < 0 else int(a) for a in axes) == [2, 3]

    # -- layers -------------------------------------------------------------

    def _Conv(self, node, i):
        a = self.attrs(node, i, {"kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"})
        x = self.value(node, i, node.input[0])
        weight = self.const(node, i, node.input[1], ndim=4)
        bias = self.optional_const(node, i, 2, ndim=1)
        groups, dilation = int(a.get("group", 1)), tuple(int(d) for d in a.get("dilations", [1, 1]))
        kernel = tuple(a.get("kernel_shape", weight.shape[2:]))
        if kernel != weight.shape[2:]:
            self.fail(node, i, f"kernel_shape {list(kernel)} does not match the weight's {weight.shape}")
        if groups < 1 or weight.shape[0] % groups:
            self.invalid(node, i, f"group {groups} does not divide the {weight.shape[0]} output channels")
        if any(d < 1 for d in dilation):
            self.invalid(node, i, f"dilations {list(dilation)} must be positive")
        if bias is not None and bias.shape != (weight.shape[0],):
            self.invalid(node, i, f"bias shape {bias.shape} for {weight.shape[0]} output channels")
        kernel, stride, padding = self.window(node, i, a, kernel, dilation)
        layer = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], kernel, stride, padding, dilation, groups,
                          bias=bias is not None, rng=np.random.default_rng(0))
        layer.weight.data[...] = weight
        if bias is not None:
            layer.bias.data[...] = bias
        self.emit(node, i, layer, [x], self.layer_name(node, i, node.input[1]))

    def _pool(self, node, i, allowed):
        a = self.attrs(node, i, allowed)
        if a.get("ceil_mode", 0) != 0:
            self.fail(node, i, "ceil_mode 1 is not supported")
        if a.get("storage_order", 0) != 0:
            self.fail(node, i, "storage_order 1 is not supported")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            self.fail(node, i, f"dilations {a['dilations']} are not supported")
        if len(node.output) > 1 and node.output[1] and node.output[1] in self.readers:
            self.fail(node, i, "the Indices output is not supported")
        if "kernel_shape" not in a:
            self.fail(node, i, "kernel_shape is required")
        kernel, stride, padding = self.window(node, i, a, a["kernel_shape"])
        if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
            self.fail(node, i, f"pads {list(padding)} over half the kernel {list(kernel)} are not supported")
        return a, kernel, stride, padding

    def _MaxPool(self, node, i):
        _, kernel, stride, padding = self._pool(
            node, i, {"kernel_shape", "strides", "pads", "dilations", "auto_pad", "ceil_mode", "storage_order"})
        self.emit(node, i, nn.MaxPool2d(kernel, stride, padding), [self.value(node, i, node.input[0])])

    def _AveragePool(self, node, i):
        a, kernel, stride, padding = self._pool(
            node, i, {"kernel_shape", "strides", "pads", "auto_pad", "ceil_mode", "count_include_pad", "dilations"})
        layer = nn.AvgPool2d(kernel, stride, padding, count_include_pad=bool(a.get("count_include_pad", 0)))
        self.emit(node, i, layer, [self.value(node, i, node.input[0])])

    def global_pool(self, node, i, x):
        if self.ranks[x] not in (None, 4):
            self.fail(node, i, f"pools a rank-{self.ranks[x]} value: only (N, C, H, W) images are supported")
        return nn.AdaptiveAvgPool2d(1)

    def _GlobalAveragePool(self, node, i):
        self.attrs(node, i, set())
        x = self.value(node, i, node.input[0])
        self.emit(node, i, self.global_pool(node, i, x), [x])

    def _ReduceMean(self, node, i):
        a = self.attrs(node, i, {"axes", "keepdims", "noop_with_empty_axes"})
        x = self.value(node, i, node.input[0])
        axes = a.get("axes")
        if len(node.input) > 1 and node.input[1]:  # opset 18: axes as an input
            axes = self.const(node, i, node.input[1]).reshape(-1).tolist()
        if axes is None or not self.spatial_axes(node, i, axes):
            self.fail(node, i, f"axes {axes}: only the mean over H and W of (N, C, H, W) images is supported")
        pooled = self.emit(node, i, self.global_pool(node, i, x), [x], output=a.get("keepdims", 1) != 0)
        if a.get("keepdims", 1) == 0:  # (N, C) rather than (N, C, 1, 1)
            self.emit(node, i, nn.Flatten(), [pooled], f"{self.layer_name(node, i)}.flatten")

    def _activation(self, node, i, layer):
        self.attrs(node, i, set())
        self.emit(node, i, layer, [self.value(node, i, node.input[0])])

    def _Relu(self, node, i):
        self._activation(node, i, nn.ReLU())

    def _Sigmoid(self, node, i):
        self._activation(node, i, nn.Sigmoid())

    def _Tanh(self, node, i):
        self._activation(node, i, nn.Tanh())

    def _Clip(self, node, i):
        bounds = []
        if self.opset < 11:
            a = self.attrs(node, i, {"min", "max"})
            bounds = [a.get("min", -math.inf), a.get("max", math.inf)]
        else:
            self.attrs(node, i, set())
            for k, default in ((1, -math.inf), (2, math.inf)):
                bound = self.optional_const(node, i, k)
                if bound is not None and bound.size != 1:
                    self.fail(node, i, f"bound {node.input[k]!r} of shape {bound.shape}: must be a scalar")
                bounds.append(default if bound is None else float(bound.reshape(-1)[0]))
        low, high = bounds
        if low == 0 and high == math.inf:
            layer = nn.ReLU()
        elif low == 0 and high == 6:
            layer = nn.ReLU6()
        elif math.isfinite(low) and math.isfinite(high) and low <= high:
            layer = nn.Hardtanh(low, high)
        else:
            self.fail(node, i, f"bounds ({low}, {high}): cyconv clamps to (0, inf) (ReLU), (0, 6) (ReLU6) or "
                               "finite bounds (Hardtanh)")
        self.emit(node, i, layer, [self.value(node, i, node.input[0])])

    def _Flatten(self, node, i):
        a = self.attrs(node, i, {"axis"})
        if a.get("axis", 1) != 1:
            self.fail(node, i, f"axis {a['axis']}: only axis 1 (keep the batch) is supported")
        self.emit(node, i, nn.Flatten(), [self.value(node, i, node.input[0])])

    def _Reshape(self, node, i):
        a = self.attrs(node, i, {"allowzero"})
        x = self.value(node, i, node.input[0])
        shape = self.const(node, i, node.input[1], ndim=1)
        per_image = self.shapes[x]
        features = None if per_image is None else math.prod(per_image)
        flatten = shape.dtype.kind == "i" and len(shape) == 2 and (
            (shape[0] == 0 and shape[1] == -1 and not a.get("allowzero", 0))  # (batch, -1)
            or (shape[0] == 1 and shape[1] == -1)  # one image's, as exporters that fix the batch write it
            or (shape[0] == -1 and shape[1] >= 1 and features in (None, shape[1])))  # (-1, features)
        if not flatten:
            self.fail(node, i, f"shape {shape.tolist()}: only a reshape to (N, -1) (a flatten) is supported")
        self.emit(node, i, nn.Flatten(), [x])

    def linear(self, node, i, x, weight, bias, name):
        if self.ranks[x] not in (None, 2):
            self.fail(node, i, f"multiplies a rank-{self.ranks[x]} value: only (N, features) is supported "
                               "(a Flatten missing?)")
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, rng=np.random.default_rng(0))
        layer.weight.data[...] = weight
        if bias is not None:
            layer.bias.data[...] = bias
        self.emit(node, i, layer, [x], name)

    def _Gemm(self, node, i):
        a = self.attrs(node, i, {"alpha", "beta", "transA", "transB", "broadcast"})
        if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0) != 0:
            self.fail(node, i, f"alpha {a.get('alpha', 1.0)}, beta {a.get('beta', 1.0)}, transA "
                               f"{a.get('transA', 0)}: only alpha = beta = 1 and transA 0 are supported")
        x = self.value(node, i, node.input[0])
        weight = self.const(node, i, node.input[1], ndim=2)
        if a.get("transB", 0) == 0:
            weight = weight.T  # Gemm's B is (in, out); a Linear's weight (out, in)
        bias = self.optional_const(node, i, 2)
        if bias is not None:
            if bias.size != weight.shape[0] or bias.ndim > 2:
                self.fail(node, i, f"bias of shape {bias.shape}: only one bias per output ({weight.shape[0]}) "
                                   "is supported")
            bias = bias.reshape(-1)
        self.linear(node, i, x, np.ascontiguousarray(weight), bias, self.layer_name(node, i, node.input[1]))

    def _MatMul(self, node, i):
        self.attrs(node, i, set())
        x = self.value(node, i, node.input[0])
        weight = self.const(node, i, node.input[1], ndim=2)  # (in, out); an Add after it may give the bias
        self.linear(node, i, x, np.ascontiguousarray(weight.T), None, self.layer_name(node, i, node.input[1]))

    def _Add(self, node, i):
        a = self.attrs(node, i, {"broadcast", "axis"})  # opset < 7
        constant = [self.is_constant(name) for name in node.input]
        if not any(constant):
            self.merge(node, i, list(node.input))
            return
        x_name, c_name = (node.input[1], node.input[0]) if constant[0] else (node.input[0], node.input[1])
        self.add_bias(node, i, x_name, self.const(node, i, c_name), a.get("axis") if a.get("broadcast") else None)

    def _Sum(self, node, i):
        self.attrs(node, i, set())
        if len(node.input) == 1:
            self.values[node.output[0]] = self.value(node, i, node.input[0])
        else:
            self.merge(node, i, list(node.input))

    def merge(self, node, i, names):
        xs = [self.value(node, i, name) for name in names]
        shapes, ranks = [self.shapes[x] for x in xs], [self.ranks[x] for x in xs]
        if None not in shapes and len(set(shapes)) > 1 or None not in ranks and len(set(ranks)) > 1:
            self.fail(node, i, f"adds values of shapes {' and '.join(map(str, shapes if None not in shapes else ranks))}:"
                               " cyconv adds values of one shape (no broadcasting)")
        self.emit(node, i, nn.Add(), xs)

    def add_bias(self, node, i, x_name, c, axis):
        """x + c where x is a Conv's or Linear's output that nothing else reads and c one value per output
        channel (or one in all): c goes into the layer's bias."""
        x = self.value(node, i, x_name)
        layer = self.layers[x - 1][1] if x else None
        if type(layer) not in (nn.Conv2d, nn.Linear) or self.readers.get(x_name) != 1:
            self.fail(node, i, f"adds a constant to {x_name!r}: cyconv adds a constant only as the bias of the "
                               "Conv or Gemm/MatMul whose output it is, when nothing else reads that output")
        channels = layer.weight.data.shape[0]
        rank = 4 if type(layer) is nn.Conv2d else 2
        if axis is not None:  # the old broadcast: c's dims line up with x's from `axis` on
            shape = (1,) * axis + c.shape + (1,) * (rank - axis - c.ndim) if 0 <= axis <= rank - c.ndim else None
        else:
            shape = (1,) * (rank - c.ndim) + c.shape if c.ndim <= rank else None
        if c.size == 1:
            bias = np.full(channels, c.reshape(-1)[0], np.float32)
        elif shape is not None and shape[1] == channels and math.prod(shape) == channels:
            bias = c.reshape(-1).astype(np.float32)
        else:
            self.fail(node, i, f"constant of shape {c.shape}: a bias needs one value per output channel "
                               f"({channels})")
        if layer.bias is None:
            layer.bias = nn.Parameter(bias.astype(layer.weight.data.dtype))
        else:
            layer.bias.data += bias
        self.values[node.output[0]] = x

    def _Concat(self, node, i):
        a = self.attrs(node, i, {"axis"})
        xs = [self.value(node, i, name) for name in node.input]
        rank = self.ranks[xs[0]]
        axis = a.get("axis", 1)
        if not (axis == 1 or rank is not None and axis == 1 - rank):
            self.fail(node, i, f"axis {axis}: only the channels (axis 1) are supported")
        self.emit(node, i, nn.Concat(), xs)

    def _Dropout(self, node, i):
        a = self.attrs(node, i, {"seed", "ratio", "is_test"})  # opset < 12 kept ratio as an attribute
        if len(node.output) > 1 and node.output[1] in self.readers:
            self.fail(node, i, "its mask output is used")
        mode = self.optional_const(node, i, 2)
        if mode is not None and (mode.size != 1 or bool(mode.reshape(-1)[0])):
            self.fail(node, i, "training_mode must be a constant false (inference)")
        ratio = a.get("ratio", 0.5)
        given = self.optional_const(node, i, 1)
        if given is not None:
            if given.size != 1:
                self.fail(node, i, f"ratio of shape {given.shape}: must be a scalar")
            ratio = float(given.reshape(-1)[0])
        if not 0 <= ratio < 1:
            self.fail(node, i, f"ratio {ratio}: must be in [0, 1)")
        layer = nn.Dropout(ratio, rng=np.random.default_rng(0), persistent=False)  # nothing at inference
        self.emit(node, i, layer, [self.value(node, i, node.input[0])])

    def _BatchNormalization(self, node, i):
        a = self.attrs(node, i, {"epsilon", "momentum", "training_mode", "spatial", "is_test", "consumed_inputs"})
        if a.get("training_mode", 0) != 0:
            self.fail(node, i, "training_mode 1: only inference-mode batch normalisation is supported")
        if a.get("spatial", 1) != 1:
            self.fail(node, i, "spatial 0 (per-location statistics) is not supported")
        if any(name in self.readers for name in node.output[1:]):
            self.fail(node, i, "uses outputs other than Y (training-mode statistics)")
        x = self.value(node, i, node.input[0])
        scale, bias, mean, var = (self.const(node, i, name, ndim=1) for name in node.input[1:])
        C = scale.shape[0]
        if not all(v.shape == (C,) for v in (bias, mean, var)):
            self.invalid(node, i, f"scale, B, mean and var must all have shape ({C},), got "
                                  f"{[v.shape for v in (scale, bias, mean, var)]}")
        if (var < 0).any():
            self.invalid(node, i, "negative variance")
        if self.ranks[x] not in (2, 3, 4):
            self.fail(node, i, "cannot tell whether its input is (N, C) or (N, C, H, W): give the graph input "
                               "a shape, or put the node after a Conv/Gemm")
        cls = nn.BatchNorm2d if self.ranks[x] == 4 else nn.BatchNorm1d
        momentum = 1 - float(a.get("momentum", 0.9))
        layer = cls(C, eps=float(a.get("epsilon", 1e-5)), momentum=min(max(momentum, 0.0), 1.0))
        layer.weight.data[...], layer.bias.data[...] = scale, bias
        layer.running_mean[...], layer.running_var[...] = mean, var
        weight = node.input[1]
        self.emit(node, i, layer, [x], self.layer_name(node, i, weight if weight.endswith(".weight") else None))

    def _Identity(self, node, i):
        self.values[node.output[0]] = self.value(node, i, node.input[0])

    def _softmax(self, node, i, layer):
        a = self.attrs(node, i, {"axis"})
        x = self.value(node, i, node.input[0])
        if node.output[0] != self.graph.output[0].name:
            self.fail(node, i, "only as the graph's last node (over the classes of the scores)")
        default = -1 if self.opset >= 13 else 1
        if a.get("axis", default) not in (1, -1) or self.ranks[x] not in (None, 2) and a.get("axis", default) == -1:
            self.fail(node, i, f"axis {a.get('axis', default)}: only the classes (axis 1 of (N, K) scores) are "
                               "supported")
        if self.drop_final_softmax:
            self.values[node.output[0]] = x
        else:
            self.emit(node, i, layer, [x])

    def _Softmax(self, node, i):
        self._softmax(node, i, nn.Softmax(dim=1))

    def _LogSoftmax(self, node, i):
        self._softmax(node, i, nn.LogSoftmax(dim=1))

    def _constants_only(self, node, i):
        computed = next(name for name in node.input if name and not self.is_constant(name))
        self.fail(node, i, f"computes on {computed!r}, a value of the graph's input: cyconv folds {node.op_type} "
                           "on constants only")

    # -- constants ----------------------------------------------------------

    def fold(self, node, i):
        args = [self.const(node, i, name) if name else None for name in node.input]
        try:
            result = np.asarray(_FOLDS[node.op_type](self, node, i, *args))
        except (ValueError, IndexError, TypeError, ZeroDivisionError) as e:
            self.invalid(node, i, f"cannot be computed: {e}")
        self.constants[node.output[0]] = result

    def folded_size(self, node, i, shape):
        count = math.prod(int(n) for n in shape)
        if any(int(n) < 0 for n in shape) or count > MAX_FOLDED_VALUES:
            self.fail(node, i, f"a constant of shape {[int(n) for n in shape]}: more than cyconv computes at load "
                               f"({MAX_FOLDED_VALUES} values)")
        return count


def _fold_constant(loader, node, i):
    from onnx import helper

    attrs = {a.name: a for a in node.attribute}
    if len(attrs) != 1 or next(iter(attrs)) not in ("value", "value_float", "value_floats", "value_int",
                                                    "value_ints"):
        loader.fail(node, i, f"attributes {sorted(attrs)}: a tensor, float(s) or int(s) value is supported")
    name, attr = next(iter(attrs.items()))
    if name == "value":
        return loader.tensor(node, i, attr.t, "its value")
    value = helper.get_attribute_value(attr)
    return np.array(value, np.float32 if name.startswith("value_float") else np.int64)


def _fold_constant_of_shape(loader, node, i, shape):
    attrs = {a.name: a for a in node.attribute}
    value = loader.tensor(node, i, attrs["value"].t, "its value") if "value" in attrs else np.zeros(1, np.float32)
    loader.folded_size(node, i, shape.reshape(-1))
    if value.size != 1:
        loader.invalid(node, i, f"value of shape {value.shape}: must hold one element")
    return np.full(tuple(int(n) for n in shape.reshape(-1)), value.reshape(-1)[0], value.dtype)


def _axes(loader, node, i, given):
    """Unsqueeze's and Squeeze's axes: an attribute before opset 13, an input since."""
    if given is not None:
        return [int(a) for a in given.reshape(-1)]
    return list(loader.attrs(node, i, {"axes"}).get("axes", []))


def _fold_unsqueeze(loader, node, i, x, axes=None):
    axes = _axes(loader, node, i, axes)
    rank = x.ndim + len(axes)
    return x.reshape(_unsqueezed(x.shape, sorted(a % rank for a in axes)))


def _unsqueezed(shape, axes):
    shape = list(shape)
    for a in axes:
        shape.insert(a, 1)
    return shape


def _fold_squeeze(loader, node, i, x, axes=None):
    axes = _axes(loader, node, i, axes)
    return np.squeeze(x, axis=tuple(axes) if axes else None)


def _fold_reshape(loader, node, i, x, shape):
    allowzero = loader.attrs(node, i, {"allowzero"}).get("allowzero", 0)
    shape = [int(n) for n in shape.reshape(-1)]
    if not allowzero:
        shape = [x.shape[k] if n == 0 else n for k, n in enumerate(shape)]
    return x.reshape(shape)


def _fold_flatten(loader, node, i, x):
    axis = loader.attrs(node, i, {"axis"}).get("axis", 1) % (x.ndim + 1) if x.ndim else 0
    return x.reshape(math.prod(x.shape[:axis]), -1)


def _fold_cast(loader, node, i, x):
    to = loader.attrs(node, i, {"to", "saturate"}).get("to")
    dtype = {1: np.float32, 11: np.float64, 10: np.float16, **_INT_TYPES}.get(to)
    if dtype is None:
        loader.fail(node, i, f"cast to element type {to} is not supported")
    return x.astype(dtype)


def _binary(op):
    def fold(loader, node, i, a, b):
        loader.attrs(node, i, {"broadcast", "axis"})
        loader.folded_size(node, i, np.broadcast_shapes(a.shape, b.shape))
        return op(a, b)
    return fold


def _unary(op):
    def fold(loader, node, i, x):
        loader.attrs(node, i, set())
        return op(x)
    return fold


def _divide(a, b):
    if a.dtype.kind == "i" and b.dtype.kind == "i":
        return np.trunc(a / b).astype(np.result_type(a, b))  # ONNX's integer division truncates
    return a / b


_INT_TYPES = {6: np.int32, 7: np.int64, 9: np.bool_}

# op type -> fold(loader, node, index, *constant inputs): what a node computes when all its inputs are
# constants (a weight computed by a subgraph of constants, as older exporters wrote them).
_FOLDS = {
    "Constant": _fold_constant,
    "ConstantOfShape": _fold_constant_of_shape,
    "Identity": _unary(lambda x: x),
    "Transpose": lambda loader, node, i, x: np.transpose(x, loader.attrs(node, i, {"perm"}).get("perm")),
    "Unsqueeze": _fold_unsqueeze,
    "Squeeze": _fold_squeeze,
    "Reshape": _fold_reshape,
    "Flatten": _fold_flatten,
    "Concat": lambda loader, node, i, *xs: np.concatenate(xs, axis=loader.attrs(node, i, {"axis"}).get("axis", 0)),
    "Cast": _fold_cast,
    "Add": _binary(np.add), "Sub": _binary(np.subtract), "Mul": _binary(np.multiply), "Div": _binary(_divide),
    "Sqrt": _unary(np.sqrt), "Reciprocal": _unary(np.reciprocal), "Neg": _unary(np.negative),
}

# op type -> the method that turns a node into layers. An explicit table: an op type is never looked up
# as an attribute name.
_HANDLERS = {
    "Conv": _Loader._Conv, "MaxPool": _Loader._MaxPool, "AveragePool": _Loader._AveragePool,
    "GlobalAveragePool": _Loader._GlobalAveragePool, "ReduceMean": _Loader._ReduceMean,
    "Relu": _Loader._Relu, "Sigmoid": _Loader._Sigmoid, "Tanh": _Loader._Tanh, "Clip": _Loader._Clip,
    "Flatten": _Loader._Flatten, "Reshape": _Loader._Reshape, "Gemm": _Loader._Gemm, "MatMul": _Loader._MatMul,
    "Add": _Loader._Add, "Sum": _Loader._Sum, "Concat": _Loader._Concat, "Dropout": _Loader._Dropout,
    "BatchNormalization": _Loader._BatchNormalization, "Identity": _Loader._Identity,
    "Softmax": _Loader._Softmax, "LogSoftmax": _Loader._LogSoftmax,
    **{op: _Loader._constants_only for op in _FOLDS if op not in ("Identity", "Reshape", "Flatten", "Add",
                                                                  "Concat")},
}

# op type -> (fewest, most) inputs; the first `fewest` must be given. (1, 1) when not listed.
_ARITY = {
    "Conv": (2, 3), "Gemm": (2, 3), "MatMul": (2, 2), "Add": (2, 2), "Sub": (2, 2), "Mul": (2, 2), "Div": (2, 2),
    "Sum": (1, math.inf), "Concat": (1, math.inf), "Clip": (1, 3), "Reshape": (2, 2), "Dropout": (1, 3),
    "BatchNormalization": (5, 5), "ReduceMean": (1, 2), "Unsqueeze": (1, 2), "Squeeze": (1, 2), "Constant": (0, 0),
}

