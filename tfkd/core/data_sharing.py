"""A dataset as plain values (numpy arrays, file paths, statistics) and back, so that processes
share it: Ray's object store holds one copy per node and trials read it zero-copy.

Torch and numpy only: a trial process (or a bare script's) imports nothing more to read it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from tfkd.core import data


def _pack_images(images: data.Images) -> dict[str, Any]:
    """Decoded images as a numpy array, images on disk as their paths."""
    if isinstance(images, torch.Tensor):
        return {"images": images.numpy()}
    return {"paths": images.paths}


def _pack_split(split: data.AnySplit) -> dict[str, Any]:
    """A split as plain values (`_pack_images`, the labels as a numpy array, the statistics)."""
    return {
        **_pack_images(split.images),
        "labels": split.labels.numpy(),
        "mean": split.mean,
        "std": split.std,
        "augment": split.augment,
        "rotation": split.rotation,
    }


def _unpack_split(p: Mapping[str, Any]) -> data.AnySplit:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only shared memory: loaders never write to it
        labels = torch.from_numpy(np.asarray(p["labels"]))
        images = None if "paths" in p else torch.from_numpy(np.asarray(p["images"]))
    stats = (tuple(p["mean"]), tuple(p["std"]), tuple(p["augment"]), p["rotation"])
    if images is None:
        return data.FileSplit(data.FileImages(tuple(p["paths"])), labels, *stats)
    return data.Split(images, labels, *stats)


def pack_dataset(dataset: data.Dataset) -> dict[str, Any]:
    """Numpy arrays, so that trials read them zero-copy from the object store."""
    return {
        "name": dataset.name,
        "num_classes": dataset.num_classes,
        **{s: _pack_split(getattr(dataset, s)) for s in ("train", "val", "test")},
    }


def unpack_dataset(packed: Mapping[str, Any]) -> data.Dataset:
    return data.Dataset(
        name=packed["name"],
        num_classes=packed["num_classes"],
        **{s: _unpack_split(packed[s]) for s in ("train", "val", "test")},
    )
