"""cyconv.models: the course's networks, and a table that describes a network.

    lenet5()          the LeNet-5 of the course's table: [Conv 5x5 "same", ReLU, MaxPool 2x2] x 2, Flatten,
                      Linear 2450 -> 500, ReLU, Linear 500 -> 10, for 1 x 28 x 28 images.
    lenet5_classic()  LeNet-5 as LeCun et al. (1998) built it: 6 and 16 5x5 filters, tanh, 2x2 average
                      pooling, Linear 400 -> 120 -> 84 -> 10.
    small_cnn()       [Conv 3x3, BatchNorm, ReLU, MaxPool 2x2] x 3 and a linear classifier, for the
                      course's colour images (3 x 64 x 64 by default).
    mlp()             the course's two-layer network y = W2 relu(W1 x) on raw pixels (or any feature vector).
    softmax_regression()  one Linear layer, logits = W x + b, for feature vectors.
    summary()         the course's "Layer | Output Size | Weight Size" table, plus the parameter count.

Each builder draws every layer's initial weights from one numpy.random.Generator
(`rng`; None means a fresh `np.random.default_rng()`), so a seed fixes the whole model.
"""

import math

import numpy as np

from .nn import (AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear, LogSoftmax, MaxPool2d, ReLU,
                 Sequential, Sigmoid, Softmax, Tanh, _count, _float_dtype, _generator)

__all__ = ["lenet5", "lenet5_classic", "small_cnn", "mlp", "softmax_regression", "summary", "MODELS",
           "build_model", "default_input"]

# The models the command line trains and a checkpoint can name, with the (channels, image size)
# of the images each is built for when nothing else is said.
_DEFAULT_INPUT = {"lenet5": (1, 28), "mlp": (1, 28), "lenet5_classic": (1, 28), "small_cnn": (3, 64)}
MODELS = tuple(_DEFAULT_INPUT)


def default_input(name: str) -> tuple[int, int]:
    """(in_channels, image_size) of the images model `name` is built for by default."""
    if name not in _DEFAULT_INPUT:
        raise ValueError(f"default_input(): name must be one of {', '.join(MODELS)}, got {name!r}")
    return _DEFAULT_INPUT[name]


def build_model(name: str, *, hidden: int = 500, in_channels: int | None = None, num_classes: int = 10,
                image_size: int | None = None, rng=None):
    """A fresh model by the name a checkpoint records, for in_channels x image_size x image_size
    images (None: the model's default_input) and num_classes classes; `hidden` is the mlp's width.
    lenet5 and lenet5_classic take only 1 x 28 x 28 images (their layer sizes are the course's)."""
    if name not in _DEFAULT_INPUT:
        raise ValueError(f"build_model(): name must be one of {', '.join(MODELS)}, got {name!r}")
    default_channels, default_size = _DEFAULT_INPUT[name]
    in_channels = default_channels if in_channels is None else _count(in_channels, "in_channels", "build_model")
    image_size = default_size if image_size is None else _count(image_size, "image_size", "build_model")
    if name in ("lenet5", "lenet5_classic") and (in_channels, image_size) != (1, 28):
        raise ValueError(f"build_model(): {name} takes 1 x 28 x 28 images, got {in_channels} x {image_size} x "
                         f"{image_size} (small_cnn and mlp take any size)")
    if name == "lenet5":
        return lenet5(num_classes, rng=rng)
    if name == "lenet5_classic":
        return lenet5_classic(num_classes, rng=rng)
    if name == "small_cnn":
        return small_cnn(in_channels, num_classes, image_size, rng=rng)
    return mlp(hidden=hidden, num_classes=num_classes, in_features=in_channels * image_size**2, rng=rng)


