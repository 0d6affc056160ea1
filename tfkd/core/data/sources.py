"""The registered datasets. Adding one is one `@register("name")` function returning a `Source`.

- cifar10 / cifar100: torchvision's on-disk "python version" pickles, read with numpy (zero
  per-image objects; a restricted unpickler that only admits numpy arrays).
- tiny_imagenet: the official tiny-imagenet-200 folder; the official val set is the TEST split.
  Decoded once into `<root>/tiny-imagenet-200.cache.npz` (written atomically) for fast reloads.
- digits: scikit-learn's bundled 8x8 digits, upscaled to 3 x 32 x 32, fixed stratified test split.
- fake: seeded synthetic CIFAR-shaped data that a small CNN learns in an epoch or two.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import pickle
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tfkd.core import atomic

from .core import (
    DataError,
    DatasetNotFoundError,
    Request,
    Source,
    channel_stats,
    register,
    stratified_split,
)

# The original's statistics and augmentations, as its data_loader.py (fetch_dataloader) has them.
#: CIFAR-100's statistics; the original normalises CIFAR-10 with them too (one transform for both).
CIFAR100_MEAN = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
CIFAR100_STD = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)
#: Tiny-ImageNet's own statistics (the original's Normalize for tiny_imagenet).
TINY_MEAN, TINY_STD = (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)
#: CIFAR: RandomCrop(32, padding=4), RandomHorizontalFlip(), RandomRotation(15).
FULL_AUGMENT = ("crop", "flip", "rotate")
#: Tiny-ImageNet: RandomRotation(20), RandomHorizontalFlip(0.5), no crop. tfkd flips before it
#: rotates; flip(rotate(x, a)) = rotate(flip(x), -a) and the angle is symmetric about 0, so the
#: distribution of augmented images is the original's.
TINY_AUGMENT, TINY_ROTATION = ("flip", "rotate"), 20.0

# ---------------------------------------------------------------------------------------- CIFAR


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that admits only what the CIFAR pickles hold: dicts, lists, numpy arrays."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np.empty(0).__reduce__()[0],
        ("numpy._core.multiarray", "_reconstruct"): np.empty(0).__reduce__()[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}") from None


def _read_cifar_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, ...]:
    """(images N x 3 x 32 x 32 uint8, labels int64) from one CIFAR pickle, or a one-line error."""
    if not path.is_file():
        raise DatasetNotFoundError(path, "CIFAR file")
    bad = f"{path}: corrupt or truncated CIFAR pickle"
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # any unpickling failure is the same user problem
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{bad} ({reason}); delete it and pass --download") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise DataError(f"{bad} (no {label_key.decode()!r}/'data' entries)")
    data, labels = batch[b"data"], np.asarray(batch[label_key], dtype=np.int64)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{bad} ('data' is not a uint8 N x 3072 array)")
    if data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise DataError(f"{bad} (shape {data.shape} with {labels.shape[0]} labels)")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{bad} (labels outside 0..{num_classes - 1})")
    return data.reshape(-1, 3, 32, 32), labels


def _by_hand(url: str, root: Path, layout: str) -> str:
    """How to place a dataset's archive without a network (for a failed download's error)."""
    archive = url.rsplit("/", 1)[-1]
    return (
        f"without a network, fetch {url} elsewhere and put {archive} in {root} (--download then "
        f"checks and unpacks it), or unpack it there yourself: {root}/{layout}"
    )


def _download_failed(what: str, root: Path, exc: Exception, url: str, layout: str) -> DataError:
    said = " ".join(str(exc).split())
    return DataError(
        f"downloading {what} into {root} failed: {said}; {_by_hand(url, root, layout)}"
    )


def _download_cifar(root: Path, tv_class: str, layout: str) -> None:
    """Fetch and unpack torchvision's archive (md5-checked) unless every file is intact."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import check_integrity, download_and_extract_archive

    cls = getattr(tvd, tv_class)
    base = root / cls.base_folder
    if all(check_integrity(str(base / f), md5) for f, md5 in cls.train_list + cls.test_list):
        return
    try:
        download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
    except Exception as exc:
        raise _download_failed(tv_class, root, exc, cls.url, layout) from None


