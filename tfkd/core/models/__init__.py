"""CIFAR / Tiny-ImageNet model zoo of the Tf-KD paper behind a name registry.

``build(name, num_classes)`` returns an ``nn.Module`` mapping ``(N, 3, H, W)`` images (any
``H, W`` >= 32, e.g. 32x32 CIFAR or 64x64 Tiny-ImageNet) to ``(N, num_classes)`` logits.
Every model ends in global average pooling and a layer named ``classifier``. Parameter
counts match the authors' implementation (Yuan et al., CVPR 2020) exactly.
"""

# Importing the family modules registers their models.
from tfkd.core.models import (  # noqa: F401
    cnn,
    densenet,
    googlenet,
    mobilenet_v2,
    resnet,
    resnext,
    shufflenet_v2,
    small_resnet,
)
from tfkd.core.models.registry import MODELS, build, names, register

__all__ = ["MODELS", "build", "names", "register"]
