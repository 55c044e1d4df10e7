"""cyconv.nn: layers that hold parameters and delegate to cyconv.functional.

Two levels, as in PyTorch: `cyconv.functional` is stateless; a module here keeps
its parameters and what its backward needs, and calls one functional per pass.
There is no autograd: `backward(grad_output)` of a module takes the gradient of
the loss with respect to its output, returns the gradient with respect to its
input, and ADDS (+=) the gradients of its parameters into their `.grad`, so
gradients of several backward passes accumulate until `zero_grad()`.

    model = Sequential(Conv2d(1, 20, 5, padding=2), ReLU(), MaxPool2d(2), Flatten(), Linear(3920, 10))
    logits = model(x)
    loss, grad_logits = functional.softmax_cross_entropy(logits, target)
    model.zero_grad()
    model.backward(grad_logits)          # a Sequential returns None: nobody needs d loss / d x

What backward needs is kept from the last training-mode forward, by reference
(do not modify a layer's input in place between forward and backward): Conv2d
and Linear keep their input, ReLU, Sigmoid, Tanh, Softmax and LogSoftmax their
output, MaxPool2d the argmax indices and the input shape, AvgPool2d and Flatten
the input shape, Dropout its mask's seed, BatchNorm its input and the statistics
it normalised with. In eval mode forward keeps nothing,
and a later backward raises RuntimeError. Inside a Sequential, Conv2d -> ReLU ->
MaxPool2d and ReLU -> MaxPool2d run fused, each as one pass (same results; the
Sequential's backward undoes them as one): see `Sequential`; the layers
themselves know nothing of it.

Default initialisation is PyTorch's: weight and bias ~ U(-b, b) with
b = 1/sqrt(fan_in) (what `kaiming_uniform_(a=sqrt(5))` gives), drawn in float64
from the `rng` given (a numpy.random.Generator; None means a fresh
`np.random.default_rng()`, seeded from the OS) and then cast, so float32 and
float64 layers built from the same seed hold the same values up to rounding.

Buffers are state that is not learned but is saved: BatchNorm's running
statistics and Dropout's mask counter. They are plain arrays named in the
module's `_buffers`; `state_dict()` holds them after the parameters.

Left out on purpose: autograd, hooks, parameter sharing, dtype casts of a built
module (build it again with the other dtype and load_state_dict with converted
arrays).
"""

import math

import numpy as np

from . import functional as F
from .functional import _pair