def lenet5(num_classes=10, *, dtype=np.float32, rng=None):
    """LeNet-5 as the course gives it, for (N, 1, 28, 28) inputs -> (N, num_classes) logits.

    Layer                          | Output Size  | Weight Size
    Input                          | 1 x 28 x 28  |
    Conv (C_out=20, K=5, P=2, S=1) | 20 x 28 x 28 | 20 x 1 x 5 x 5
    ReLU                           | 20 x 28 x 28 |
    MaxPool (K=2, S=2)             | 20 x 14 x 14 |
    Conv (C_out=50, K=5, P=2, S=1) | 50 x 14 x 14 | 50 x 20 x 5 x 5
    ReLU                           | 50 x 14 x 14 |
    MaxPool (K=2, S=2)             | 50 x 7 x 7   |
    Flatten                        | 2450         |
    Linear (2450 -> 500)           | 500          | 2450 x 500
    ReLU                           | 500          |
    Linear (500 -> 10)             | 10           | 500 x 10

    1,256,080 parameters with the biases. (Caffe's LeNet, with no padding and so an 800-wide Flatten,
    has 431,080.)
    """
    num_classes = _count(num_classes, "num_classes", "lenet5")
    dtype = _float_dtype(dtype, "lenet5")
    rng = _generator(rng, "lenet5")
    return Sequential(
        Conv2d(1, 20, 5, stride=1, padding=2, dtype=dtype, rng=rng),
        ReLU(),
        MaxPool2d(2, 2),
        Conv2d(20, 50, 5, stride=1, padding=2, dtype=dtype, rng=rng),
        ReLU(),
        MaxPool2d(2, 2),
        Flatten(),
        Linear(50 * 7 * 7, 500, dtype=dtype, rng=rng),
        ReLU(),
        Linear(500, num_classes, dtype=dtype, rng=rng),
    )


def lenet5_classic(num_classes=10, *, dtype=np.float32, rng=None):
    """LeNet-5 as LeCun, Bottou, Bengio and Haffner (1998) built it, for (N, 1, 28, 28) inputs:
    their 32 x 32 input is the 28 x 28 digit padded by 2, which the first convolution does.

    Layer                          | Output Size  | Weight Size
    Input                          | 1 x 28 x 28  |
    Conv (C_out=6, K=5, P=2, S=1)  | 6 x 28 x 28  | 6 x 1 x 5 x 5
    Tanh                           | 6 x 28 x 28  |
    AvgPool (K=2, S=2)             | 6 x 14 x 14  |
    Conv (C_out=16, K=5, P=0, S=1) | 16 x 10 x 10 | 16 x 6 x 5 x 5
    Tanh                           | 16 x 10 x 10 |
    AvgPool (K=2, S=2)             | 16 x 5 x 5   |
    Flatten                        | 400          |
    Linear (400 -> 120), Tanh      | 120          | 400 x 120
    Linear (120 -> 84), Tanh       | 84           | 120 x 84
    Linear (84 -> 10)              | 10           | 84 x 10

    61,706 parameters. Simplified where the paper's details have no modern counterpart: every
    second-layer map sees all 6 first-layer maps (the paper wires a chosen subset), the subsampling
    layers have no trainable coefficient and bias, and the output is a linear layer trained with
    softmax cross-entropy rather than Euclidean RBF units.
    """
    num_classes = _count(num_classes, "num_classes", "lenet5_classic")
    dtype = _float_dtype(dtype, "lenet5_classic")
    rng = _generator(rng, "lenet5_classic")
    return Sequential(
        Conv2d(1, 6, 5, padding=2, dtype=dtype, rng=rng),
        Tanh(),
        AvgPool2d(2),
        Conv2d(6, 16, 5, dtype=dtype, rng=rng),
        Tanh(),
        AvgPool2d(2),
        Flatten(),
        Linear(400, 120, dtype=dtype, rng=rng),
        Tanh(),
        Linear(120, 84, dtype=dtype, rng=rng),
        Tanh(),
        Linear(84, num_classes, dtype=dtype, rng=rng),
    )


SMALL_CNN_WIDTHS = (16, 32, 64)  # output channels of small_cnn's three blocks


