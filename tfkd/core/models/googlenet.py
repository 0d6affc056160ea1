"""GoogLeNet (Inception v1) for small images (Szegedy et al., 2015, "Going Deeper with
Convolutions"), in the CIFAR variant of the Tf-KD code base.

The stem is a single 3x3 convolution to 192 channels (no down-sampling); the 5x5 branch of
each Inception module is two stacked 3x3 convolutions; every convolution has a bias and is
followed by BN + ReLU; there are no auxiliary classifiers. Inception 3a-3b, max-pool, 4a-4e,
max-pool, 5a-5b, global average pooling, dropout 0.4, linear classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from tfkd.core.models.registry import register

# (1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool projection) per Inception module.
_INCEPTION_3 = ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64))
_INCEPTION_4 = (
    (192, 96, 208, 16, 48, 64),
    (160, 112, 224, 24, 64, 64),
    (128, 128, 256, 24, 64, 64),
    (112, 144, 288, 32, 64, 64),
    (256, 160, 320, 32, 128, 128),
)
_INCEPTION_5 = ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128))


def _conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


class Inception(nn.Module):
    """Four parallel branches (1x1; 1x1-3x3; 1x1-3x3-3x3; maxpool-1x1), concatenated."""

    def __init__(
        self, in_ch: int, n1: int, n3_red: int, n3: int, n5_red: int, n5: int, pool_proj: int
    ) -> None:
        super().__init__()
        self.out_channels = n1 + n3 + n5 + pool_proj
        self.b1 = nn.Sequential(*_conv_bn_relu(in_ch, n1, 1))
        self.b2 = nn.Sequential(*_conv_bn_relu(in_ch, n3_red, 1), *_conv_bn_relu(n3_red, n3, 3))
        self.b3 = nn.Sequential(
            *_conv_bn_relu(in_ch, n5_red, 1),
            *_conv_bn_relu(n5_red, n5, 3),
            *_conv_bn_relu(n5, n5, 3),
        )
        self.b4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1), *_conv_bn_relu(in_ch, pool_proj, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)


class GoogLeNet(nn.Module):
    """GoogLeNet, CIFAR variant."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = _conv_bn_relu(3, 192, 3)
        in_ch = 192
        for group in (_INCEPTION_3, _INCEPTION_4, _INCEPTION_5):
            if group is not _INCEPTION_3:
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
            for widths in group:
                module = Inception(in_ch, *widths)
                layers.append(module)
                in_ch = module.out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.4)
        self.classifier = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(self.features(x)), 1)
        return self.classifier(self.dropout(x))


@register("googlenet")
def googlenet(num_classes: int) -> nn.Module:
    """GoogLeNet, CIFAR variant."""
    return GoogLeNet(num_classes)
