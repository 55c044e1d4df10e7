"""cyconv.models: the course's networks, and a table that describes a network.

    lenet5()          the LeNet-5 of the course's table: [Conv 5x5 "same", ReLU, MaxPool 2x2] x 2, Flatten,
                      Linear 2450 -> 500, ReLU, Linear 500 -> 10, for 1 x 28 x 28 images.
    lenet5_classic()  LeNet-5 as LeCun et al. (1998) built it: 6 and 16 5x5 filters, tanh, 2x2 average
                      pooling, Linear 400 -> 120 -> 84 -> 10.
    small_cnn()       [Conv 3x3, BatchNorm, ReLU, MaxPool 2x2] x 3 and a linear classifier, for the
                      course's colour images (3 x 64 x 64 by default).
    mlp()             the course's two-layer network y = W2 relu(W1 x) on raw pixels (or any feature vector).
    softmax_regression()  one Linear layer, logits = W x + b, for feature vectors.
    resnet20()        He et al. (2016)'s CIFAR ResNet-20: a 3x3 stem, three stages of three BasicBlocks with
                      16/32/64 channels, global average pooling, one Linear; for 3 x 32 x 32 images.
    resnet18()        torchvision's ResNet-18 (11,689,512 parameters at 1000 classes), for 3 x 224 x 224.
    mobilenet_v2()    torchvision's MobileNetV2 (3,504,872 parameters at 1000 classes), for 3 x 224 x 224.
    summary()         the course's "Layer | Output Size | Weight Size" table, plus the parameter count
                      (with each layer's name, and what it reads, for models that branch).

The modern networks have torchvision's modules, parameter names and state_dict keys (BatchNorm's
num_batches_tracked included, nothing else), so its weights load with
`model.load_state_dict({k: v.numpy() for k, v in torch_model.state_dict().items()})`. They end in global
average pooling, so they take any image at least as large as their total stride (resnet18 and
mobilenet_v2: 32 x 32; resnet20: 4 x 4).

Each builder draws every layer's initial weights from one numpy.random.Generator
(`rng`; None means a fresh `np.random.default_rng()`), so a seed fixes the whole model.
"""

import math

import numpy as np

from . import graph
from .nn import (AdaptiveAvgPool2d, Add, AvgPool2d, BatchNorm1d, BatchNorm2d, Concat, Conv2d, Dropout, Flatten,
                 Identity, Linear, LogSoftmax, MaxPool2d, Module, ReLU, ReLU6, Sequential, Sigmoid, Softmax, Tanh,
                 _count, _float_dtype, _generator)

__all__ = ["lenet5", "lenet5_classic", "small_cnn", "mlp", "softmax_regression", "resnet20", "resnet18",
           "mobilenet_v2", "BasicBlock", "ResNet", "InvertedResidual", "MobileNetV2", "summary", "MODELS",
           "build_model", "default_input", "min_image_size"]

# The models the command line trains and a checkpoint can name, with the (channels, image size)
# of the images each is built for when nothing else is said.
_DEFAULT_INPUT = {"lenet5": (1, 28), "mlp": (1, 28), "lenet5_classic": (1, 28), "small_cnn": (3, 64),
                  "resnet20": (3, 32), "resnet18": (3, 224), "mobilenet_v2": (3, 224)}
MODELS = tuple(_DEFAULT_INPUT)
# The smallest image each network that ends in global pooling takes: its total stride, so that the last
# feature map still has a pixel computed from the image rather than from padding alone.
_MIN_IMAGE_SIZE = {"resnet20": 4, "resnet18": 32, "mobilenet_v2": 32}


def default_input(name: str) -> tuple[int, int]:
    """(in_channels, image_size) of the images model `name` is built for by default."""
    if name not in _DEFAULT_INPUT:
        raise ValueError(f"default_input(): name must be one of {', '.join(MODELS)}, got {name!r}")
    return _DEFAULT_INPUT[name]