def small_cnn(in_channels=3, num_classes=10, image_size=64, *, dropout=0.25, dtype=np.float32, rng=None):
    """A small CNN for colour images (N, in_channels, image_size, image_size), the course's "dog /
    food / nothing" photos at 64 x 64 x 3:

        [Conv 3x3 pad 1 (no bias), BatchNorm2d, ReLU, MaxPool 2x2] with 16, 32, 64 channels,
        Flatten (64 * (image_size / 8)^2), Dropout(dropout), Linear -> num_classes.

    The convolutions have no bias: the BatchNorm after each shifts its channels anyway.
    image_size must be a multiple of 8 (three halvings). dropout=0 leaves the Dropout out.
    """
    fn = "small_cnn"
    in_channels = _count(in_channels, "in_channels", fn)
    num_classes = _count(num_classes, "num_classes", fn)
    image_size = _count(image_size, "image_size", fn)
    if image_size % 8:
        raise ValueError(f"{fn}(): image_size must be a multiple of 8 (three 2x2 poolings), got {image_size}")
    dtype = _float_dtype(dtype, fn)
    rng = _generator(rng, fn)
    layers, c = [], in_channels
    for width in SMALL_CNN_WIDTHS:
        layers += [Conv2d(c, width, 3, padding=1, bias=False, dtype=dtype, rng=rng), BatchNorm2d(width, dtype=dtype),
                   ReLU(), MaxPool2d(2)]
        c = width
    layers.append(Flatten())
    if dropout:
        layers.append(Dropout(dropout, rng=rng))
    layers.append(Linear(c * (image_size // 8) ** 2, num_classes, dtype=dtype, rng=rng))
    return Sequential(*layers)


def mlp(hidden=500, num_classes=10, in_features=784, *, dtype=np.float32, rng=None):
    """The course's two-layer network y = W2 relu(W1 x) on raw pixels:
    Flatten, Linear(in_features -> hidden), ReLU, Linear(hidden -> num_classes).

    Shape: (N, ...) with in_features values per image (e.g. (N, 1, 28, 28)) -> (N, num_classes).
    """
    hidden = _count(hidden, "hidden", "mlp")
    num_classes = _count(num_classes, "num_classes", "mlp")
    in_features = _count(in_features, "in_features", "mlp")
    dtype = _float_dtype(dtype, "mlp")
    rng = _generator(rng, "mlp")
    return Sequential(
        Flatten(),
        Linear(in_features, hidden, dtype=dtype, rng=rng),
        ReLU(),
        Linear(hidden, num_classes, dtype=dtype, rng=rng),
    )


def softmax_regression(in_features, num_classes=10, *, dtype=np.float32, rng=None):
    """Multinomial logistic regression: Flatten, Linear(in_features -> num_classes). Trained with
    softmax cross-entropy on its logits, it is the linear classifier of the hand-crafted-features
    baselines (see cyconv.compare).

    Shape: (N, ...) with in_features values per example (e.g. (N, 324) HOG vectors) -> (N, num_classes).
    """
    in_features = _count(in_features, "in_features", "softmax_regression")
    num_classes = _count(num_classes, "num_classes", "softmax_regression")
    dtype = _float_dtype(dtype, "softmax_regression")
    rng = _generator(rng, "softmax_regression")
    return Sequential(Flatten(), Linear(in_features, num_classes, dtype=dtype, rng=rng))


# ---------------------------------------------------------------------------
# summary


def _size(shape):
    return " x ".join(str(d) for d in shape)


def _hyper(pair):
    """5 for (5, 5), (3, 5) otherwise."""
    return pair[0] if pair[0] == pair[1] else pair


def _window_out(shape, kernel, stride, padding, layer):
    c, h, w = shape
    if h + 2 * padding[0] < kernel[0] or w + 2 * padding[1] < kernel[1]:
        raise ValueError(f"summary(): {layer!r} gets input {_size(shape)}, smaller than its kernel {kernel}")
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip((h, w), kernel, stride, padding))


def _expect(shape, ndim, layer):
    if len(shape) != ndim:
        raise ValueError(f"summary(): {layer!r} needs a {ndim}-D input per image, got {_size(shape)}")


def _describe(layer, shape):
    """(row label, output shape without the batch axis, weight size text) of one layer."""
    if isinstance(layer, Conv2d):
        _expect(shape, 3, layer)
        if shape[0] != layer.in_channels:
            raise ValueError(f"summary(): {layer!r} gets {shape[0]} channels")
        k, s, p = layer.kernel_size, layer.stride, layer.padding
        label = f"Conv (C_out={layer.out_channels}, K={_hyper(k)}, P={_hyper(p)}, S={_hyper(s)})"
        return label, (layer.out_channels, *_window_out(shape, k, s, p, layer)), _size(layer.weight.data.shape)
    if isinstance(layer, MaxPool2d):
        _expect(shape, 3, layer)
        k, s, p = layer.kernel_size, layer.stride, layer.padding
        label = f"MaxPool (K={_hyper(k)}, S={_hyper(s)}" + (f", P={_hyper(p)})" if p != (0, 0) else ")")
        return label, (shape[0], *_window_out(shape, k, s, p, layer)), ""
    if isinstance(layer, AvgPool2d):
        _expect(shape, 3, layer)
        k, s, p = layer.kernel_size, layer.stride, layer.padding
        label = f"AvgPool (K={_hyper(k)}, S={_hyper(s)}" + (f", P={_hyper(p)})" if p != (0, 0) else ")")
        return label, (shape[0], *_window_out(shape, k, s, p, layer)), ""
    if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
        if shape[0] != layer.num_features:
            raise ValueError(f"summary(): {layer!r} gets {shape[0]} channels")
        return f"BatchNorm (C={layer.num_features})", shape, (f"2 x {layer.num_features}" if layer.affine else "")
    if isinstance(layer, Dropout):
        return f"Dropout (p={layer.p:g})", shape, ""
    if isinstance(layer, (ReLU, Sigmoid, Tanh, Softmax, LogSoftmax)):
        return type(layer).__name__, shape, ""
    if isinstance(layer, Flatten):
        return "Flatten", (math.prod(shape),), ""
    if isinstance(layer, Linear):
        if shape != (layer.in_features,):
            raise ValueError(f"summary(): {layer!r} gets input {_size(shape)}")
        # The course writes a linear layer's weight as in x out, the transpose of the stored array.
        weight = f"{layer.in_features} x {layer.out_features}"
        return f"Linear ({layer.in_features} -> {layer.out_features})", (layer.out_features,), weight
    raise TypeError(f"summary(): cannot describe a {type(layer).__name__}")


def _leaves(model):
    if isinstance(model, Sequential):
        for child in model:
            yield from _leaves(child)
    else:
        yield model


def summary(model, input_shape=(1, 28, 28)):
    """The course's table of a network: one row per layer with its output size (per image, no batch
    axis) and weight size, then the total number of parameters (weights and biases).

    Output sizes come from shape arithmetic, so the model is not run and its saved
    state is untouched. Linear weights are written in x out, as the course does
    (the stored array is out x in).

    Example:
        >>> print(summary(lenet5()))       # doctest: +SKIP
        Layer                          | Output Size  | Weight Size
        -------------------------------+--------------+----------------
        Input                          | 1 x 28 x 28  |
        Conv (C_out=20, K=5, P=2, S=1) | 20 x 28 x 28 | 20 x 1 x 5 x 5
        ...
        Total parameters: 1,256,080
    """
    shape = tuple(int(d) for d in input_shape)
    rows = [("Layer", "Output Size", "Weight Size"), ("Input", _size(shape), "")]
    for layer in _leaves(model):
        label, shape, weight = _describe(layer, shape)
        rows.append((label, _size(shape), weight))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]

    def line(row):
        return f"{row[0]:<{widths[0]}} | {row[1]:<{widths[1]}} | {row[2]}".rstrip()

    rule = "-+-".join("-" * w for w in widths)
    total = sum(p.data.size for p in model.parameters())
    return "\n".join([line(rows[0]), rule, *map(line, rows[1:]), f"Total parameters: {total:,}"])
