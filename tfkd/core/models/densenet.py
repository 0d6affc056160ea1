"""DenseNet-BC-121 for small images (Huang et al., 2017, "Densely Connected Convolutional
Networks"), in the CIFAR variant of the Tf-KD code base.

Growth rate 32, dense blocks of 6/12/24/16 bottleneck layers (BN-ReLU-1x1 conv to 4k,
BN-ReLU-3x3 conv to k), compression 0.5 in the transitions, a single 3x3 stem convolution
to 2k channels without pooling, bias-free convolutions. As in the reference code, the
transitions are BN -> 1x1 conv -> 2x2 average pooling, without a ReLU.
"""

from __future__ import annotations

import torch
from torch import nn

from tfkd.core.models.registry import register


class DenseLayer(nn.Module):
    """Bottleneck layer whose ``growth`` new channels are appended to its input."""

    def __init__(self, in_ch: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_ch, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth),
            nn.ReLU(inplace=True),
            nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


def _transition(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(in_ch), nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.AvgPool2d(2)
    )


class DenseNet(nn.Module):
    """DenseNet-BC with ``blocks`` layers per dense block."""

    def __init__(
        self,
        blocks: tuple[int, ...],
        growth: int,
        num_classes: int,
        compression: float = 0.5,
    ) -> None:
        super().__init__()
        ch = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(3, ch, 3, padding=1, bias=False)]
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(ch, growth))
                ch += growth
            if i < len(blocks) - 1:
                out_ch = int(compression * ch)
                layers.append(_transition(ch, out_ch))
                ch = out_ch
        layers += [nn.BatchNorm2d(ch), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register("densenet121")
def densenet121(num_classes: int) -> nn.Module:
    """DenseNet-BC-121 (k=32, blocks 6-12-24-16)."""
    return DenseNet((6, 12, 24, 16), 32, num_classes)
