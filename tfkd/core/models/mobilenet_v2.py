"""MobileNetV2 for small images (Sandler et al., 2018, "Inverted Residuals and Linear
Bottlenecks"), in the CIFAR variant of the Tf-KD code base.

Differences from the ImageNet network, kept for faithful reproduction: the stem is a 1x1
convolution (32 channels, zero padding 1, so 32x32 inputs become 34x34 maps); the strides
of the seven bottleneck stages are 1, 2, 2, 2, 1, 1, 1; every convolution has a bias; and
there is no dropout before the classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from tfkd.core.models.registry import register

# (expansion t, output channels, repeats, stride of the first block) per stage.
_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 1),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6), 3x3 depthwise (ReLU6), linear 1x1 project; residual if shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_ch, 1),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out + x if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) with a 1280-channel head and a linear classifier."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, 32, 1, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU6(inplace=True),
        ]
        in_ch = 32
        for t, out_ch, repeats, stride in _STAGES:
            for i in range(repeats):
                layers.append(InvertedResidual(in_ch, out_ch, stride if i == 0 else 1, t))
                in_ch = out_ch
        layers += [nn.Conv2d(in_ch, 1280, 1), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register("mobilenet_v2")
def mobilenet_v2(num_classes: int) -> nn.Module:
    """MobileNetV2, CIFAR variant."""
    return MobileNetV2(num_classes)
