"""torchvision's ImageNet architectures in the model registry, as `tv_<torchvision name>`.

Why a prefix rather than torchvision's bare names: `resnet18`, `resnet50`, `densenet121` and
`mobilenet_v2` already name the paper's CIFAR models (a 3x3 stride-1 stem, no max-pool), which
are different networks with different parameter counts from torchvision's ImageNet ones (7x7
stride-2 stem + max-pool). A name must mean one network wherever it appears (a config, an
MLflow param, a registered teacher), whatever the dataset, so the ImageNet networks carry
`tv_`. For teachers, `NAME@torchvision` (NAME with or without the prefix) means torchvision's
NAME with its pretrained ImageNet weights (IMAGENET1K_V1, the weights the original's
`pretrained=True` loaded), read from torch's hub cache (`pretrained_file`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tfkd.core.models.registry import register

PREFIX = "tv_"
PRETRAINED_ALIAS = "torchvision"
TORCHVISION = ("resnet18", "resnet50", "densenet121", "mobilenet_v2", "resnext101_32x8d")
IMAGENET_CLASSES = 1000


def _factory(arch: str):  # noqa: ANN202 - a registry factory
    def build(num_classes: int) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)

    build.__name__ = PREFIX + arch
    build.__doc__ = f"torchvision's {arch} (ImageNet layout), freshly initialised."
    return build


for _arch in TORCHVISION:
    register(PREFIX + _arch)(_factory(_arch))


def registry_name(name: str) -> str:
    """`resnet18` or `tv_resnet18` -> `tv_resnet18` (the torchvision architecture)."""
    return name if name.startswith(PREFIX) else PREFIX + name


class PretrainedMissingError(FileNotFoundError):
    """torchvision's weights file is not in torch's hub cache (one line: what to place where)."""

    def __str__(self) -> str:
        return str(self.args[0])


def pretrained_file(name: str) -> Path:
    """The cached IMAGENET1K_V1 weights file of torchvision's `name`, or PretrainedMissingError.

    Never downloads: the file lives in `torch.hub.get_dir()/checkpoints` (TORCH_HOME/hub);
    the error names the file, the folder and where to fetch it.
    """
    import torchvision

    arch = registry_name(name).removeprefix(PREFIX)
    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    file = folder / weights.url.rsplit("/", 1)[-1]
    if not file.is_file():
        raise PretrainedMissingError(
            f"torchvision's pretrained {arch} is not cached: place {file.name} (from "
            f"{weights.url}) in {folder} (or point TORCH_HOME at a folder whose hub/checkpoints "
            "holds it)"
        )
    return file