def _cifar(
    req: Request,
    *,
    folder: str,
    train_files: list[str],
    test_files: list[str],
    label_key: bytes,
    num_classes: int,
    tv_class: str,
    layout: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> Source:
    base = req.root / folder
    if req.download:
        _download_cifar(req.root, tv_class, layout)
    if not base.is_dir():
        raise DatasetNotFoundError(base, "CIFAR folder")

    def read(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [_read_cifar_batch(base / f, label_key, num_classes) for f in files]
        images = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)

    train_x, train_y = read(train_files)
    test_x, test_y = read(test_files)
    return Source(train_x, train_y, test_x, test_y, num_classes, mean, std, FULL_AUGMENT)


CIFAR10_LAYOUT = "cifar-10-batches-py/ (data_batch_1 to data_batch_5, test_batch)"
CIFAR100_LAYOUT = "cifar-100-python/ (train, test)"


@register("cifar10", layout=CIFAR10_LAYOUT, downloads=True)
def cifar10(req: Request) -> Source:
    """CIFAR-10 from root/cifar-10-batches-py (data_batch_1..5, test_batch)."""
    return _cifar(
        req,
        folder="cifar-10-batches-py",
        train_files=[f"data_batch_{i}" for i in range(1, 6)],
        test_files=["test_batch"],
        label_key=b"labels",
        num_classes=10,
        tv_class="CIFAR10",
        layout=CIFAR10_LAYOUT,
        mean=CIFAR100_MEAN,  # the original's, not CIFAR-10's own statistics
        std=CIFAR100_STD,
    )


@register("cifar100", layout=CIFAR100_LAYOUT, downloads=True)
def cifar100(req: Request) -> Source:
    """CIFAR-100 (fine labels) from root/cifar-100-python (train, test)."""
    return _cifar(
        req,
        folder="cifar-100-python",
        train_files=["train"],
        test_files=["test"],
        label_key=b"fine_labels",
        num_classes=100,
        tv_class="CIFAR100",
        layout=CIFAR100_LAYOUT,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
    )


# -------------------------------------------------------------------------------- Tiny-ImageNet

TINY_FOLDER = "tiny-imagenet-200"
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINY_LAYOUT = f"{TINY_FOLDER}/ (wnids.txt, train/, val/)"
_TINY_CACHE_VERSION = "1"


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    with atomic.replacing(path) as out:
        np.savez(out, allow_pickle=False, **arrays)


def _decode_jpegs(paths: list[Path], size: int) -> np.ndarray:
    """Decode RGB (grayscale -> 3 channels) size x size JPEGs into one N x 3 x H x W array."""
    from PIL import Image

    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)

    def decode(i: int) -> None:
        try:
            with Image.open(paths[i]) as im:
                rgb = im.convert("RGB")
        except FileNotFoundError:
            raise DatasetNotFoundError(paths[i], "Tiny-ImageNet image") from None
        except Exception as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise DataError(f"{paths[i]}: cannot decode image ({reason})") from None
        if rgb.size != (size, size):
            raise DataError(f"{paths[i]}: expected {size}x{size} pixels, got {rgb.size}")
        out[i] = np.asarray(rgb).transpose(2, 0, 1)

    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # PIL releases the GIL while decoding
        for _ in pool.map(decode, range(len(paths)), chunksize=256):
            pass
    return out


