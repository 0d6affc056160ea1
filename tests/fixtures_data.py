"""Tiny dataset fixtures in the TRUE on-disk formats, for tests (no network).

- `write_cifar10` / `write_cifar100`: torchvision's "python version" pickles. The official files
  were written by Python 2, so their dict keys and strings are Python 2 `str`: they load as
  bytes with `encoding="bytes"` and as str with `encoding="latin1"` (what torchvision uses).
  We emit the same opcodes, so both readers see what they would see on the real files.
- `write_tiny_imagenet`: the tiny-imagenet-200 folder layout with real JPEG files, including
  one grayscale image per class (the real set has some).

Image content is chosen so tests can check alignment without decoding the format again:
CIFAR: pixel [0, 0, 0] (red plane, first byte) holds the label; bytes 1..3 of the red plane hold
a unique sample id (little endian, train ids first, then test ids). Tiny-ImageNet: each image is
a flat colour `class_colour(k)` of its class k (k = index in SORTED wnid order) plus small noise.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
TINY_DIR = "tiny-imagenet-200"


class _Py2Str(bytes):
    """Pickled as a Python 2 `str` (SHORT_BINSTRING / BINSTRING), like the official files."""


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler, so the dispatch is extensible
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2str(self, obj: bytes) -> None:
        data = bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[_Py2Str] = save_py2str


def _py2(obj):  # noqa: ANN001, ANN202 - recursive conversion of str keys/values
    if isinstance(obj, str):
        return _Py2Str(obj.encode("latin1"))
    if isinstance(obj, dict):
        return {_py2(k): _py2(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_py2(v) for v in obj]
    return obj


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(_py2(obj))


def _cifar_images(labels: np.ndarray, first_id: int, rng: np.random.Generator) -> np.ndarray:
    data = rng.integers(0, 256, size=(labels.shape[0], 3072), dtype=np.uint8)
    ids = np.arange(first_id, first_id + labels.shape[0], dtype=np.uint32)
    data[:, 0] = labels
    data[:, 1:4] = ids.view(np.uint8).reshape(-1, 4)[:, :3]
    return data


def _balanced_labels(n_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(n_classes), per_class))


def sample_ids(images: np.ndarray) -> np.ndarray:
    """The unique ids the CIFAR fixtures embed, from N x 3 x 32 x 32 (or N x 3072) uint8 images."""
    flat = np.asarray(images).reshape(len(images), -1)
    return (
        flat[:, 1].astype(np.int64)
        | flat[:, 2].astype(np.int64) << 8
        | (flat[:, 3].astype(np.int64) << 16)
    )


def _new_folder(root: str | os.PathLike, name: str, seed: int) -> tuple[np.random.Generator, Path]:
    """The random generator of a fixture and the folder `root/name` it writes, created."""
    base = Path(root) / name
    base.mkdir(parents=True, exist_ok=True)
    return np.random.default_rng(seed), base


def write_cifar10(
    root: str | os.PathLike, n_train_per_class: int, n_test_per_class: int, *, seed: int = 0
) -> Path:
    """Write root/cifar-10-batches-py (data_batch_1..5, test_batch, batches.meta); return it."""
    rng, base = _new_folder(root, CIFAR10_DIR, seed)
    train_y = _balanced_labels(10, n_train_per_class, rng)
    test_y = _balanced_labels(10, n_test_per_class, rng)
    train_x = _cifar_images(train_y, 0, rng)
    test_x = _cifar_images(test_y, len(train_y), rng)
    chunks = np.array_split(np.arange(len(train_y)), 5)
    for i, idx in enumerate(chunks, 1):
        _dump(
            base / f"data_batch_{i}",
            {
                "batch_label": f"training batch {i} of 5",
                "labels": [int(v) for v in train_y[idx]],
                "data": train_x[idx],
                "filenames": [f"img_{j:06d}.png" for j in idx],
            },
        )
    _dump(
        base / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": [int(v) for v in test_y],
            "data": test_x,
            "filenames": [f"test_{j:06d}.png" for j in range(len(test_y))],
        },
    )
    names = "airplane automobile bird cat deer dog frog horse ship truck".split()
    _dump(
        base / "batches.meta",
        {"num_cases_per_batch": max(len(c) for c in chunks), "label_names": names, "num_vis": 3072},
    )
    return base


def write_cifar100(
    root: str | os.PathLike, n_train_per_class: int, n_test_per_class: int, *, seed: int = 0
) -> Path:
    """Write root/cifar-100-python (train, test, meta) with 100 fine / 20 coarse classes."""
    rng, base = _new_folder(root, CIFAR100_DIR, seed)
    offset = 0
    for part, per_class in (("train", n_train_per_class), ("test", n_test_per_class)):
        fine = _balanced_labels(100, per_class, rng)
        data = _cifar_images(fine, offset, rng)
        offset += len(fine)
        _dump(
            base / part,
            {
                "filenames": [f"{part}_{j:06d}.png" for j in range(len(fine))],
                "batch_label": f"{part}ing batch 1 of 1",
                "fine_labels": [int(v) for v in fine],
                "coarse_labels": [int(v) // 5 for v in fine],
                "data": data,
            },
        )
    _dump(
        base / "meta",
        {
            "fine_label_names": [f"fine_{k}" for k in range(100)],
            "coarse_label_names": [f"coarse_{k}" for k in range(20)],
        },
    )
    return base


def class_colour(k: int) -> tuple[int, int, int]:
    """The flat RGB colour of Tiny-ImageNet fixture class k (k in sorted wnid order)."""
    return (40 + (k * 53) % 180, 40 + (k * 97 + 60) % 180, 40 + (k * 151 + 120) % 180)


def tiny_wnids(n_classes: int) -> list[str]:
    """The fixture's wnids, in the (unsorted) order wnids.txt lists them."""
    ids = [f"n{1443537 + 7919 * k:08d}" for k in range(n_classes)]
    return ids[::-1]  # deliberately not sorted: labels must follow sorted order


