"""Image folders: ImageNet's layout and any user dataset in it, as lists of JPEG files.

    root/train/<class>/*.JPEG     the training set (the validation split is carved from it)
    root/val/<class>/*.JPEG       the test split (as ImageNet's official val set is used)

This is the layout PyTorch's ImageNet example reads (after its val-preparation script). Classes
are the sorted folder names of train/; val/ must hold the same classes. Images stay on disk:
a `FileSplit` is a list of paths and labels, decoded batch by batch by the `jpeg` loader
(tfkd.core.data.images). Before anything trains, every file is checked to be a JPEG (its
first bytes), so a stray or corrupt file is named at once rather than mid-epoch.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from .augment import MAX_DEGREES
from .core import DataError, DatasetNotFoundError, Request, Source, register

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
JPEG_SUFFIXES = (".jpg", ".jpeg")
JPEG_MAGIC = b"\xff\xd8\xff"
#: RandomResizedCrop + horizontal flip (ImageNet's training transforms), in the loader's names.
FOLDER_AUGMENT = ("crop", "flip")
FOLDER_LAYOUT = "train/<class>/*.JPEG and val/<class>/*.JPEG"
FOLDER_HINT = f"the data root should hold {FOLDER_LAYOUT}"


@dataclass(frozen=True, eq=False)
class FileImages:
    """The images of a file-backed split: absolute paths, in label-then-name order."""

    paths: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, index: torch.Tensor) -> FileImages:
        """The images at `index` (what `index_select(0, index)` is for a tensor)."""
        return FileImages(tuple(self.paths[i] for i in index.tolist()))

    @staticmethod
    def split_kind() -> type[FileSplit]:
        return FileSplit


@dataclass(frozen=True, eq=False)
class FileSplit:
    """A split whose images are JPEG files, read by the `jpeg` loader whatever `loader` says.

    Same reading surface as `Split` (labels, mean, std, augment, len) so that trainers and
    evaluators take either; `images` is a `FileImages`.
    """

    images: FileImages
    labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: tuple[str, ...]
    rotation: float = MAX_DEGREES  # Split's surface; the jpeg loader does not rotate
    loader = "jpeg"  # the loader kind that reads this split (tfkd.core.data.loaders)

    def __len__(self) -> int:
        return len(self.images)


def _class_folders(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DatasetNotFoundError(split_dir, "image folder", FOLDER_HINT)
    try:
        entries = sorted(os.listdir(split_dir))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DataError(f"{split_dir}: cannot list it ({reason}); fix its permissions") from None
    classes = [e for e in entries if not e.startswith(".") and (split_dir / e).is_dir()]
    if not classes:
        raise DataError(f"{split_dir}: no class folders; {FOLDER_HINT}")
    return classes


def _jpeg_files(folder: Path) -> list[str]:
    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    for name in names:
        if (folder / name).is_dir() or not name.lower().endswith(JPEG_SUFFIXES):
            raise DataError(
                f"{folder / name}: not a .jpg/.jpeg file; class folders hold JPEG images only "
                "(convert it or move it out)"
            )
    if not names:
        raise DataError(f"{folder}: empty class folder; add its images or remove the folder")
    return [str(folder / n) for n in names]


def _check_jpeg(path: str) -> None:
    try:
        with open(path, "rb") as f:
            head = f.read(len(JPEG_MAGIC))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DataError(
            f"{path}: unreadable ({reason}); fix its permissions or remove it"
        ) from None
    if head != JPEG_MAGIC:
        raise DataError(f"{path}: not a JPEG image (corrupt, or another format); replace it")


def _listing(split_dir: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = _jpeg_files(split_dir / name)
        paths += files
        labels += [label] * len(files)
    workers = min(16, 4 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(_check_jpeg, paths, chunksize=512):
            pass
    return paths, labels


def read_folder(root: Path) -> Source:
    """The train and val folders under `root` as a file-backed `Source` (labels by class name)."""
    if not root.is_dir():
        raise DatasetNotFoundError(root, "image folder root", FOLDER_HINT)
    classes = _class_folders(root / "train")
    val_classes = _class_folders(root / "val")
    if val_classes != classes:
        missing = sorted(set(classes) - set(val_classes))
        extra = sorted(set(val_classes) - set(classes))
        what = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which train/ lacks"
        raise DataError(
            f"{root / 'val'}: {what} ({len(val_classes)} classes, train/ has {len(classes)}); "
            "val/ and train/ need the same class folders"
        )
    if len(classes) < 2:
        raise DataError(f"{root / 'train'}: one class folder; a classifier needs at least two")
    train_paths, train_labels = _listing(root / "train", classes)
    test_paths, test_labels = _listing(root / "val", classes)
    return Source(
        FileImages(tuple(train_paths)),
        torch.tensor(train_labels, dtype=torch.int64),
        FileImages(tuple(test_paths)),
        torch.tensor(test_labels, dtype=torch.int64),
        len(classes),
        IMAGENET_MEAN,
        IMAGENET_STD,
        FOLDER_AUGMENT,
    )


@register("imagenet", layout=FOLDER_LAYOUT)
def imagenet(req: Request) -> Source:
    """ImageNet (ILSVRC-2012) in PyTorch's example layout under `--data-dir`: train/ and val/."""
    return read_folder(req.root)


@register("folder", layout=FOLDER_LAYOUT)
def folder(req: Request) -> Source:
    """Any image dataset in ImageNet's layout under `--data-dir` (ImageNet's statistics)."""
    return read_folder(req.root)
