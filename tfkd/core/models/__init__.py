"""The Tf-KD paper's CIFAR / Tiny-ImageNet model zoo and torchvision's ImageNet architectures
(`tv_*`, torchvision_zoo.py) behind one name registry.

``build(name, num_classes)`` returns an ``nn.Module`` mapping ``(N, 3, H, W)`` images (any
``H, W`` >= 32, e.g. 32x32 CIFAR or 64x64 Tiny-ImageNet) to ``(N, num_classes)`` logits.
Every paper model ends in global average pooling and a layer named ``classifier``. Parameter
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
    torchvision_zoo,
)
from tfkd.core.models.registry import MODELS, build, names, register
from tfkd.core.models.torchvision_zoo import PREFIX as TORCHVISION_PREFIX

__all__ = ["MODELS", "TORCHVISION_PREFIX", "build", "names", "paper_names", "register"]


def paper_names() -> list[str]:
    """The paper's CIFAR / Tiny-ImageNet zoo (every registered model but torchvision's)."""
    return [n for n in names() if not n.startswith(TORCHVISION_PREFIX)]
