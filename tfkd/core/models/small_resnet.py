"""The small CIFAR ResNets of He et al., 2016 ("Deep Residual Learning", section 4.2).

Depth 6n+2: a 3x3 stem with 16 channels, three stages of n basic blocks with 16/32/64
channels (strides 1, 2, 2), global average pooling and a linear classifier. Shortcuts are
the paper's *option A*: parameter-free identity, with the input subsampled by the stride
and zero-padded in the channel dimension when the shape changes. That is the variant behind
the paper's parameter counts (ResNet-20: 0.27M for 10 classes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tfkd.core.models.registry import register


class PadShortcut(nn.Module):
    """Option-A shortcut: take every ``stride``-th pixel, zero-pad the extra channels."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = out_planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a parameter-free residual connection."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride == 1 and in_planes == planes:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = PadShortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) with ``n`` blocks per stage."""

    def __init__(self, n: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers: list[nn.Module] = []
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            for j in range(n):
                layers.append(BasicBlock(in_planes, planes, 2 if i > 0 and j == 0 else 1))
                in_planes = planes
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


@register("resnet8")
def resnet8(num_classes: int) -> nn.Module:
    """ResNet-8 (one block per stage)."""
    return CifarResNet(1, num_classes)


@register("resnet20")
def resnet20(num_classes: int) -> nn.Module:
    """ResNet-20 (three blocks per stage)."""
    return CifarResNet(3, num_classes)


@register("resnet32")
def resnet32(num_classes: int) -> nn.Module:
    """ResNet-32 (five blocks per stage; a student of DKD's CIFAR-100 table)."""
    return CifarResNet(5, num_classes)


@register("resnet56")
def resnet56(num_classes: int) -> nn.Module:
    """ResNet-56 (nine blocks per stage; a teacher of DKD's CIFAR-100 table)."""
    return CifarResNet(9, num_classes)


@register("resnet110")
def resnet110(num_classes: int) -> nn.Module:
    """ResNet-110 (eighteen blocks per stage; a teacher of DKD's CIFAR-100 table)."""
    return CifarResNet(18, num_classes)
