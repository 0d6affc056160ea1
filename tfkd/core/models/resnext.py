"""ResNeXt-29 (8x64d) for CIFAR (Xie et al., 2017, "Aggregated Residual Transformations").

A 3x3 stem to 64 channels, three stages of three bottlenecks with 256/512/1024 output
channels (strides 1, 2, 2); each bottleneck is 1x1 reduce -> grouped 3x3 (8 groups) ->
1x1 expand with inner width 2x its output (512/1024/2048), projection shortcuts (1x1 conv +
BN) where the width changes, bias-free convolutions. Initialisation follows the reference
code: Kaiming-normal convolutions (fan-out), Kaiming-normal classifier, zero biases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tfkd.core.models.registry import register


class ResNeXtBottleneck(nn.Module):
    """Type-C ResNeXt block: grouped 3x3 convolution between 1x1 reduce and expand."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, cardinality: int, width: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(width)
        self.conv_group = nn.Conv2d(
            width, width, 3, stride=stride, padding=1, groups=cardinality, bias=False
        )
        self.bn_group = nn.BatchNorm2d(width)
        self.conv_expand = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(out_ch)
        if stride == 1 and in_ch == out_ch:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn_reduce(self.conv_reduce(x)))
        out = F.relu(self.bn_group(self.conv_group(out)))
        out = self.bn_expand(self.conv_expand(out))
        return F.relu(out + self.shortcut(x))


class CifarResNeXt(nn.Module):
    """ResNeXt of depth 9n+2 (n blocks per stage), ``cardinality`` groups, base width
    ``base_width`` per group in the first stage (doubling with the stage)."""

    def __init__(self, depth: int, cardinality: int, base_width: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 9:
            raise ValueError(f"ResNeXt depth must be 9n+2, got {depth}")
        n = (depth - 2) // 9
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers: list[nn.Module] = []
        in_ch = 64
        for i, out_ch in enumerate((256, 512, 1024)):
            width = cardinality * base_width * 2**i
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(ResNeXtBottleneck(in_ch, out_ch, stride, cardinality, width))
                in_ch = out_ch
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
        nn.init.kaiming_normal_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.classifier(torch.flatten(self.pool(x), 1))


@register("resnext29")
def resnext29(num_classes: int) -> nn.Module:
    """ResNeXt-29, 8x64d."""
    return CifarResNeXt(29, 8, 64, num_classes)