def min_image_size(name: str) -> int:
    """The smallest image side model `name` takes (1 where the model itself sets no bound; lenet5 and
    lenet5_classic take 28 only, small_cnn multiples of 8)."""
    if name not in _DEFAULT_INPUT:
        raise ValueError(f"min_image_size(): name must be one of {', '.join(MODELS)}, got {name!r}")
    return _MIN_IMAGE_SIZE.get(name, 1)


def build_model(name: str, *, hidden: int = 500, in_channels: int | None = None, num_classes: int = 10,
                image_size: int | None = None, width_mult: float = 1.0, rng=None):
    """A fresh model by the name a checkpoint records, for in_channels x image_size x image_size
    images (None: the model's default_input) and num_classes classes; `hidden` is the mlp's width,
    `width_mult` mobilenet_v2's (the others ignore them).
    lenet5 and lenet5_classic take only 1 x 28 x 28 images (their layer sizes are the course's);
    resnet18 and mobilenet_v2 images of at least 32 x 32, resnet20 of at least 4 x 4 (min_image_size)."""
    if name not in _DEFAULT_INPUT:
        raise ValueError(f"build_model(): name must be one of {', '.join(MODELS)}, got {name!r}")
    default_channels, default_size = _DEFAULT_INPUT[name]
    in_channels = default_channels if in_channels is None else _count(in_channels, "in_channels", "build_model")
    image_size = default_size if image_size is None else _count(image_size, "image_size", "build_model")
    if name in ("lenet5", "lenet5_classic") and (in_channels, image_size) != (1, 28):
        raise ValueError(f"build_model(): {name} takes 1 x 28 x 28 images, got {in_channels} x {image_size} x "
                         f"{image_size} (small_cnn and mlp take any size)")
    if image_size < min_image_size(name):
        smallest = min_image_size(name)
        raise ValueError(f"build_model(): {name} takes images of at least {smallest} x {smallest} (it downsamples "
                         f"them {smallest} times before its global pooling), got {image_size} x {image_size}")
    if name == "resnet20":
        return resnet20(num_classes, in_channels, rng=rng)
    if name == "resnet18":
        return resnet18(num_classes, in_channels=in_channels, rng=rng)
    if name == "mobilenet_v2":
        return mobilenet_v2(num_classes, width_mult, in_channels=in_channels, rng=rng)
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
# Modern networks: ResNet and MobileNetV2 with torchvision's structure and names
#
# Initialisation (torchvision's, which they train from): every convolution's weight ~ N(0, 2 / fan_out),
# fan_out = out_channels * kh * kw (kaiming_normal_, mode="fan_out", nonlinearity="relu"; a depthwise
# convolution counts its out_channels too, as PyTorch does), no convolution has a bias, BatchNorm weight 1
# and bias 0 (BatchNorm's own defaults). ResNet's fc keeps Linear's default U(+-1/sqrt(fan_in));
# MobileNetV2's classifier is N(0, 0.01) with a zero bias. All drawn in float64 from the one `rng`, then cast.


def _conv(in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, *, dtype, rng):
    """A Conv2d without bias, its weight drawn as torchvision's ResNet and MobileNetV2 draw theirs."""
    conv = Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups,
                  bias=False, dtype=dtype, rng=rng)
    weight = conv.weight.data
    fan_out = out_channels * weight.shape[2] * weight.shape[3]
    weight[...] = rng.normal(0.0, math.sqrt(2.0 / fan_out), weight.shape)
    return conv


