"""ShuffleNetV2 1x for small images (Ma et al., 2018, "ShuffleNet V2"), in the CIFAR
variant of the Tf-KD code base.

Differences from the ImageNet network, kept for faithful reproduction: the stem is a 3x3
stride-1 convolution + BN without ReLU or max-pooling; every convolution has a bias; the
branches end in BN + ReLU after the last 1x1 convolution, with no ReLU after the depthwise
one. Stages 2-4 have 4, 8 and 4 units with 116, 232 and 464 channels, then a 1x1
convolution to 1024 channels.
"""

from __future__ import annotations

import torch
from torch import nn

from tfkd.core.models.registry import register


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups: (g, c/g) -> (c/g, g)."""
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


def _branch(in_ch: int, mid_ch: int, out_ch: int, stride: int, with_entry: bool) -> nn.Sequential:
    """[1x1 conv-BN-ReLU] -> 3x3 depthwise conv-BN -> 1x1 conv-BN-ReLU."""
    layers: list[nn.Module] = []
    if with_entry:
        layers += [nn.Conv2d(in_ch, mid_ch, 1), nn.BatchNorm2d(mid_ch), nn.ReLU(inplace=True)]
        in_ch = mid_ch
    layers += [
        nn.Conv2d(in_ch, in_ch, 3, stride=stride, padding=1, groups=in_ch),
        nn.BatchNorm2d(in_ch),
        nn.Conv2d(in_ch, out_ch, 1),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]
    return nn.Sequential(*layers)


class ShuffleUnit(nn.Module):
    """Basic unit (split channels, transform one half) or down-sampling unit (both branches
    see the whole input); the halves are concatenated and channel-shuffled."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.split = stride == 1 and in_ch == out_ch
        if self.split:
            half = in_ch // 2
            self.shortcut: nn.Module = nn.Identity()
            self.residual = _branch(half, half, half, 1, with_entry=True)
        else:
            self.shortcut = _branch(in_ch, in_ch, out_ch // 2, stride, with_entry=False)
            self.residual = _branch(in_ch, in_ch, out_ch // 2, stride, with_entry=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split:
            a, b = x.chunk(2, dim=1)
        else:
            a = b = x
        return channel_shuffle(torch.cat([self.shortcut(a), self.residual(b)], dim=1), 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 with channel widths ``widths`` (three stages, then the 1x1 head)."""

    def __init__(
        self, num_classes: int, widths: tuple[int, int, int, int] = (116, 232, 464, 1024)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24)]
        in_ch = 24
        for out_ch, units in zip(widths[:3], (4, 8, 4), strict=True):
            layers.append(ShuffleUnit(in_ch, out_ch, 2))
            layers += [ShuffleUnit(out_ch, out_ch, 1) for _ in range(units - 1)]
            in_ch = out_ch
        layers += [nn.Conv2d(in_ch, widths[3], 1), nn.BatchNorm2d(widths[3]), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register("shufflenet_v2")
def shufflenet_v2(num_classes: int) -> nn.Module:
    """ShuffleNetV2 1x, CIFAR variant."""
    return ShuffleNetV2(num_classes)