__all__ = [
    "Parameter", "Module", "Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "ReLU", "Hardtanh", "ReLU6",
    "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Dropout", "BatchNorm1d", "BatchNorm2d", "Flatten", "Linear",
    "Identity", "Add", "Concat", "Sequential", "Graph",
]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class Parameter:
    """A learnable array and the gradient accumulated for it (same shape and dtype, zeros at first)."""

    __slots__ = ("data", "_grad", "_grad_cleared")

    def __init__(self, data):
        self.data = data
        self._grad = np.zeros_like(data)
        self._grad_cleared = False

    @property
    def grad(self):
        """The accumulated gradient: an array of data's shape, zeros after zero_grad()."""
        if self._grad_cleared:
            self._grad.fill(0)
            self._grad_cleared = False
        return self._grad

    @grad.setter
    def grad(self, value):
        if not (isinstance(value, np.ndarray) and value.shape == self.data.shape
                and value.dtype == self.data.dtype and value.flags.c_contiguous and value.flags.writeable):
            got = f"{value.shape} {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
            raise ValueError(f"Parameter.grad must be a writeable C-contiguous array of shape "
                             f"{self.data.shape} and dtype {self.data.dtype}, got {got}")
        self._grad, self._grad_cleared = value, False

    def zero_grad(self):
        """Clear the gradient. The zeros are written only if someone reads .grad first: the
        next backward overwrites the old values instead of adding to them, which saves two
        passes over every gradient per training step (a fill and an add)."""
        self._grad_cleared = True

    def _grad_for_backward(self):
        """(the gradient array, whether a backward must add into it rather than overwrite it).
        Call _grad_written() once the backward has written it: a backward that raises first (bad
        arguments) leaves the gradient as it was, cleared or not."""
        return self._grad, not self._grad_cleared

    def _grad_written(self):
        self._grad_cleared = False

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class: parameters are the attributes holding a Parameter, children those holding a Module
    (Sequential overrides `named_children`), both in the order they were assigned; buffers are the
    array attributes named in `_buffers`."""

    _buffers = ()

    def __init__(self):
        self.training = True
        self._saved = None          # what backward needs, from the last training-mode forward
        self._eval_forward = False  # the last forward ran in eval mode, so nothing was saved

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def __call__(self, *inputs):
        """A layer runs its forward. A composite module (one that defines forward in terms of its
        children and no backward of its own) runs its traced graph (cyconv.graph), fused, keeping
        what its backward needs. Inside a trace, inputs are symbolic values and nothing is computed."""
        from . import graph

        symbolic = [isinstance(x, graph.Value) for x in inputs]
        if any(symbolic):
            if not all(symbolic):
                raise TypeError(f"{type(self).__name__}: inside a traced forward every input must be a value "
                                "that another layer returned")
            return inputs[0].tracer.record(self, inputs) if graph.is_leaf(self) else self.forward(*inputs)
        if graph.is_leaf(self):
            return self.forward(*inputs)
        if len(inputs) != 1:
            raise TypeError(f"{type(self).__name__}: a model takes one input array, got {len(inputs)}")
        return graph.runner(self).forward(inputs[0])

    def backward(self, grad_output, *, input_grad=False):
        """Gradient w.r.t. the input of the last forward (None when input_grad=False);
        parameter gradients are added into their .grad.

        This default is a composite module's: the traced graph's backward, each layer's in reverse,
        summing the gradients of a value read by several layers. input_grad=False (the default
        here) is what training needs: nothing wants d loss / d input, and the layers before the
        first one that learns are skipped. Layers define their own (default input_grad=True)."""
        from . import graph

        return graph.runner(self).backward(grad_output, input_grad)

    def output_shape(self, *shapes):
        """The shape of one output image (no batch axis) for inputs of these per-image shapes.
        Layers that keep the shape need not define it; a composite's comes from its graph."""
        from . import graph

        if graph.is_leaf(self):
            if len(shapes) != 1:
                raise ValueError(f"{type(self).__name__} takes one input, got {len(shapes)}")
            return shapes[0]
        return graph.shapes(graph.trace(self), shapes[0])[graph.trace(self).output]

    # -- saved state --------------------------------------------------------

    def _save(self, *saved):
        if self.training:
            self._saved, self._eval_forward = saved, False
        else:
            self._saved, self._eval_forward = None, True

    def _ran_fused(self):
        """The last forward ran this layer inside a fused pass (cyconv.graph), which kept what the
        backward needs: the layer's own backward must refuse (as after an eval-mode forward)."""
        if self.training:
            self._saved, self._eval_forward = _RAN_FUSED, False
        else:
            self._saved, self._eval_forward = None, True

    def _saved_for_backward(self):
        if self._saved is _RAN_FUSED:
            raise RuntimeError(
                f"{type(self).__name__}.backward(): the last forward ran this layer fused with its neighbours "
                "(a model runs Conv2d -> ReLU -> MaxPool2d, ReLU -> MaxPool2d and Add -> ReLU as one pass); call "
                "the model's backward")
        if self._saved is None:
            name = type(self).__name__
            if self._eval_forward:
                raise RuntimeError(
                    f"{name}.backward(): the last forward ran in eval mode, which keeps nothing for "
                    "backward; call .train() before the forward pass you need gradients for"
                )
            raise RuntimeError(f"{name}.backward(): called before forward()")
        return self._saved

    # -- parameters and children --------------------------------------------

    def named_children(self):
        """[(name, Module)] of the direct children."""
        return [(k, v) for k, v in vars(self).items() if isinstance(v, Module)]

    def named_parameters(self):
        """[(name, Parameter)], own parameters first, then each child's as "<child>.<name>"."""
        named = [(k, v) for k, v in vars(self).items() if isinstance(v, Parameter)]
        for child_name, child in self.named_children():
            named.extend((f"{child_name}.{k}", p) for k, p in child.named_parameters())
        return named

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self):
        """[(name, array)] of the buffers, own first, then each child's as "<child>.<name>"."""
        named = [(k, getattr(self, k)) for k in self._buffers]
        for child_name, child in self.named_children():
            named.extend((f"{child_name}.{k}", b) for k, b in child.named_buffers())
        return named

    def zero_grad(self):
        """Set every parameter gradient to zero (in place, lazily: see Parameter.zero_grad)."""
        for p in self.parameters():
            p.zero_grad()

    def train(self, mode=True):
        """Set training mode (eval mode when mode=False) here and in every child; return self."""
        self.training = bool(mode)
        for _, child in self.named_children():
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    # -- state dict ---------------------------------------------------------

    def state_dict(self):
        """{name: copy of the array}: the parameters in named_parameters order, then the buffers."""
        state = {name: p.data.copy() for name, p in self.named_parameters()}
        state.update((name, b.copy()) for name, b in self.named_buffers())
        return state

    def load_state_dict(self, state):
        """Copy the arrays of `state` into the parameters and buffers (never aliasing them).

        Strict: a missing or unexpected name, or a shape or dtype that differs from
        the parameter's, raises ValueError listing every offender; nothing is
        copied unless everything matches.
        """
        params = {name: p.data for name, p in self.named_parameters()}
        params.update(self.named_buffers())
        given = list(state.keys())
        problems = []
        missing = [k for k in params if k not in state]
        unexpected = [k for k in given if k not in params]
        if missing:
            problems.append("missing keys: " + ", ".join(f"{k} {params[k].shape}" for k in missing))
        if unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        values = {}
        for name, p in params.items():
            if name not in state:
                continue
            value = np.asarray(state[name])
            if value.shape != p.shape:
                problems.append(f"shape mismatch for {name}: expected {p.shape}, got {value.shape}")
            elif value.dtype != p.dtype:
                problems.append(f"dtype mismatch for {name}: expected {p.dtype}, got {value.dtype}")
            values[name] = value
        if problems:
            raise ValueError(f"{type(self).__name__}.load_state_dict(): " + "; ".join(problems))
        for name, value in values.items():
            params[name][...] = value

    # -- repr ---------------------------------------------------------------

    def extra_repr(self):
        return ""

    def __repr__(self):
        children = self.named_children()
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, child in children:
            lines.append(f"  ({name}): " + "\n  ".join(repr(child).split("\n")))
        lines.append(")")
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# Argument checks and initialisation (messages name the class and the argument)