class BasicBlock(Module):
    """torchvision's ResNet BasicBlock: two 3x3 convolutions with BatchNorm, and the input added back
    before the last ReLU, through `downsample` (a 1x1 convolution + BatchNorm) where the shape changes.
    One `relu`, called twice, as torchvision's.

    Shape: (N, inplanes, H, W) -> (N, planes, ceil(H / stride), ceil(W / stride)).
    """

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, *, dtype=np.float32, rng=None):
        super().__init__()
        fn = "BasicBlock"
        inplanes, planes = _count(inplanes, "inplanes", fn), _count(planes, "planes", fn)
        stride = _count(stride, "stride", fn)
        if downsample is not None and not isinstance(downsample, Module):
            raise TypeError(f"{fn}(): downsample must be a Module or None, got {type(downsample).__name__}")
        dtype, rng = _float_dtype(dtype, fn), _generator(rng, fn)
        self.conv1 = _conv(inplanes, planes, 3, stride, 1, dtype=dtype, rng=rng)
        self.bn1 = BatchNorm2d(planes, dtype=dtype)
        self.relu = ReLU()
        self.conv2 = _conv(planes, planes, 3, 1, 1, dtype=dtype, rng=rng)
        self.bn2 = BatchNorm2d(planes, dtype=dtype)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(Module):
    """A ResNet of BasicBlocks, named as torchvision names it: conv1, bn1, relu, [maxpool], layer1 ...
    layerK (stage i has layers[i] blocks of widths[i] channels; every stage after the first starts
    with stride 2), avgpool (global), fc. Where a block changes the shape, its shortcut is a 1x1
    convolution + BatchNorm (`downsample.0`, `downsample.1`; He et al.'s option B).

    stem "imagenet": conv1 is 7x7 with stride 2 and padding 3, then a 3x3 max pooling with stride 2
    (torchvision's ResNet-18/34); "cifar": conv1 is 3x3 with stride 1 and no pooling (He et al. 2016,
    section 4.2, for 32 x 32 images).

    Shape: (N, in_channels, H, W) -> (N, num_classes).
    """

    def __init__(self, layers=(2, 2, 2, 2), num_classes=1000, *, widths=(64, 128, 256, 512), in_channels=3,
                 stem="imagenet", dtype=np.float32, rng=None):
        super().__init__()
        fn = "ResNet"
        layers = tuple(_count(n, "layers", fn) for n in layers)
        widths = tuple(_count(w, "widths", fn) for w in widths)
        if not layers or len(layers) != len(widths):
            raise ValueError(f"{fn}(): layers and widths must give one number per stage, got {layers} and {widths}")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"{fn}(): stem must be 'imagenet' or 'cifar', got {stem!r}")
        num_classes = _count(num_classes, "num_classes", fn)
        in_channels = _count(in_channels, "in_channels", fn)
        dtype, rng = _float_dtype(dtype, fn), _generator(rng, fn)
        if stem == "imagenet":
            self.conv1 = _conv(in_channels, widths[0], 7, 2, 3, dtype=dtype, rng=rng)
        else:
            self.conv1 = _conv(in_channels, widths[0], 3, 1, 1, dtype=dtype, rng=rng)
        self.bn1 = BatchNorm2d(widths[0], dtype=dtype)
        self.relu = ReLU()
        self.maxpool = MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else None
        inplanes = widths[0]
        for i, (blocks, planes) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", self._stage(inplanes, planes, blocks, stride, dtype, rng))
            inplanes = planes
        self.num_stages = len(layers)
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.flatten = Flatten()  # torch.flatten(x, 1) in torchvision's forward
        self.fc = Linear(inplanes, num_classes, dtype=dtype, rng=rng)

    @staticmethod
    def _stage(inplanes, planes, blocks, stride, dtype, rng):
        downsample = None
        if stride != 1 or inplanes != planes:
            downsample = Sequential(_conv(inplanes, planes, 1, stride, dtype=dtype, rng=rng),
                                    BatchNorm2d(planes, dtype=dtype))
        first = BasicBlock(inplanes, planes, stride, downsample, dtype=dtype, rng=rng)
        return Sequential(first, *(BasicBlock(planes, planes, dtype=dtype, rng=rng) for _ in range(1, blocks)))

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(self.flatten(self.avgpool(x)))


