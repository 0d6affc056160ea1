"""ResNet-18/34/50/101 for small images (He et al., 2016, "Deep Residual Learning").

The CIFAR adaptation used by the Tf-KD code base: a 3x3 stride-1 stem without max-pooling,
four stages of 64/128/256/512 planes (strides 1, 2, 2, 2), projection shortcuts (1x1 conv +
BN) wherever the shape changes, bias-free convolutions, global average pooling, one linear
classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tfkd.core.models.registry import register


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, out_planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.shortcut = _projection(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual connection (ResNet-50/101)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _projection(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Identity if the shape is kept, else a strided 1x1 conv + BN (option B)."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class ResNet(nn.Module):
    """Four-stage ResNet; ``blocks`` gives the number of blocks per stage."""

    def __init__(
        self, block: type[BasicBlock | Bottleneck], blocks: tuple[int, ...], num_classes: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks, strict=True)):
            layers = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(block(in_planes, planes, stride))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


@register("resnet18")
def resnet18(num_classes: int) -> nn.Module:
    """ResNet-18 (basic blocks 2-2-2-2)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes)


@register("resnet34")
def resnet34(num_classes: int) -> nn.Module:
    """ResNet-34 (basic blocks 3-4-6-3)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes)


@register("resnet50")
def resnet50(num_classes: int) -> nn.Module:
    """ResNet-50 (bottlenecks 3-4-6-3)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes)


@register("resnet101")
def resnet101(num_classes: int) -> nn.Module:
    """ResNet-101 (bottlenecks 3-4-23-3)."""
    return ResNet(Bottleneck, (3, 4, 23, 3), num_classes)
