"""cyconv.graph: a model as a graph of layers, the one description that training, `cyconv.compile`,
ONNX export and the summary all read.

A model is a tree of modules (`named_children`), and its forward says how data flows between the
leaves (the layers that compute: Conv2d, ReLU, Add, ...). `trace(model)` runs that forward once on
symbolic values instead of arrays and records every leaf call: the result is a list of nodes, each a
layer and the values it reads (value 0 is the model's input, value i + 1 the output of node i), in an
order where every value is produced before it is read. A value may feed several nodes (a residual
block's input feeds its body and its shortcut) and a node may read several values (Add, Concat).

    class Residual(nn.Module):                      # a composite module: a forward, no backward
        def __init__(self, c):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
            self.relu = nn.ReLU()

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return self.relu(y + x)                 # `+` of two values is an Add node

Calling a composite module on an array runs its traced graph (the `_Runner` below): each node's
forward in order, then on backward each node's backward in reverse, summing the gradients of a value
that fed several nodes. Fusions are rewrites of the node list, each written once in `FUSIONS`: a
pattern of layer types along a chain whose inner values have no other reader, and the fused op that
replaces it. Training runs the rewrites marked `training`; `cyconv.compile` runs all of them
(it also folds eval-mode BatchNorm into the convolution or linear layer before it, which only
inference can do) and lowers the fused nodes to its compiled ops.

A parameter-free layer may be called at several places (torchvision's BasicBlock calls its one
`relu` twice): each call becomes its own node (with its own saved state). A layer with parameters
called twice would share them, which cyconv leaves out: trace refuses it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from . import functional as F
from . import nn

__all__ = ["Value", "Node", "Trace", "trace", "layers", "run_unfused", "shapes", "FUSIONS", "fuse", "fold_batch_norms"]


class Value:
    """A symbolic value of a graph being traced: what a layer receives instead of an array.
    `a + b` records an Add node."""

    __slots__ = ("tracer", "index")

    def __init__(self, tracer, index):
        self.tracer, self.index = tracer, index

    def __add__(self, other):
        if not isinstance(other, Value):
            return NotImplemented
        return self.tracer.record(nn.Add(), (self, other), anonymous="add")

    __radd__ = __add__

    def __repr__(self):
        return f"Value({self.index})"


@dataclass
class Node:
    """One layer call: `name` is the layer's path in the model ("layer1.0.conv1"; "add", "add.1", ...
    for layers made by the trace itself), `inputs` the values it reads."""

    name: str
    module: nn.Module
    inputs: tuple

    @property
    def kind(self):
        return type(self.module)


@dataclass
class Trace:
    """The nodes of a model in execution order, and the value it returns."""

    nodes: list
    output: int

    def readers(self):
        """{value: [indices of the nodes that read it]} (the output counts as one reader, -1)."""
        readers = {v: [] for v in range(len(self.nodes) + 1)}
        for i, node in enumerate(self.nodes):
            for v in node.inputs:
                readers[v].append(i)
        readers[self.output].append(-1)
        return readers

    def is_chain(self):
        """Every node reads the value before it, and the model returns the last one."""
        return all(node.inputs == (i,) for i, node in enumerate(self.nodes)) and self.output == len(self.nodes)


class _Tracer:
    def __init__(self, root):
        self.root = root
        self.nodes = []
        self.names = {id(m): name for name, m in _named_modules(root)}
        self.used = {}        # id(module) -> how many nodes call it
        self.anonymous = {}   # base name -> count

    def record(self, module, inputs, anonymous=None):
        for i, v in enumerate(inputs):
            if not isinstance(v, Value) or v.tracer is not self:
                got = type(v).__name__
                raise TypeError(f"trace(): {type(module).__name__} got argument {i} of type {got}: inside a traced "
                                "forward, layers take the values other layers return (no arrays or constants)")
        name = self.names.get(id(module))
        if name is None:  # a layer the forward made (`a + b`): not a child, so it follows the model's mode
            module._original = (self.root,)
            base = anonymous or type(module).__name__.lower()
            count = self.anonymous.get(base, 0)
            self.anonymous[base] = count + 1
            name = base if count == 0 else f"{base}.{count}"
        calls = self.used.get(id(module), 0)
        self.used[id(module)] = calls + 1
        if calls:
            if module.parameters():
                raise TypeError(f"trace(): layer {name!r} ({type(module).__name__}) is called twice; layers with "
                                "parameters cannot be shared (cyconv leaves parameter sharing out)")
            original, module = module, copy.copy(module)  # its own saved state, the original's settings
            module._original = (original,)  # a tuple: not a child module
            name = f"{name}#{calls}"
        self.nodes.append(Node(name, module, tuple(v.index for v in inputs)))
        return Value(self, len(self.nodes))


def _named_modules(module, prefix=""):
    yield prefix, module
    for name, child in module.named_children():
        yield from _named_modules(child, f"{prefix}.{name}" if prefix else name)


def is_leaf(module):
    """A layer that computes (it has its own backward), as opposed to a composite of layers."""
    return type(module).backward is not nn.Module.backward


def trace(model) -> Trace:
    """The graph of `model` (a leaf layer is a graph of one node). The forward runs on symbolic values;
    nothing is computed and no layer's saved state changes."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"trace(): model must be a cyconv.nn.Module, got {type(model).__name__}")
    tracer = _Tracer(model)
    x = Value(tracer, 0)
    out = tracer.record(model, (x,)) if is_leaf(model) else model.forward(x)
    if not isinstance(out, Value) or out.tracer is not tracer:
        raise TypeError(f"trace(): {type(model).__name__}.forward must return the value of a layer, got "
                        f"{type(out).__name__}")
    return Trace(tracer.nodes, out.index)