def resnet18(num_classes=1000, *, in_channels=3, dtype=np.float32, rng=None):
    """torchvision's ResNet-18: the "imagenet" stem, four stages of two BasicBlocks with 64, 128, 256 and
    512 channels. 11,689,512 parameters at 1000 classes. Built for 3 x 224 x 224 images; takes any of at
    least 32 x 32 (the total stride).

    Shape: (N, in_channels, H, W) -> (N, num_classes).
    """
    return ResNet((2, 2, 2, 2), num_classes, in_channels=in_channels, dtype=dtype, rng=rng)


def resnet20(num_classes=10, in_channels=3, *, dtype=np.float32, rng=None):
    """He et al. (2016)'s CIFAR ResNet-20, named as torchvision names a ResNet: a 3x3 stem of 16
    channels, three stages of three BasicBlocks with 16, 32 and 64 channels (stride 2 at the start of
    the second and third), 1x1 convolution + BatchNorm shortcuts where the shape changes, global average
    pooling, Linear 64 -> num_classes. 272,474 parameters at 10 classes. Built for 3 x 32 x 32 images.

    Shape: (N, in_channels, H, W) -> (N, num_classes).
    """
    return ResNet((3, 3, 3), num_classes, widths=(16, 32, 64), in_channels=in_channels, stem="cifar",
                  dtype=dtype, rng=rng)


