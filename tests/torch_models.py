"""Plain-PyTorch definitions of the networks cyconv is checked against, without torchvision: the same
modules, in the same order, under the same parameter names as torchvision's, so a state_dict moves
between them and an ONNX export names its initializers alike.

    resnet18(num_classes=1000)                       torchvision.models.resnet18: 11,689,512 parameters
    mobilenet_v2(num_classes=1000, width_mult=1.0)   torchvision.models.mobilenet_v2: 3,504,872 parameters
    resnet20(num_classes=10, in_channels=3)          the CIFAR ResNet-20 of He et al. 2016 (section 4.2), with
                                                     1x1 convolution + BatchNorm shortcuts: 272,474 parameters

Weights are PyTorch's default initialisation (torchvision's own init schemes are left out: the tests
want some network, not a trained one). Importing this module needs torch.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["resnet18", "mobilenet_v2", "resnet20", "BasicBlock", "ResNet", "InvertedResidual", "MobileNetV2",
           "count_parameters"]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------
# ResNet (torchvision.models.resnet, BasicBlock only)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm, and the input added back (through a 1x1 convolution + BatchNorm,
    `downsample`, where the shape changes). One `relu` module, called twice, as torchvision's."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _shortcut(inplanes: int, planes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == planes:
        return None
    return nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))


def _stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(inplanes, planes, stride, _shortcut(inplanes, planes, stride))]
    layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """torchvision's ResNet with BasicBlocks: a 7x7 stride-2 stem and max pooling, four stages of
    64/128/256/512 channels (stride 2 from the second on), global average pooling and one Linear."""

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = _stage(64, 64, layers[0], 1)
        self.layer2 = _stage(64, 128, layers[1], 2)
        self.layer3 = _stage(128, 256, layers[2], 2)
        self.layer4 = _stage(256, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes)


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet-(6n+2): a 3x3 stem of 16 channels, three stages of n BasicBlocks with
    16/32/64 channels (stride 2 at the start of the second and third), global average pooling, one
    Linear. Shortcuts that change shape are a 1x1 convolution + BatchNorm (the paper's option B)."""

    def __init__(self, blocks: int = 3, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _stage(16, 16, blocks, 1)
        self.layer2 = _stage(16, 32, blocks, 2)
        self.layer3 = _stage(32, 64, blocks, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(3, num_classes, in_channels)


# ---------------------------------------------------------------------------------------------------------
# MobileNetV2 (torchvision.models.mobilenetv2)


def _make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """v rounded to the nearest multiple of divisor, never below min_value (default divisor) nor more
    than 10% below v (from the TensorFlow original, as torchvision keeps it)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNActivation(nn.Sequential):
    """Conv2d (no bias, "same" padding) -> BatchNorm2d -> ReLU6: torchvision's Conv2dNormActivation,
    whose children are named 0, 1, 2."""

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        padding = (kernel_size - 1) // 2
        super().__init__(nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, groups=groups, bias=False),
                         nn.BatchNorm2d(out_planes), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """A 1x1 expansion (left out when expand_ratio is 1), a 3x3 depthwise convolution and a 1x1
    linear projection, with the input added back when the shape is kept."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual: stride must be 1 or 2, got {stride}")
        self.stride = stride
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNActivation(inp, hidden_dim, kernel_size=1))
        layers += [ConvBNActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
                   nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    # t (expansion), c (channels), n (blocks), s (stride of the first)
    SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2,
                 round_nearest: int = 8):
        super().__init__()
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [ConvBNActivation(3, input_channel, stride=2)]
        for t, c, n, s in self.SETTING:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
        features.append(ConvBNActivation(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2) -> MobileNetV2:
    return MobileNetV2(num_classes, width_mult, dropout)