def layers(model) -> list:
    """The layers of model in the order its forward runs them (one per call)."""
    return [node.module for node in trace(model).nodes]


def run_unfused(tr: Trace, x) -> list:
    """Every value of the graph for input x (value 0 is x), each layer run as itself in its current mode:
    for looking inside a model (cyconv.plots' feature maps), not for training."""
    values = [x]
    for node in tr.nodes:
        values.append(node.module.forward(*(values[v] for v in node.inputs)))
    return values


def shapes(tr: Trace, input_shape) -> list:
    """The per-image shape (no batch axis) of every value of the graph, for inputs of input_shape."""
    values = [tuple(int(s) for s in input_shape)]
    for node in tr.nodes:
        try:
            values.append(tuple(int(s) for s in node.module.output_shape(*(values[v] for v in node.inputs))))
        except ValueError as e:
            raise ValueError(f"layer {node.name} ({type(node.module).__name__}) {e}") from None
    return values


# ---------------------------------------------------------------------------
# Rewrites of the graph. Fusions: a pattern of layer types along a chain (each value inside it read by
# the next layer only; an element of the pattern is a type or a tuple of types), and which of its
# matches training runs too (training's fused kernels cover fewer cases than the predictor's op).
# Exact types, so a subclass with its own forward runs as itself. Longest patterns first.

@dataclass(frozen=True)
class Fusion:
    name: str
    pattern: tuple
    trainable: object = None  # layers -> whether training runs this match fused (None: never)

    def matches(self, layers, training):
        if not all(type(m) in (t if isinstance(t, tuple) else (t,)) for m, t in zip(layers, self.pattern)):
            return False
        return not training or (self.trainable is not None and self.trainable(layers))


def _activations():
    return tuple(getattr(nn, name) for name in ("ReLU", "Sigmoid", "Tanh", "Hardtanh", "ReLU6") if hasattr(nn, name))