def _make_divisible(v, divisor=8):
    """v rounded to the nearest multiple of divisor, at least divisor and never more than 10% below v
    (torchvision's, from the TensorFlow original)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _conv_bn_relu6(in_channels, out_channels, kernel_size=3, stride=1, groups=1, *, dtype, rng):
    """Conv2d ("same" padding, no bias) -> BatchNorm2d -> ReLU6: torchvision's Conv2dNormActivation,
    whose children are named 0, 1, 2."""
    return Sequential(_conv(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, groups,
                            dtype=dtype, rng=rng),
                      BatchNorm2d(out_channels, dtype=dtype), ReLU6())


class InvertedResidual(Module):
    """MobileNetV2's block (Sandler et al. 2018): a 1x1 expansion to inp * expand_ratio channels (left out
    when expand_ratio is 1), a 3x3 depthwise convolution with the stride, and a linear 1x1 projection
    to oup channels, with BatchNorm after each; the input is added back when the shape is kept
    (stride 1 and inp == oup). Children as torchvision's: conv.0, conv.1, ...

    Shape: (N, inp, H, W) -> (N, oup, ceil(H / stride), ceil(W / stride)).
    """

    def __init__(self, inp, oup, stride, expand_ratio, *, dtype=np.float32, rng=None):
        super().__init__()
        fn = "InvertedResidual"
        inp, oup, expand_ratio = (_count(v, name, fn) for v, name in
                                  ((inp, "inp"), (oup, "oup"), (expand_ratio, "expand_ratio")))
        if stride not in (1, 2):
            raise ValueError(f"{fn}(): stride must be 1 or 2, got {stride!r}")
        dtype, rng = _float_dtype(dtype, fn), _generator(rng, fn)
        hidden = inp * expand_ratio
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        layers = [] if expand_ratio == 1 else [_conv_bn_relu6(inp, hidden, 1, dtype=dtype, rng=rng)]
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden, dtype=dtype, rng=rng),
                   _conv(hidden, oup, 1, dtype=dtype, rng=rng), BatchNorm2d(oup, dtype=dtype)]
        self.conv = Sequential(*layers)
        self.out_channels = oup

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(Module):
    """torchvision's MobileNetV2: `features` (a 3x3 stride-2 stem, the InvertedResidual blocks of
    SETTING, a 1x1 convolution to last_channel), global average pooling, and `classifier` (Dropout,
    Linear). width_mult scales every width (rounded to multiples of 8; last_channel only grows).

    The Dropout's mask counter is not saved (persistent=False), so state_dict() holds torchvision's keys
    and no others; a resumed run restarts its masks from the build's seed.

    Shape: (N, in_channels, H, W) -> (N, num_classes).
    """

    # t (expansion), c (channels), n (blocks), s (stride of the first), from the paper's Table 2
    SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))

    def __init__(self, num_classes=1000, width_mult=1.0, dropout=0.2, *, in_channels=3, dtype=np.float32,
                 rng=None):
        super().__init__()
        fn = "MobileNetV2"
        num_classes = _count(num_classes, "num_classes", fn)
        in_channels = _count(in_channels, "in_channels", fn)
        if isinstance(width_mult, (bool, np.bool_)) or not isinstance(width_mult, (int, float, np.integer,
                                                                                     np.floating)) \
                or not np.isfinite(width_mult) or width_mult <= 0:
            raise ValueError(f"{fn}(): width_mult must be a finite number > 0, got {width_mult!r}")
        dtype, rng = _float_dtype(dtype, fn), _generator(rng, fn)
        self.width_mult = float(width_mult)
        channels = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        features = [_conv_bn_relu6(in_channels, channels, 3, 2, dtype=dtype, rng=rng)]
        for t, c, n, s in self.SETTING:
            out = _make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(channels, out, s if i == 0 else 1, t, dtype=dtype, rng=rng))
                channels = out
        features.append(_conv_bn_relu6(channels, self.last_channel, 1, dtype=dtype, rng=rng))
        self.features = Sequential(*features)
        # torchvision pools and flattens with functions in its forward; here they are layers without keys.
        self.avgpool = AdaptiveAvgPool2d((1, 1))
        self.flatten = Flatten()
        linear = Linear(self.last_channel, num_classes, dtype=dtype, rng=rng)
        linear.weight.data[...] = rng.normal(0.0, 0.01, linear.weight.data.shape)
        linear.bias.data[...] = 0
        self.classifier = Sequential(Dropout(dropout, rng=rng, persistent=False), linear)

    def forward(self, x):
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


def mobilenet_v2(num_classes=1000, width_mult=1.0, dropout=0.2, *, in_channels=3, dtype=np.float32, rng=None):
    """torchvision's MobileNetV2 (see MobileNetV2): 3,504,872 parameters at 1000 classes and width 1.
    Built for 3 x 224 x 224 images; takes any of at least 32 x 32 (the total stride).

    Shape: (N, in_channels, H, W) -> (N, num_classes).
    """
    return MobileNetV2(num_classes, width_mult, dropout, in_channels=in_channels, dtype=dtype, rng=rng)


# ---------------------------------------------------------------------------
# summary


def _size(shape):
    return " x ".join(str(d) for d in shape)


def _hyper(pair):
    """5 for (5, 5), (3, 5) otherwise."""
    return pair[0] if pair[0] == pair[1] else pair


def _window_out(shape, kernel, stride, padding, layer, dilation=(1, 1)):
    c, h, w = shape
    span = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    if h + 2 * padding[0] < span[0] or w + 2 * padding[1] < span[1]:
        raise ValueError(f"summary(): {layer!r} gets input {_size(shape)}, smaller than its kernel {kernel}")
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip((h, w), span, stride, padding))


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
        d, groups = getattr(layer, "dilation", (1, 1)), getattr(layer, "groups", 1)
        label = f"Conv (C_out={layer.out_channels}, K={_hyper(k)}, P={_hyper(p)}, S={_hyper(s)}" + (
            f", D={_hyper(d)}" if d != (1, 1) else "") + (f", G={groups})" if groups != 1 else ")")
        return label, (layer.out_channels, *_window_out(shape, k, s, p, layer, d)), _size(layer.weight.data.shape)
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
    if isinstance(layer, AdaptiveAvgPool2d):
        _expect(shape, 3, layer)
        return f"AdaptiveAvgPool ({_size(layer.output_size)})", (shape[0], *layer.output_size), ""
    if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
        if shape[0] != layer.num_features:
            raise ValueError(f"summary(): {layer!r} gets {shape[0]} channels")
        return f"BatchNorm (C={layer.num_features})", shape, (f"2 x {layer.num_features}" if layer.affine else "")
    if isinstance(layer, Dropout):
        return f"Dropout (p={layer.p:g})", shape, ""
    if isinstance(layer, (ReLU, ReLU6, Sigmoid, Tanh, Softmax, LogSoftmax, Identity)):
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


def _describe_node(node, shapes):
    """_describe for a node of a graph, which may read several values (Add, Concat)."""
    if len(shapes) == 1:
        return _describe(node.module, shapes[0])
    if not isinstance(node.module, (Add, Concat)):
        raise TypeError(f"summary(): cannot describe a {type(node.module).__name__} of {len(shapes)} inputs")
    try:
        return type(node.module).__name__, tuple(node.module.output_shape(*shapes)), ""
    except ValueError as e:
        raise ValueError(f"summary(): layer {node.name!r}: {e}") from None


def _table(rows):
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row):
        return " | ".join(f"{cell:<{w}}" for cell, w in zip(row, widths)).rstrip()

    return [line(rows[0]), "-+-".join("-" * w for w in widths), *map(line, rows[1:])]


def summary(model, input_shape=(1, 28, 28)):
    """The course's table of a network: one row per layer with its output size (per image, no batch
    axis) and weight size, then the total number of parameters (weights and biases).

    The rows follow the model's graph (cyconv.graph.trace), in the order its layers run. A model that
    branches (a ResNet, a MobileNetV2) gets two more columns: each layer's name in the model
    ("layer1.0.conv1"; "layer1.0.relu#1" for a layer's second call, "add" ... for the additions its
    forward writes as `+`), and, where a layer does not read the row just above it, the names of what
    it reads ("input" for the model's input).

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
    tr = graph.trace(model)
    total = sum(p.data.size for p in model.parameters())
    if tr.is_chain():
        rows = [("Layer", "Output Size", "Weight Size"), ("Input", _size(shape), "")]
        for node in tr.nodes:
            label, shape, weight = _describe(node.module, shape)
            rows.append((label, _size(shape), weight))
        return "\n".join([*_table(rows), f"Total parameters: {total:,}"])
    values = [shape]
    names = ["input"] + [node.name for node in tr.nodes]
    rows = [("Name", "Layer", "Output Size", "Weight Size", "Input"), ("input", "Input", _size(shape), "", "")]
    for i, node in enumerate(tr.nodes):
        label, out, weight = _describe_node(node, [values[v] for v in node.inputs])
        values.append(out)
        reads = "" if node.inputs == (i,) else ", ".join(names[v] for v in node.inputs)
        rows.append((node.name, label, _size(out), weight, reads))
    if tr.output != len(tr.nodes):
        rows.append(("output", "Output", _size(values[tr.output]), "", names[tr.output]))
    return "\n".join([*_table(rows), f"Total parameters: {total:,}"])


def conv_algorithms(model, input_shape=(1, 28, 28), batch=64):
    """[(layer name, what its convolution runs in training at this batch size, what cyconv.compile runs)]:
    "im2col", "direct" or "winograd<m>" (functional.resolve_conv_algorithm: the layer's `algorithm`,
    CYCONV_CONV_ALGO, and conv_algorithm()'s choice by shape)."""
    from . import functional as F

    tr = graph.trace(model)
    values = graph.shapes(tr, input_shape)
    rows = []
    for node in tr.nodes:
        m = node.module
        if isinstance(m, Conv2d):
            C, H, W = values[node.inputs[0]]
            args = (m.algorithm, C, m.out_channels, H, W, m.kernel_size, m.stride, m.padding, m.dilation, m.groups)
            rows.append((node.name, F.resolve_conv_algorithm("conv_algorithms()", *args, batch, m.weight.data.dtype),
                         F.resolve_conv_algorithm("conv_algorithms()", *args, None, m.weight.data.dtype)))
    return rows
