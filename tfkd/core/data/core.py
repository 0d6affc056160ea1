"""Dataset containers, the dataset registry, `load` and the seeded stratified validation split.

A dataset is registered with one decorated function (see `sources.py`) that returns a `Source`:
the full training and test sets (uint8 tensors, or `ImageFiles` left on disk) plus their
statistics. `load` carves the validation split from the training set and caches the result per
process, so a node (or a Ray worker) decodes a dataset once and every trial reuses the same
tensors.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import torch

from tfkd.core.registry import Registry

from .augment import MAX_DEGREES

__all__ = [
    "AnySplit",
    "DataError",
    "Dataset",
    "DatasetNotFoundError",
    "ImageFiles",
    "Images",
    "Source",
    "Split",
    "channel_stats",
    "clear_cache",
    "load",
    "names",
    "register",
    "stratified_split",
]


class DataError(ValueError):
    """A dataset on disk is unreadable, or an argument of `load` is invalid (one-line message)."""


class DatasetNotFoundError(FileNotFoundError):
    """A file or folder the dataset needs is missing (one-line message naming the path)."""

    def __init__(self, path: str | os.PathLike, what: str = "", hint: str = "") -> None:
        self.path = str(path)
        hint = hint or "put the dataset there or pass --download"
        what = f"{what} " if what else ""
        super().__init__(f"{what}not found: {self.path} ({hint})")

    def __str__(self) -> str:  # FileNotFoundError would otherwise print "[Errno ...]" forms
        return str(self.args[0])


class ImageFiles(Protocol):
    """Images left on disk, which a file-backed dataset gives `Source` in place of a uint8 tensor
    (`tfkd.core.data.folders.FileImages`): `load` takes a split's rows with `take` and builds
    the split with the kind `split_kind` names."""

    @property
    def paths(self) -> tuple[str, ...]: ...

    def __len__(self) -> int: ...

    def take(self, index: torch.Tensor) -> ImageFiles: ...

    def split_kind(self) -> Callable[..., AnySplit]: ...


#: A split's images: decoded (uint8 N x C x H x W) or files on disk.
Images: TypeAlias = "torch.Tensor | ImageFiles"


class AnySplit(Protocol):
    """What every split kind (`Split`, the file-backed `FileSplit`) offers trainers, evaluators
    and loaders: images, int64 labels, the statistics, the default augmentation, the length."""

    @property
    def images(self) -> Images: ...

    @property
    def labels(self) -> torch.Tensor: ...

    @property
    def mean(self) -> tuple[float, ...]: ...

    @property
    def std(self) -> tuple[float, ...]: ...

    @property
    def augment(self) -> tuple[str, ...]: ...

    @property
    def rotation(self) -> float: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True, eq=False)
class Split:
    """One split: uint8 N x C x H x W images (contiguous, CPU) and int64 labels.

    `mean`/`std` are the dataset's per-channel statistics on the 0-1 scale; `augment` is the
    dataset's default augmentation (a subset of "crop", "flip", "rotate"), `rotation` the
    largest angle of its rotation (degrees).
    """

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: tuple[str, ...]
    rotation: float = MAX_DEGREES

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise DataError(f"Split.images must be uint8 NCHW, got {x.dtype} {tuple(x.shape)}")
        if y.dtype != torch.int64 or y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise DataError(
                f"Split.labels must be int64 of length {x.shape[0]}, got {y.dtype} {tuple(y.shape)}"
            )
        if len(self.mean) != x.shape[1] or len(self.std) != x.shape[1]:
            raise DataError(f"Split.mean/std need {x.shape[1]} channels")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "augment", tuple(self.augment))

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True, eq=False)
class Dataset:
    """A named dataset: train (minus the validation share), val (carved from train) and test."""

    name: str
    num_classes: int
    train: AnySplit
    val: AnySplit
    test: AnySplit


@dataclass(frozen=True, eq=False)
class Source:
    """What a registered dataset function returns: the full official train and test sets."""

    train_images: Images
    train_labels: torch.Tensor
    test_images: Images
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: tuple[str, ...]
    rotation: float = MAX_DEGREES  # the largest angle of the "rotate" augmentation, degrees


@dataclass(frozen=True)
class Request:
    """Arguments a dataset function receives (`root` is an absolute path)."""

    root: Path
    download: bool
    fake_size: int


@dataclass(frozen=True)
class _Entry:
    fn: Callable[[Request], Source]
    needs_root: bool
    sized: bool
    layout: str  # what its data root holds ('' when it needs none)
    downloads: bool  # --download fetches it

    def placement(self) -> str:
        """How to fill its missing data root, for the error that says so."""
        holds = f"it should hold {self.layout}" if self.layout else "put the dataset there"
        return f"{holds}, or pass --download" if self.downloads else holds


DATASETS: Registry[_Entry] = Registry("dataset", error=DataError)
names = DATASETS.names
_entry = DATASETS.get


def register(
    name: str,
    *,
    needs_root: bool = True,
    sized: bool = False,
    layout: str = "",
    downloads: bool = False,
) -> Callable[[Callable[[Request], Source]], Callable[[Request], Source]]:
    """Register a dataset function under `name`.

    needs_root: the dataset is read from files under `root` (False: generated or bundled).
    sized: the dataset's size comes from `fake_size` (only then is it part of the cache key).
    layout: what `root` holds ("cifar-100-python/ (train, test)"), named when it is missing.
    downloads: `download=True` fetches it (the missing root's error suggests --download).
    """

    def deco(fn: Callable[[Request], Source]) -> Callable[[Request], Source]:
        DATASETS.add(name, _Entry(fn, needs_root, sized, layout, downloads))
        return fn

    return deco


class _LRU:
    """A tiny thread-safe LRU cache (functools.lru_cache can't normalise keys or drop args)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: OrderedDict[Hashable, Any] = OrderedDict()
        self.lock = threading.RLock()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
            value = make()  # exceptions are not cached
            self.items[key] = value
            while len(self.items) > self.maxsize:
                self.items.popitem(last=False)
            return value

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


_SOURCES = _LRU(maxsize=3)
_DATASETS = _LRU(maxsize=8)


def clear_cache() -> None:
    """Forget every dataset `load` has cached in this process."""
    _SOURCES.clear()
    _DATASETS.clear()


def load(
    name: str,
    root: str | os.PathLike,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    download: bool = False,
    fake_size: int = 2048,
) -> Dataset:
    """Load dataset `name` from `root` and carve a stratified, seeded validation split.

    The result is cached per process: the same (normalised) arguments return the same object,
    and different `val_fraction`/`seed` reuse the decoded source. `root` is ignored by datasets
    that need no files (`digits`, `fake`), `fake_size` by every dataset but `fake`; `download`
    is not part of the key (a downloaded dataset is the same dataset).

    Raises DataError (a ValueError) for an unknown name, a bad `val_fraction` or a corrupt file,
    and DatasetNotFoundError (a FileNotFoundError) for a missing root or file.
    """
    entry = _entry(name)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise DataError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if not 0.0 <= float(val_fraction) < 1.0:  # also rejects NaN
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"seed must be an int, got {seed!r}")
    if entry.sized and (isinstance(fake_size, bool) or not isinstance(fake_size, int)):
        raise DataError(f"fake_size must be a positive int, got {fake_size!r}")
    if entry.sized and fake_size < 1:
        raise DataError(f"fake_size must be a positive int, got {fake_size!r}")

    root_path = Path(os.path.abspath(os.path.expanduser(os.fspath(root))))
    root_key = str(root_path) if entry.needs_root else ""
    size_key = int(fake_size) if entry.sized else 0
    key = (name, root_key, float(val_fraction), int(seed), size_key)

    def make_source() -> Source:
        if entry.needs_root and not download and not root_path.is_dir():
            raise DatasetNotFoundError(root_path, "data root", entry.placement())
        if entry.needs_root and download:
            with _undone_on_failure(root_path):
                root_path.mkdir(parents=True, exist_ok=True)
                return entry.fn(Request(root_path, True, size_key))
        return entry.fn(Request(root_path, bool(download), size_key))

    def make_dataset() -> Dataset:
        src = _SOURCES.get((name, root_key, size_key), make_source)
        return _assemble(name, src, float(val_fraction), int(seed))

    return _DATASETS.get(key, make_dataset)


@contextlib.contextmanager
def _undone_on_failure(root: Path) -> Iterator[None]:
    """A failed download removes what it created: the root folder, or the new entries in it."""
    existed = root.is_dir()
    before = set(root.iterdir()) if existed else set()
    try:
        yield
    except BaseException:
        created = [root] if not existed else [p for p in root.iterdir() if p not in before]
        for path in created:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise


def _take(images: Images, index: torch.Tensor) -> Images:
    """Rows `index` of a uint8 tensor, or of a file list (`FileImages.take`)."""
    return images.index_select(0, index) if isinstance(images, torch.Tensor) else images.take(index)


def _split_kind(images: Images) -> Callable[..., AnySplit]:
    """`Split` for decoded tensors; the file-backed split kind for a file list."""
    return Split if isinstance(images, torch.Tensor) else images.split_kind()


def _assemble(name: str, src: Source, val_fraction: float, seed: int) -> Dataset:
    kind = _split_kind(src.train_images)

    def split(images: Images, labels: torch.Tensor, index: torch.Tensor | None = None) -> AnySplit:
        if index is not None:
            images, labels = _take(images, index), labels.index_select(0, index)
        return kind(images, labels, src.mean, src.std, src.augment, src.rotation)

    if val_fraction == 0.0:
        train_idx = torch.arange(src.train_labels.shape[0])
        val_idx = torch.empty((0,), dtype=torch.int64)
    else:
        train_idx, val_idx = stratified_split(src.train_labels, val_fraction, seed)
    train = split(src.train_images, src.train_labels, train_idx if val_fraction else None)
    val = split(src.train_images, src.train_labels, val_idx)
    test = split(src.test_images, src.test_labels)
    return Dataset(name, src.num_classes, train, val, test)


def seed_from(*parts: int | str) -> int:
    """A well-mixed 63-bit seed from integers/strings (stable across processes and platforms)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def stratified_split(
    labels: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held_out), each sorted, holding out round(fraction * n_c) of every class c.

    Seeded by `seed` only; every class keeps at least one sample on the kept side. Vectorised:
    a seeded permutation, a stable sort by label, and a rank within each class.
    """
    labels = labels.cpu()
    n = labels.shape[0]
    if n == 0:
        empty = torch.empty((0,), dtype=torch.int64)
        return empty, empty
    gen = torch.Generator().manual_seed(seed_from("stratified", seed))
    perm = torch.randperm(n, generator=gen)
    order = perm[torch.sort(labels[perm], stable=True).indices]
    sorted_labels = labels[order]
    classes, counts = torch.unique_consecutive(sorted_labels, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    n_held = torch.floor(counts.double() * fraction + 0.5).long()
    n_held = torch.minimum(n_held, (counts - 1).clamp(min=0))
    group = torch.repeat_interleave(torch.arange(classes.shape[0]), counts)
    rank = torch.arange(n) - starts[group]
    held = rank < n_held[group]
    return torch.sort(order[~held]).values, torch.sort(order[held]).values


def channel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], ...]:
    """Per-channel (mean, std) of uint8 N x C x H x W images on the 0-1 scale (float64 sums)."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].double().div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp(min=0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