ACTIVATIONS = _activations()       # what a convolution, linear layer, BatchNorm or Add can end in
POOLS = (nn.MaxPool2d, nn.AvgPool2d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _relu_max(act, pool):
    return type(act) is nn.ReLU and type(pool) is nn.MaxPool2d


def _plain(conv):
    """A convolution the fused training kernel takes: no groups, no dilation, and im2col's algorithm:
    "im2col", or "auto" unless CYCONV_CONV_ALGO / set_conv_algorithm names another when the model is
    first run (a layer asked for another algorithm, "measure" included, runs unfused, so that the
    algorithm it names is the one that runs)."""
    algorithm = F.get_conv_algorithm() if conv.algorithm == "auto" else conv.algorithm
    return conv.groups == 1 and conv.dilation == (1, 1) and algorithm in ("auto", "im2col")


FUSIONS = (
    # Each image's convolution output is activated and pooled while in cache, never written to memory.
    # Training has this kernel for ReLU and max pooling (functional.conv2d_relu_max_pool2d).
    Fusion("conv_act_pool", (nn.Conv2d, ACTIVATIONS, POOLS), trainable=lambda m: _plain(m[0]) and _relu_max(m[1], m[2])),
    # max_pool2d(relu(x)) in one pass: the ReLU's own read and write cost more than pooling.
    Fusion("relu_pool", (nn.ReLU, nn.MaxPool2d), trainable=lambda m: True),
    # act(a + b), the end of a residual block: one pass instead of two (training: ReLU).
    Fusion("add_act", (nn.Add, ACTIVATIONS), trainable=lambda m: type(m[1]) is nn.ReLU),
    # Inference only: the activation (or pooling) applied to each output block while it is in cache.
    Fusion("conv_act", (nn.Conv2d, ACTIVATIONS)),
    Fusion("conv_pool", (nn.Conv2d, POOLS)),
    Fusion("linear_act", (nn.Linear, ACTIVATIONS)),
    Fusion("batch_norm_act", (BATCH_NORMS, ACTIVATIONS)),
)


@dataclass
class Fused:
    """A run of nodes replaced by one fused op: `fusion` names it, `layers` are the original layers."""

    fusion: Fusion
    name: str
    layers: tuple
    inputs: tuple


def fuse(tr: Trace, *, training: bool, fusions=FUSIONS) -> list:
    """The nodes of tr with every applicable fusion applied: a list of (output value, step), a step
    being a Node (run as itself) or a Fused (a run of nodes as one op, producing its last node's
    value). Values are numbered as in tr."""
    readers, nodes = tr.readers(), tr.nodes
    steps, i = [], 0
    while i < len(nodes):
        match = next(((f, run) for f in fusions for run in [_chain(nodes, readers, i, len(f.pattern))]
                      if run is not None and f.matches([nodes[j].module for j in run], training)), None)
        if match is None:
            steps.append((i + 1, nodes[i]))
            i += 1
            continue
        fusion, run = match
        layers = tuple(nodes[j].module for j in run)
        steps.append((run[-1] + 1, Fused(fusion, nodes[run[0]].name, layers, nodes[run[0]].inputs)))
        i = run[-1] + 1
    return steps


def fold_batch_norms(tr: Trace) -> Trace:
    """Inference only: each eval-mode BatchNorm (running statistics) that is the only reader of a
    Conv2d's or Linear's output is folded into a copy of that layer (weight * scale per output channel,
    bias * scale + shift, computed in float64) and leaves the graph. The model is not changed."""
    readers = tr.readers()
    nodes, renumber, i = [], {0: 0}, 0
    while i < len(tr.nodes):
        node = tr.nodes[i]
        nxt = tr.nodes[i + 1] if i + 1 < len(tr.nodes) else None
        if (nxt is not None and type(node.module) in (nn.Conv2d, nn.Linear) and type(nxt.module) in BATCH_NORMS
                and nxt.inputs == (i + 1,) and readers[i + 1] == [i + 1] and nxt.module.track_running_stats
                and (type(node.module) is nn.Conv2d) == (type(nxt.module) is nn.BatchNorm2d)):
            nodes.append(Node(node.name, _folded(node.module, nxt.module), tuple(renumber[v] for v in node.inputs)))
            renumber[i + 1] = renumber[i + 2] = len(nodes)
            i += 2
            continue
        nodes.append(Node(node.name, node.module, tuple(renumber[v] for v in node.inputs)))
        renumber[i + 1] = len(nodes)
        i += 1
    return Trace(nodes, renumber[tr.output])


def batch_norm_scale_shift(bn):
    """(scale, shift) per channel, float64, of an eval-mode BatchNorm: y = x * scale + shift."""
    invstd = 1 / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    scale = invstd if bn.weight is None else invstd * bn.weight.data
    shift = -bn.running_mean * scale + (0 if bn.bias is None else bn.bias.data)
    return scale, shift


def _folded(layer, bn):
    scale, shift = batch_norm_scale_shift(bn)
    folded = copy.copy(layer)
    dtype = layer.weight.data.dtype
    w = layer.weight.data * scale.reshape((-1,) + (1,) * (layer.weight.data.ndim - 1))
    b = 0 if layer.bias is None else layer.bias.data.astype(np.float64)
    folded.weight = nn.Parameter(w.astype(dtype))
    folded.bias = nn.Parameter((b * scale + shift).astype(dtype))
    return folded


def _chain(nodes, readers, i, length):
    """Node indices i, i+1, ..., i+length-1 if each reads only the previous one's output and that
    output has no other reader; else None. (Fused runs are consecutive in execution order, which is
    how every traced chain of single-input layers appears.)"""
    if i + length > len(nodes):
        return None
    run = list(range(i, i + length))
    for a, b in zip(run, run[1:]):
        if nodes[b].inputs[-1:] != (a + 1,) or (len(nodes[b].inputs) != 1) or readers[a + 1] != [b]:
            return None
    return run


# ---------------------------------------------------------------------------
# Running a graph for training and eval: the runner behind every composite module.

class _Step:
    """One node run as itself: forward(*arrays) -> array; backward(grad, input_grad) -> a tuple with
    one input gradient (or None) per input."""

    def __init__(self, node):
        self.name, self.module, self.inputs = node.name, node.module, node.inputs
        self.layers = (node.module,)

    def sync(self):
        """A second call of a layer runs a copy (see _Tracer.record): it follows the original's mode."""
        for layer in self.layers:
            original = getattr(layer, "_original", None)
            if original is not None:
                layer.training = original[0].training

    def forward(self, *xs):
        self.sync()
        return self.module.forward(*xs)

    def backward(self, grad, input_grad):
        g = self.module.backward(grad, input_grad=input_grad)
        return tuple(g) if len(self.inputs) > 1 else (g,)


class _FusedStep(_Step):
    """A run of layers as one pass of a fused functional op. It keeps what its backward needs itself
    and marks its layers as run fused, so that their own backward refuses to run."""

    saved = None
    eval_forward = False

    def __init__(self, fused):
        self.name, self.layers, self.inputs = fused.name, fused.layers, fused.inputs

    def forward(self, *xs):
        self.sync()
        for layer in self.layers:
            layer._ran_fused()
        training = self.layers[0].training
        y, saved = self._run(*xs, training)
        self.saved, self.eval_forward = (saved if training else None), not training
        return y

    def backward(self, grad, input_grad):
        if self.saved is None:
            names = " -> ".join(type(m).__name__ for m in self.layers)
            when = "the last forward ran in eval mode; call .train() first" if self.eval_forward else \
                "called before forward()"
            raise RuntimeError(f"backward(): {names} (fused, at layer {self.name!r}): {when}")
        return self._backward(grad, input_grad, *self.saved)


class _ConvReluPool(_FusedStep):
    """Conv2d -> ReLU -> MaxPool2d as functional.conv2d_relu_max_pool2d: each image's convolution
    output is pooled while in cache, so neither it nor its gradient is ever written to memory.
    Results are exactly the three layers'."""

    def _run(self, x, training):
        conv, _, pool = self.layers
        bias = None if conv.bias is None else conv.bias.data
        args = (x, conv.weight.data, bias, conv.stride, conv.padding, pool.kernel_size, pool.stride,
                pool.padding)
        if not training:
            return F.conv2d_relu_max_pool2d(*args), None
        y, indices = F.conv2d_relu_max_pool2d(*args, return_indices=True)
        return y, (x, y, indices)

    def _backward(self, grad, input_grad, x, y, indices):
        conv = self.layers[0]
        grad_x, _, _ = nn._parameter_gradients(conv.weight, conv.bias, lambda out, accumulate:
                                               F.conv2d_relu_max_pool2d_backward(
                                                   grad, y, indices, x, conv.weight.data, conv.stride,
                                                   conv.padding, grad_input=input_grad, out=out,
                                                   accumulate=accumulate))
        return (grad_x,)


class _ReluPool(_FusedStep):
    """ReLU -> MaxPool2d as functional.relu_max_pool2d. Results are exactly the pair's."""

    def _run(self, x, training):
        pool = self.layers[1]
        args = (x, pool.kernel_size, pool.stride, pool.padding)
        if not training:
            return F.relu_max_pool2d(*args), None
        y, indices = F.relu_max_pool2d(*args, return_indices=True)
        return y, (y, indices, x.shape)

    def _backward(self, grad, input_grad, y, indices, input_shape):
        return (F.relu_max_pool2d_backward(grad, y, indices, input_shape) if input_grad else None,)


class _AddRelu(_FusedStep):
    """Add -> ReLU as functional.add(..., relu=True): relu(a + b) in one pass (the last two inputs,
    after the sum of any others). Its backward hands the same gradient array to every input (nobody
    writes into a gradient it was given)."""

    def _run(self, *args):
        *xs, training = args
        y = xs[0]
        for x in xs[1:-1]:
            y = F.add(y, x)
        y = F.add(y, xs[-1], relu=True)
        return y, (y,)

    def _backward(self, grad, input_grad, y):
        g = F.relu_backward(grad, y) if input_grad else None
        return (g,) * len(self.inputs)


_FUSED_STEPS = {"conv_act_pool": _ConvReluPool, "relu_pool": _ReluPool, "add_act": _AddRelu}


class _Runner:
    """A composite module's traced, fused graph, run for training or eval."""

    def __init__(self, model):
        tr = trace(model)
        self.trace = tr
        self.steps = []
        for out, step in fuse(tr, training=True):
            runner_step = _Step(step) if isinstance(step, Node) else _FUSED_STEPS[step.fusion.name](step)
            runner_step.out = out
            self.steps.append(runner_step)
        self.output = tr.output
        self.model_name = type(model).__name__
        # Which values a gradient must reach: a value made by a step that learns or reads such a value
        # (learns), and with input_grad, every value that depends on the input (from_input).
        learns, from_input = [False] * (len(tr.nodes) + 1), [True] + [False] * len(tr.nodes)
        for step in self.steps:
            learns[step.out] = any(m.parameters() for m in step.layers) or any(learns[v] for v in step.inputs)
            from_input[step.out] = any(from_input[v] for v in step.inputs)
        self.learns, self.from_input = learns, from_input
        self.ran = False

    def forward(self, x):
        values = {0: x}
        last_read = {}
        for k, step in enumerate(self.steps):
            for v in step.inputs:
                last_read[v] = k
        last_read[self.output] = len(self.steps)
        for k, step in enumerate(self.steps):
            values[step.out] = step.forward(*(values[v] for v in step.inputs))
            for v in set(step.inputs):
                if last_read[v] == k:
                    del values[v]
        self.ran = True
        return values[self.output]

    def backward(self, grad_output, input_grad):
        if not self.ran:
            raise RuntimeError(f"{self.model_name}.backward(): called before forward()")
        needs = [a or (input_grad and b) for a, b in zip(self.learns, self.from_input)]
        grads, owned = {self.output: grad_output}, set()
        for step in reversed(self.steps):
            g = grads.pop(step.out, None)
            if g is None or not needs[step.out]:
                continue
            want = [needs[v] for v in step.inputs]
            results = step.backward(g, any(want))
            for v, w, r in zip(step.inputs, want, results):
                if not w or r is None:
                    continue
                if v not in grads:
                    grads[v] = r
                elif v in owned:
                    grads[v] += r
                else:  # the first gradient may be shared with another value: sum into a new array
                    grads[v] = grads[v] + r
                    owned.add(v)
        return grads.get(0) if input_grad else None


def runner(model):
    """The model's runner, traced on first use and kept (a model's structure is fixed once built)."""
    r = model.__dict__.get("_runner")
    if r is None:
        r = _Runner(model)
        model.__dict__["_runner"] = r
    return r
