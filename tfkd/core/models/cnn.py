"""The plain 5-layer CNN of the Tf-KD paper's CIFAR-10 table (3 conv + 2 fully connected).

Three blocks of 3x3 conv (with bias) -> BN -> 2x2 max-pool -> ReLU with 32/64/128
channels, then a 4x4 map flattened into FC(2048 -> 128) -> BN -> ReLU -> dropout 0.5 ->
FC(128 -> classes). An adaptive average pooling to 4x4 before flattening (the identity for
32x32 inputs) lets it take larger images too.
"""

from __future__ import annotations

import torch
from torch import nn

from tfkd.core.models.registry import register


class PlainCNN(nn.Module):
    """3 conv blocks of ``channels``, 2x and 4x that, then two linear layers."""

    def __init__(self, num_classes: int, channels: int = 32, dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for out_ch in (channels, 2 * channels, 4 * channels):
            layers += [
                nn.Conv2d(in_ch, out_ch, 3, padding=1),
                nn.BatchNorm2d(out_ch),
                nn.MaxPool2d(2),
                nn.ReLU(inplace=True),
            ]
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Sequential(
            nn.Linear(16 * in_ch, in_ch),
            nn.BatchNorm1d(in_ch),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.classifier = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(self.features(x)), 1)
        return self.classifier(self.fc(x))


@register("cnn")
def cnn(num_classes: int) -> nn.Module:
    """The paper's 5-layer CNN (32/64/128 channels, dropout 0.5)."""
    return PlainCNN(num_classes)