def _count(value, name, cls):
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{cls}(): {name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{cls}(): {name} must be >= 1, got {value}")
    return int(value)


def _flag(value, name, cls):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{cls}(): {name} must be True or False, got {value!r}")
    return bool(value)


def _float_dtype(dtype, cls):
    # np.dtype(None) is float64 (and a dtype compares equal to None): refuse None rather than guess.
    try:
        dt = None if dtype is None else np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt not in _FLOATS:
        raise TypeError(f"{cls}(): dtype must be float32 or float64, got {dtype!r}")
    return dt


def _generator(rng, cls):
    if rng is None:
        return np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{cls}(): rng must be a numpy.random.Generator or None, got {type(rng).__name__}")
    return rng


def _uniform(rng, fan_in, shape, dtype):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), sampled in float64 whatever dtype is."""
    bound = 1.0 / math.sqrt(fan_in)
    return Parameter(rng.uniform(-bound, bound, size=shape).astype(dtype))


_RAN_FUSED = object()  # what a layer keeps when a Sequential ran it inside a fused pass


def _parameter_gradients(weight, bias, backward):
    """Run backward(out, accumulate) with out=(weight grad, bias grad or None): the kernel writes
    straight into .grad, adding unless zero_grad() cleared both since the last backward; returns
    what backward returns. The gradients count as written only once it has returned."""
    grad_w, add_w = weight._grad_for_backward()
    params = (weight,) if bias is None else (weight, bias)
    if bias is None:
        out, accumulate = (grad_w, None), add_w
    else:
        grad_b, add_b = bias._grad_for_backward()
        if add_w != add_b:  # only one was cleared: write its zeros now (it reads as zeros anyway)
            (bias if add_w else weight).grad  # noqa: B018 (the property writes them)
        out, accumulate = (grad_w, grad_b), add_w or add_b
    result = backward(out, accumulate)
    for p in params:
        p._grad_written()
    return result


def _window_shape(layer, shape, kernel, stride, padding, dilation=(1, 1)):
    """(Ho, Wo) of a sliding window over a (C, H, W) image; ValueError when it does not fit."""
    if len(shape) != 3:
        raise ValueError(f"needs (C, H, W) images, the input is {shape} per image")
    _, h, w = shape
    span = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    if h + 2 * padding[0] < span[0] or w + 2 * padding[1] < span[1]:
        raise ValueError(f"kernel {tuple(kernel)}" + (f" (dilation {dilation[0] if dilation[0] == dilation[1] else dilation})"
                         if dilation != (1, 1) else "") + " is larger than its padded input "
                         f"{(h + 2 * padding[0], w + 2 * padding[1])}")
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip((h, w), span, stride, padding))


def _square_or_pair(pair):
    return pair[0] if pair[0] == pair[1] else pair


# ---------------------------------------------------------------------------
# Layers

class Conv2d(Module):
    """2-D convolution (cross-correlation) over NCHW batches: `functional.conv2d`.

    Parameters: weight (out_channels, in_channels // groups, kh, kw), bias (out_channels,) unless
    bias=False. groups splits the channels into independent convolutions (groups == in_channels:
    depthwise, as in MobileNet); dilation spaces the kernel's taps. algorithm ("auto", "im2col",
    "winograd", "direct", "measure": functional.conv2d's) is checked against the layer's shape here:
    one that cannot run it raises ValueError. "measure" times the candidates the shape admits on the
    first forward (and, apart, the first backward) of each batch shape and keeps the fastest; a
    predictor compiled from the layer times them compiled.

    Shape:
        (N, in_channels, H, W) -> (N, out_channels, Ho, Wo),
        Ho = (H + 2*ph - dh*(kh - 1) - 1) // sh + 1,  Wo = (W + 2*pw - dw*(kw - 1) - 1) // sw + 1.

    Example:
        >>> conv = Conv2d(1, 20, 5, padding=2, rng=np.random.default_rng(0))
        >>> conv(np.zeros((8, 1, 28, 28), np.float32)).shape
        (8, 20, 28, 28)
        >>> Conv2d(32, 32, 3, stride=2, padding=1, groups=32).output_shape((32, 112, 112))
        (32, 56, 56)
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, *, dtype=np.float32, rng=None, algorithm="auto"):
        super().__init__()
        cls = type(self).__name__
        self.in_channels = _count(in_channels, "in_channels", cls)
        self.out_channels = _count(out_channels, "out_channels", cls)
        self.kernel_size = _pair(kernel_size, "kernel_size", cls, 1)
        self.stride = _pair(stride, "stride", cls, 1)
        self.padding = _pair(padding, "padding", cls, 0)
        self.dilation = _pair(dilation, "dilation", cls, 1)
        self.groups = _count(groups, "groups", cls)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"{cls}(): groups={self.groups} must divide in_channels ({self.in_channels}) and "
                             f"out_channels ({self.out_channels})")
        # the convolution algorithm (functional.conv2d's algorithm=), checked against the shape now
        self.algorithm = F._check_algorithm(cls, algorithm, self.in_channels, self.kernel_size, self.stride,
                                            self.padding, self.dilation, self.groups)
        has_bias = _flag(bias, "bias", cls)
        dtype = _float_dtype(dtype, cls)
        rng = _generator(rng, cls)
        kh, kw = self.kernel_size
        fan_in = self.in_channels // self.groups * kh * kw
        self.weight = _uniform(rng, fan_in, (self.out_channels, self.in_channels // self.groups, kh, kw), dtype)
        self.bias = _uniform(rng, fan_in, (self.out_channels,), dtype) if has_bias else None

    def forward(self, x):
        self._save(x)
        bias = None if self.bias is None else self.bias.data
        return F.conv2d(x, self.weight.data, bias, self.stride, self.padding, self.dilation, self.groups,
                        algorithm=self.algorithm)

    def backward(self, grad_output, *, input_grad=True):
        (x,) = self._saved_for_backward()
        grad_x, _, _ = _parameter_gradients(self.weight, self.bias, lambda out, accumulate: F.conv2d_backward(
            grad_output, x, self.weight.data, self.stride, self.padding, self.dilation, self.groups,
            grad_input=input_grad, out=out, accumulate=accumulate, algorithm=self.algorithm))
        return grad_x

    def output_shape(self, shape):
        if len(shape) == 3 and shape[0] != self.in_channels:
            raise ValueError(f"expects {self.in_channels} channels, the input is {shape}")
        return (self.out_channels, *_window_shape(self, shape, self.kernel_size, self.stride, self.padding,
                                                  self.dilation))

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.algorithm != "auto":
            s += f", algorithm={self.algorithm!r}"
        return s


def _image_shape(cls, shapes):
    """The one per-image (C, H, W) shape an output_shape() takes, checked."""
    if len(shapes) != 1 or not (isinstance(shapes[0], (tuple, list)) and len(shapes[0]) == 3 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in shapes[0])):
        raise ValueError(f"{cls}.output_shape(): expects one per-image shape (C, H, W) of positive ints, "
                         f"got {shapes!r}")
    return tuple(int(v) for v in shapes[0])


class MaxPool2d(Module):
    """2-D max pooling: `functional.max_pool2d`; stride defaults to kernel_size, padding acts as -inf
    and may be at most half the kernel.

    Shape:
        (N, C, H, W) -> (N, C, Ho, Wo),  Ho = (H + 2*ph - kh) // sh + 1.

    Example:
        >>> MaxPool2d(2)(np.zeros((8, 20, 28, 28), np.float32)).shape
        (8, 20, 14, 14)
    """

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        cls = type(self).__name__
        self.kernel_size = _pair(kernel_size, "kernel_size", cls, 1)
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", cls, 1)
        self.padding = _pair(padding, "padding", cls, 0)
        if self.padding[0] > self.kernel_size[0] // 2 or self.padding[1] > self.kernel_size[1] // 2:
            raise ValueError(
                f"{cls}(): padding must be at most half of kernel_size {self.kernel_size}, got {padding!r}")

    def forward(self, x):
        if not self.training:
            self._save()
            return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)
        y, indices = F.max_pool2d(x, self.kernel_size, self.stride, self.padding, return_indices=True)
        self._save(indices, x.shape)
        return y

    def backward(self, grad_output, *, input_grad=True):
        indices, input_shape = self._saved_for_backward()
        return F.max_pool2d_backward(grad_output, indices, input_shape) if input_grad else None

    def output_shape(self, shape):
        return (shape[0], *_window_shape(self, shape, self.kernel_size, self.stride, self.padding))

    def extra_repr(self):
        return (f"kernel_size={_square_or_pair(self.kernel_size)}, stride={_square_or_pair(self.stride)}, "
                f"padding={_square_or_pair(self.padding)}")