@register("tiny_imagenet", layout=TINY_LAYOUT, downloads=True)
def tiny_imagenet(req: Request) -> Source:
    """Tiny-ImageNet (64 x 64, one class per line of wnids.txt, labels in sorted wnid order).

    The official val set (val/images + val/val_annotations.txt) is the test split; the
    validation split is carved from train by `load`. Decoded arrays are cached next to the
    folder in `tiny-imagenet-200.cache.npz`, keyed by a fingerprint of the file lists.
    """
    base = req.root / TINY_FOLDER
    if req.download and not base.is_dir():
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(TINY_URL, str(req.root), md5=TINY_MD5)
        except Exception as exc:
            raise _download_failed("Tiny-ImageNet", req.root, exc, TINY_URL, TINY_LAYOUT) from None
    if not base.is_dir():
        raise DatasetNotFoundError(base, "Tiny-ImageNet folder")
    wnids_file = base / "wnids.txt"
    annotations = base / "val" / "val_annotations.txt"
    for needed in (wnids_file, annotations):
        if not needed.is_file():
            raise DatasetNotFoundError(needed, "Tiny-ImageNet file")
    wnids = sorted({w.strip() for w in wnids_file.read_text().split() if w.strip()})
    if not wnids:
        raise DataError(f"{wnids_file}: no class ids")
    index = {w: i for i, w in enumerate(wnids)}

    train_paths: list[Path] = []
    train_labels: list[int] = []
    for wnid in wnids:
        folder = base / "train" / wnid / "images"
        if not folder.is_dir():
            raise DatasetNotFoundError(folder, "Tiny-ImageNet class folder")
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpeg", ".jpg")))
        train_paths += [folder / f for f in files]
        train_labels += [index[wnid]] * len(files)

    ann_text = annotations.read_text()
    test_paths: list[Path] = []
    test_labels: list[int] = []
    for lineno, line in enumerate(ann_text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1].strip() not in index:
            raise DataError(f"{annotations}:{lineno}: expected 'file<TAB>wnid' with a known wnid")
        test_paths.append(base / "val" / "images" / fields[0].strip())
        test_labels.append(index[fields[1].strip()])

    digest = hashlib.sha1(_TINY_CACHE_VERSION.encode())
    digest.update(wnids_file.read_bytes())
    digest.update(ann_text.encode())
    for p in train_paths:
        digest.update(str(p.relative_to(base)).encode())
    fingerprint = digest.hexdigest()
    cache = req.root / f"{TINY_FOLDER}.cache.npz"

    arrays = None
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if str(z["fingerprint"]) == fingerprint:
                    arrays = {k: z[k] for k in ("train_x", "train_y", "test_x", "test_y")}
        except Exception as exc:
            warnings.warn(f"ignoring unreadable cache {cache}: {exc}", stacklevel=2)
    if arrays is None:
        arrays = {
            "train_x": _decode_jpegs(train_paths, 64),
            "train_y": np.asarray(train_labels, dtype=np.int64),
            "test_x": _decode_jpegs(test_paths, 64),
            "test_y": np.asarray(test_labels, dtype=np.int64),
        }
        try:
            _atomic_savez(cache, fingerprint=np.asarray(fingerprint), **arrays)
        except OSError as exc:
            warnings.warn(f"could not write cache {cache}: {exc}", stacklevel=2)

    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    return Source(
        t["train_x"], t["train_y"], t["test_x"], t["test_y"], len(wnids),
        TINY_MEAN, TINY_STD, TINY_AUGMENT, TINY_ROTATION,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------- digits

DIGITS_TEST_FRACTION = 0.2
_DIGITS_TEST_SEED = 20240601  # fixed: the test set never depends on `load(seed=...)`


@register("digits", needs_root=False)
def digits(req: Request) -> Source:
    """scikit-learn's bundled 8x8 digits (1797 images), as 3 x 32 x 32 uint8, fixed 20% test.

    Values 0..16 are scaled to 0..255 and upscaled bilinearly. Only "crop" augmentation: a
    flipped or rotated digit can be a different digit. mean/std come from the training part.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float().mul_(255.0 / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = x.round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = stratified_split(y, DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED)
    train_x, train_y = x[train_idx].contiguous(), y[train_idx]
    mean, std = channel_stats(train_x)
    return Source(train_x, train_y, x[test_idx].contiguous(), y[test_idx], 10, mean, std, ("crop",))


# ------------------------------------------------------------------------------------------ fake

FAKE_CLASSES = 10
_FAKE_SEED = 1234


def _fake_images(labels: torch.Tensor, protos: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty((labels.shape[0], 3, 32, 32), dtype=torch.uint8)
    for start in range(0, labels.shape[0], 4096):  # bounded float memory for large sizes
        y = labels[start : start + 4096]
        noise = torch.randn((y.shape[0], 3, 32, 32), generator=gen) * 40.0
        out[start : start + 4096] = (128.0 + protos[y] + noise).round_().clamp_(0, 255)
    return out


@register("fake", needs_root=False, sized=True)
def fake(req: Request) -> Source:
    """Synthetic 3 x 32 x 32, 10 classes: per-class colour + smooth pattern + pixel noise.

    `fake_size` training and `fake_size // 4` test images, balanced classes, deterministic
    (fixed generator seeds). The colour survives crop/flip, so it is learnable in 1-2 epochs.
    """
    gen = torch.Generator().manual_seed(_FAKE_SEED)
    colour = (torch.rand((FAKE_CLASSES, 3, 1, 1), generator=gen) * 2 - 1) * 60.0
    pattern = torch.randn((FAKE_CLASSES, 3, 4, 4), generator=gen) * 30.0
    pattern = F.interpolate(pattern, size=(32, 32), mode="bilinear", align_corners=False)
    protos = colour + pattern

    def labels(n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return (torch.arange(n) % FAKE_CLASSES)[torch.randperm(n, generator=g)]

    n_train, n_test = req.fake_size, max(req.fake_size // 4, 1)
    train_y = labels(n_train, _FAKE_SEED + 1)
    test_y = labels(n_test, _FAKE_SEED + 2)
    train_x = _fake_images(train_y, protos, _FAKE_SEED + 3)
    test_x = _fake_images(test_y, protos, _FAKE_SEED + 4)
    mean, std = channel_stats(train_x)
    return Source(train_x, train_y, test_x, test_y, FAKE_CLASSES, mean, std, ("crop", "flip"))


__all__ = ["cifar10", "cifar100", "digits", "fake", "tiny_imagenet"]