def write_tiny_imagenet(
    root: str | os.PathLike,
    n_classes: int,
    n_train_per_class: int,
    n_val_per_class: int,
    *,
    seed: int = 0,
) -> Path:
    """Write root/tiny-imagenet-200 (wnids.txt, words.txt, train/, val/, test/); return it.

    The first training image of every class is grayscale (mode "L").
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = Path(root) / TINY_DIR
    wnids = tiny_wnids(n_classes)
    label = {w: k for k, w in enumerate(sorted(wnids))}
    base.mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    (base / "words.txt").write_text("".join(f"{w}\tthing {label[w]}\n" for w in wnids))

    def image(k: int, gray: bool = False) -> Image.Image:
        pixels = np.empty((64, 64, 3), dtype=np.int16)
        pixels[:] = class_colour(k)
        pixels += rng.integers(-6, 7, size=pixels.shape, dtype=np.int16)
        rgb = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")
        return rgb.convert("L") if gray else rgb

    for w in wnids:
        folder = base / "train" / w / "images"
        folder.mkdir(parents=True, exist_ok=True)
        boxes = []
        for i in range(n_train_per_class):
            name = f"{w}_{i}.JPEG"
            image(label[w], gray=i == 0).save(folder / name, "JPEG", quality=95)
            boxes.append(f"{name}\t0\t0\t63\t63\n")
        (base / "train" / w / f"{w}_boxes.txt").write_text("".join(boxes))

    val_images = base / "val" / "images"
    val_images.mkdir(parents=True, exist_ok=True)
    rows = []
    order = rng.permutation(np.repeat(np.arange(n_classes), n_val_per_class))
    for j, c in enumerate(order):
        w = wnids[int(c)]
        image(label[w]).save(val_images / f"val_{j}.JPEG", "JPEG", quality=95)
        rows.append(f"val_{j}.JPEG\t{w}\t0\t0\t63\t63\n")
    (base / "val" / "val_annotations.txt").write_text("".join(rows))

    test_images = base / "test" / "images"
    test_images.mkdir(parents=True, exist_ok=True)
    image(0).save(test_images / "test_0.JPEG", "JPEG", quality=95)  # unlabelled, never read
    return base