class AvgPool2d(Module):
    """2-D average pooling: `functional.avg_pool2d`; stride defaults to kernel_size, padding counts
    as zeros and may be at most half the kernel; count_include_pad=True (PyTorch's default) divides
    by the whole window, False by its taps inside the image.

    Shape:
        (N, C, H, W) -> (N, C, Ho, Wo),  Ho = (H + 2*ph - kh) // sh + 1.

    Example:
        >>> AvgPool2d(2)(np.zeros((8, 6, 28, 28), np.float32)).shape
        (8, 6, 14, 14)
    """

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True):
        super().__init__()
        cls = type(self).__name__
        self.kernel_size = _pair(kernel_size, "kernel_size", cls, 1)
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", cls, 1)
        self.padding = _pair(padding, "padding", cls, 0)
        self.count_include_pad = _flag(count_include_pad, "count_include_pad", cls)
        if self.padding[0] > self.kernel_size[0] // 2 or self.padding[1] > self.kernel_size[1] // 2:
            raise ValueError(
                f"{cls}(): padding must be at most half of kernel_size {self.kernel_size}, got {padding!r}")

    def forward(self, x):
        self._save(x.shape)
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.count_include_pad)

    def backward(self, grad_output, *, input_grad=True):
        (input_shape,) = self._saved_for_backward()
        if not input_grad:
            return None
        return F.avg_pool2d_backward(grad_output, input_shape, self.kernel_size, self.stride, self.padding,
                                     self.count_include_pad)

    def output_shape(self, shape):
        return (shape[0], *_window_shape(self, shape, self.kernel_size, self.stride, self.padding))

    def extra_repr(self):
        return (f"kernel_size={_square_or_pair(self.kernel_size)}, stride={_square_or_pair(self.stride)}, "
                f"padding={_square_or_pair(self.padding)}"
                + ("" if self.count_include_pad else ", count_include_pad=False"))


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output size: `functional.adaptive_avg_pool2d` (PyTorch's bins).
    AdaptiveAvgPool2d(1) is the global average pool of ResNet and MobileNet heads.

    Shape:
        (N, C, H, W) -> (N, C, Ho, Wo) with (Ho, Wo) = output_size.

    Example:
        >>> AdaptiveAvgPool2d(1)(np.zeros((8, 1280, 7, 7), np.float32)).shape
        (8, 1280, 1, 1)
    """

    def __init__(self, output_size):
        super().__init__()
        self.output_size = _pair(output_size, "output_size", type(self).__name__, 1)

    def forward(self, x):
        self._save(x.shape)
        return F.adaptive_avg_pool2d(x, self.output_size)

    def backward(self, grad_output, *, input_grad=True):
        (input_shape,) = self._saved_for_backward()
        return F.adaptive_avg_pool2d_backward(grad_output, input_shape, self.output_size) if input_grad else None

    def output_shape(self, *shapes):
        """(C, Ho, Wo) for one image of shape (C, H, W)."""
        C, _, _ = _image_shape(type(self).__name__, shapes)
        return (C, *self.output_size)

    def extra_repr(self):
        return f"output_size={_square_or_pair(self.output_size)}"


class Hardtanh(Module):
    """min(max(x, min_val), max_val) elementwise: `functional.hardtanh`. Keeps its output, as ReLU
    does: y is at a bound exactly where x is at or beyond it, which is all the backward asks.

    Shape: any -> the same.
    """

    def __init__(self, min_val=-1.0, max_val=1.0):
        super().__init__()
        self.min_val, self.max_val = F._bounds(type(self).__name__, min_val, max_val)

    def forward(self, x):
        y = F.hardtanh(x, self.min_val, self.max_val)
        self._save(y)
        return y

    def backward(self, grad_output, *, input_grad=True):
        (y,) = self._saved_for_backward()
        return F.hardtanh_backward(grad_output, y, self.min_val, self.max_val) if input_grad else None

    def extra_repr(self):
        return f"min_val={self.min_val}, max_val={self.max_val}"


class ReLU6(Hardtanh):
    """min(max(x, 0), 6) elementwise (MobileNetV2): Hardtanh(0, 6), as in PyTorch.

    Shape: any -> the same.
    """

    def __init__(self):
        super().__init__(0.0, 6.0)

    def extra_repr(self):
        return ""


class ReLU(Module):
    """max(x, 0) elementwise: `functional.relu`. Keeps its output, not its input: output > 0
    exactly where input > 0, and the next layer usually holds the output anyway.

    Shape: any -> the same.
    """

    def forward(self, x):
        y = F.relu(x)
        self._save(y)
        return y

    def backward(self, grad_output, *, input_grad=True):
        (y,) = self._saved_for_backward()
        return F.relu_backward(grad_output, y) if input_grad else None


class Sigmoid(Module):
    """1 / (1 + exp(-x)) elementwise: `functional.sigmoid`. Keeps its output, which its derivative
    y * (1 - y) needs.

    Shape: any -> the same.
    """

    def forward(self, x):
        y = F.sigmoid(x)
        self._save(y)
        return y

    def backward(self, grad_output, *, input_grad=True):
        (y,) = self._saved_for_backward()
        return F.sigmoid_backward(grad_output, y) if input_grad else None


class Tanh(Module):
    """tanh(x) elementwise: `functional.tanh`. Keeps its output, which its derivative 1 - y**2 needs.

    Shape: any -> the same.
    """

    def forward(self, x):
        y = F.tanh(x)
        self._save(y)
        return y

    def backward(self, grad_output, *, input_grad=True):
        (y,) = self._saved_for_backward()
        return F.tanh_backward(grad_output, y) if input_grad else None


class _OverClasses(Module):
    """A function over the classes of (N, K) scores and its backward from the output alone (softmax,
    log-softmax): `_forward` and `_backward` name the functional pair."""

    _forward = _backward = None

    def __init__(self, dim=1):
        super().__init__()
        if dim not in (1, -1):
            raise ValueError(f"{type(self).__name__}(): dim must be 1 (the classes of (N, K) scores), got {dim!r}")
        self.dim = 1

    def output_shape(self, shape):
        if len(shape) != 1:
            raise ValueError(f"needs (N, K) scores, the input is {shape} per image")
        return shape

    def forward(self, x):
        y = type(self)._forward(x)
        self._save(y)
        return y

    def backward(self, grad_output, *, input_grad=True):
        (y,) = self._saved_for_backward()
        return type(self)._backward(grad_output, y) if input_grad else None

    def extra_repr(self):
        return f"dim={self.dim}"


class Softmax(_OverClasses):
    """softmax over the classes of (N, K) scores: `functional.softmax`. Training usually wants
    `functional.softmax_cross_entropy` on the scores instead (one stable pass); this layer is for
    models that end in probabilities (an ONNX file ending in Softmax, say).

    Shape: (N, K) -> (N, K).
    """

    _forward, _backward = staticmethod(F.softmax), staticmethod(F.softmax_backward)


class LogSoftmax(_OverClasses):
    """log(softmax) over the classes of (N, K) scores: `functional.log_softmax`.

    Shape: (N, K) -> (N, K).
    """

    _forward, _backward = staticmethod(F.log_softmax), staticmethod(F.log_softmax_backward)


class Dropout(Module):
    """Inverted dropout in training mode (`functional.dropout`): each element zeroed with probability
    p, the others scaled by 1 / (1 - p); the identity in eval mode (its input itself, as in PyTorch).

    Each training-mode forward draws a fresh mask from a seed that depends only on the module's
    `rng_state` buffer, [base seed, calls so far]: the base seed comes from `rng` when the module is
    built (so a model built from one seeded Generator drops the same elements every run), and the
    count is saved with the model, so a resumed run continues the same sequence of masks. The mask
    is never stored: backward recomputes it from the seed.

    persistent=False keeps rng_state out of state_dict() (as PyTorch's non-persistent buffers), for
    models whose state_dict must hold exactly another library's keys (cyconv.models.mobilenet_v2):
    the masks then restart from the base seed when a run resumes.

    Shape: any -> the same.
    """

    def __init__(self, p=0.5, *, rng=None, persistent=True):
        super().__init__()
        cls = type(self).__name__
        self.p = F._probability(p, cls, "p")
        self.rng_state = np.array([_generator(rng, cls).integers(2**63), 0], np.int64)
        self._buffers = ("rng_state",) if _flag(persistent, "persistent", cls) else ()

    def forward(self, x):
        if not self.training:
            self._save()
            return F.dropout(x, self.p, seed=0, training=False)
        base, calls = (int(v) for v in self.rng_state)
        # One seed per call: the count mixed by the golden-ratio constant, which the kernel's hash spreads.
        seed = (base ^ (calls * 0x9E3779B97F4A7C15)) % 2**64
        y = F.dropout(x, self.p, seed=seed)
        self.rng_state[1] = (calls + 1) % 2**63
        self._save(seed)
        return y

    def backward(self, grad_output, *, input_grad=True):
        (seed,) = self._saved_for_backward()
        return F.dropout_backward(grad_output, self.p, seed=seed) if input_grad else None

    def extra_repr(self):
        return f"p={self.p}"


class _BatchNorm(Module):
    """Batch normalisation over axis 1: `functional.batch_norm`, PyTorch's semantics and defaults.

    Training mode normalises with the batch's mean and (biased) variance and updates the running
    averages (momentum 0.1: running = 0.9 * running + 0.1 * batch, the variance unbiased; momentum
    None: the plain average of every batch so far); eval mode normalises with the running averages.
    track_running_stats=False: always the batch's statistics, and no running buffers.

    Parameters (affine=True): weight (C,) = 1, bias (C,) = 0.
    Buffers (track_running_stats=True): running_mean (C,) = 0, running_var (C,) = 1,
    num_batches_tracked (int64 scalar).
    """

    _dims = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, *,
                 dtype=np.float32):
        super().__init__()
        cls = type(self).__name__
        self.num_features = _count(num_features, "num_features", cls)
        if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, (int, float, np.integer, np.floating)) \
                or not np.isfinite(eps) or eps < 0:
            raise ValueError(f"{cls}(): eps must be a number >= 0, got {eps!r}")
        if momentum is not None:
            momentum = F._probability(momentum, cls, "momentum")
        self.eps, self.momentum = float(eps), momentum
        self.affine = _flag(affine, "affine", cls)
        self.track_running_stats = _flag(track_running_stats, "track_running_stats", cls)
        dtype = _float_dtype(dtype, cls)
        C = self.num_features
        self.weight = Parameter(np.ones(C, dtype)) if self.affine else None
        self.bias = Parameter(np.zeros(C, dtype)) if self.affine else None
        if self.track_running_stats:
            self._buffers = ("running_mean", "running_var", "num_batches_tracked")
            self.running_mean = np.zeros(C, dtype)
            self.running_var = np.ones(C, dtype)
            self.num_batches_tracked = np.zeros((), np.int64)

    def _check_input(self, x):
        if not isinstance(x, np.ndarray) or x.ndim not in self._dims or x.shape[1] != self.num_features:
            got = x.shape if isinstance(x, np.ndarray) else type(x).__name__
            dims = " or ".join(f"{d}-D" for d in self._dims)
            raise ValueError(f"{type(self).__name__}.forward(): x must be {dims} with {self.num_features} "
                             f"channels on axis 1, got {got}")

    def output_shape(self, shape):
        if len(shape) + 1 not in self._dims or shape[0] != self.num_features:
            raise ValueError(f"expects {self.num_features} channels, the input is {shape} per image")
        return shape

    def forward(self, x):
        self._check_input(x)
        batch_stats = self.training or not self.track_running_stats
        momentum = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
            momentum = 1 / int(self.num_batches_tracked) if self.momentum is None else self.momentum
        running = (self.running_mean, self.running_var) if self.track_running_stats else (None, None)
        weight = None if self.weight is None else self.weight.data
        bias = None if self.bias is None else self.bias.data
        y, mean, invstd = F.batch_norm(x, *running, weight, bias, batch_stats, momentum, self.eps,
                                       return_stats=True)
        self._save(x, mean, invstd, batch_stats)
        return y

    def backward(self, grad_output, *, input_grad=True):
        x, mean, invstd, batch_stats = self._saved_for_backward()
        weight = None if self.weight is None else self.weight.data
        if self.weight is None:
            return F.batch_norm_backward(grad_output, x, None, mean, invstd, batch_stats, grad_input=input_grad)[0]
        grad_x, _, _ = _parameter_gradients(self.weight, self.bias, lambda out, accumulate: F.batch_norm_backward(
            grad_output, x, weight, mean, invstd, batch_stats, grad_input=input_grad, out=out,
            accumulate=accumulate))
        return grad_x

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) per channel C (see _BatchNorm).

    Shape: (N, C) -> (N, C); (N, C, L) -> (N, C, L).
    """

    _dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) per channel C (see _BatchNorm).

    Shape: (N, C, H, W) -> (N, C, H, W).

    Example:
        >>> BatchNorm2d(16)(np.ones((8, 16, 32, 32), np.float32)).shape
        (8, 16, 32, 32)
    """

    _dims = (4,)


class Flatten(Module):
    """Everything but the batch axis into one (a view when the input is contiguous).

    Shape: (N, d1, d2, ...) -> (N, d1*d2*...).
    """

    def forward(self, x):
        if not isinstance(x, np.ndarray) or x.ndim < 1:
            got = x.shape if isinstance(x, np.ndarray) else type(x).__name__
            raise ValueError(f"Flatten.forward(): x must be an array with a batch axis, got {got}")
        self._save(x.shape)
        # An explicit size, not -1: reshape(0, -1) is ambiguous for an empty batch.
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def output_shape(self, shape):
        return (math.prod(shape),)

    def backward(self, grad_output, *, input_grad=True):
        (input_shape,) = self._saved_for_backward()
        if not input_grad:
            return None
        expected = (input_shape[0], math.prod(input_shape[1:]))
        if grad_output.shape != expected:
            raise ValueError(f"Flatten.backward(): grad_output must have shape {expected}, got {grad_output.shape}")
        return grad_output.reshape(input_shape)


class Linear(Module):
    """y = x @ weight.T + bias: `functional.linear`.

    Parameters: weight (out_features, in_features), bias (out_features,) unless bias=False.

    Shape: (N, in_features) -> (N, out_features).

    Example:
        >>> Linear(2450, 500, rng=np.random.default_rng(0))(np.zeros((8, 2450), np.float32)).shape
        (8, 500)
    """

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32, rng=None):
        super().__init__()
        cls = type(self).__name__
        self.in_features = _count(in_features, "in_features", cls)
        self.out_features = _count(out_features, "out_features", cls)
        has_bias = _flag(bias, "bias", cls)
        dtype = _float_dtype(dtype, cls)
        rng = _generator(rng, cls)
        self.weight = _uniform(rng, self.in_features, (self.out_features, self.in_features), dtype)
        self.bias = _uniform(rng, self.in_features, (self.out_features,), dtype) if has_bias else None

    def forward(self, x):
        self._save(x)
        return F.linear(x, self.weight.data, None if self.bias is None else self.bias.data)

    def backward(self, grad_output, *, input_grad=True):
        (x,) = self._saved_for_backward()
        grad_x, _, _ = _parameter_gradients(self.weight, self.bias, lambda out, accumulate: F.linear_backward(
            grad_output, x, self.weight.data, grad_input=input_grad, out=out, accumulate=accumulate))
        return grad_x

    def output_shape(self, shape):
        if tuple(shape) != (self.in_features,):
            raise ValueError(f"expects {self.in_features} features, the input is {shape} (a Flatten missing?)")
        return (self.out_features,)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Sequential(Module):
    """Modules applied in order; children are named "0", "1", ... (parameters "0.weight", ...).

    A composite like any other (see Module.backward and cyconv.graph): runs of Conv2d -> ReLU ->
    MaxPool2d and of ReLU -> MaxPool2d execute as one pass each, with the results of the layers one
    by one, and a fused layer's own backward then refuses to run.

    `backward(grad, input_grad=False)` (the default) is what training needs: nothing
    wants the gradient w.r.t. the network's input, so the layers before the first one
    with parameters are skipped; it returns None. With input_grad=True every layer runs
    and the gradient w.r.t. the input is returned (for gradient checks).
    """

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential(): argument {i} must be a Module, got {type(m).__name__}")
        self._modules = list(modules)

    def named_children(self):
        return [(str(i), m) for i, m in enumerate(self._modules)]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Sequential(*self._modules[index])
        return self._modules[index]

    def forward(self, x):
        for module in self._modules:
            x = module(x)
        return x


class Graph(Module):
    """A model written as an explicit graph of named layers, for models that branch and merge
    without a Module subclass of their own (cyconv.onnx.load builds these):

        g = nn.Graph()
        x = g.input()
        y = g.node("conv", nn.Conv2d(16, 16, 3, padding=1), x)
        y = g.node("add", nn.Add(), y, x)
        g.output(g.node("relu", nn.ReLU(), y))

    Each node's layer is a child under the node's name (parameters "conv.weight", ...); the names may
    contain dots (a loaded torchvision ResNet keeps "layer1.0.conv1"). Nodes are run in the order
    added, and each reads values added before it, so the graph has no cycles by construction.
    """

    def __init__(self):
        super().__init__()
        self._layers = {}
        self._nodes = []      # (name, input ports)
        self._output = None

    def input(self):
        """The port of the model's input (one input)."""
        return _Port(self, 0)

    def node(self, name, module, *inputs):
        """Add layer `module` under `name`, reading the values at the given ports; returns its port."""
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise ValueError(f"Graph.node(): name must be a non-empty string without spaces, got {name!r}")
        if name in self._layers:
            raise ValueError(f"Graph.node(): a node named {name!r} exists already")
        if not isinstance(module, Module):
            raise TypeError(f"Graph.node(): module of {name!r} must be a Module, got {type(module).__name__}")
        if any(module is m for m in self._layers.values()):
            raise ValueError(f"Graph.node(): the module of {name!r} is already the node of another name")
        if not inputs:
            raise ValueError(f"Graph.node(): {name!r} reads no value")
        for i, port in enumerate(inputs):
            if not isinstance(port, _Port) or port.graph is not self:
                raise TypeError(f"Graph.node(): input {i} of {name!r} must be a port of this graph (from "
                                f"input() or node()), got {type(port).__name__}")
        self._layers[name] = module
        self._nodes.append((name, tuple(p.index for p in inputs)))
        return _Port(self, len(self._nodes))

    def output(self, port):
        """Make the value at `port` the model's output."""
        if not isinstance(port, _Port) or port.graph is not self:
            raise TypeError(f"Graph.output(): port must be a port of this graph, got {type(port).__name__}")
        self._output = port.index

    def named_children(self):
        return list(self._layers.items())

    def forward(self, x):
        if self._output is None:
            raise RuntimeError("Graph: no output set (call output(port) once the nodes are added)")
        values = [x]
        for name, inputs in self._nodes:
            values.append(self._layers[name](*(values[i] for i in inputs)))
        return values[self._output]


class _Port:
    __slots__ = ("graph", "index")

    def __init__(self, graph, index):
        self.graph, self.index = graph, index


# ---------------------------------------------------------------------------
# Layers that only route values: Identity, Add, Concat

class Identity(Module):
    """Its input, unchanged (a placeholder, as PyTorch's: e.g. a residual block's shortcut).

    Shape: any -> the same.
    """

    def forward(self, x):
        self._save(True)
        return x

    def backward(self, grad_output, *, input_grad=True):
        self._saved_for_backward()
        return grad_output if input_grad else None


class Add(Module):
    """The elementwise sum of two or more inputs of one shape: `functional.add` (a residual
    connection). Its backward hands grad_output to every input.

    Shape: (N, ...) x k -> (N, ...).
    """

    def forward(self, *xs):
        if len(xs) < 2:
            raise ValueError(f"Add.forward(): needs two or more inputs, got {len(xs)}")
        y = F.add(xs[0], xs[1])
        for x in xs[2:]:
            y = F.add(y, x)
        self._save(len(xs))
        return y

    def backward(self, grad_output, *, input_grad=True):
        (n,) = self._saved_for_backward()
        return (grad_output if input_grad else None,) * n

    def output_shape(self, *shapes):
        if len(shapes) < 2 or any(s != shapes[0] for s in shapes):
            raise ValueError(f"Add needs two or more inputs of one shape, got {' and '.join(map(str, shapes))}")
        return shapes[0]


class Concat(Module):
    """The inputs joined along the channel axis (axis 1): `functional.concat`.

    Shape: (N, C1, ...), (N, C2, ...), ... -> (N, C1 + C2 + ..., ...).
    """

    def __init__(self, dim=1):
        super().__init__()
        if dim != 1:
            raise ValueError(f"Concat(): dim must be 1 (channels), got {dim!r}")
        self.dim = 1

    def forward(self, *xs):
        y = F.concat(xs)
        self._save(tuple(x.shape[1] for x in xs))
        return y

    def backward(self, grad_output, *, input_grad=True):
        (channels,) = self._saved_for_backward()
        if not input_grad:
            return (None,) * len(channels)
        return F.concat_backward(grad_output, channels)

    def output_shape(self, *shapes):
        if not shapes or any(len(s) < 1 or s[1:] != shapes[0][1:] for s in shapes):
            raise ValueError(f"Concat needs inputs that differ only in channels, got {' and '.join(map(str, shapes))}")
        return (sum(s[0] for s in shapes), *shapes[0][1:])

    def extra_repr(self):
        return "dim=1"
