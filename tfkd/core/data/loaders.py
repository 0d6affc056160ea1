"""Batch loaders over a `Split`: the device-resident DeviceLoader and the original ClassicLoader.

Both yield (images float32 N x C x H x W normalised with split.mean/std, labels int64) on
`device`, with the same augmentation distributions, and both are seeded per epoch: the batches
of epoch e depend only on (seed, e), which is what exact checkpoint resume needs. Iterating
without calling `set_epoch` advances the epoch by one per pass (like a fresh epoch each time).

`indices=True` (what a mode with per-sample memory asks for) adds a third element: each sample's
position in the split (int64, on `device`). `sampler` (a name in `SAMPLERS` or a `Sampler`)
draws a training epoch's order; the default "shuffle" is a random permutation.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import torch

from tfkd.core.registry import Registry

from .augment import PAD, AugmentParams, apply_params, parse_augment, sample_params
from .core import AnySplit, Split, seed_from
from .folders import FileSplit

Batch = tuple[torch.Tensor, ...]  # (images, labels) or (images, labels, indices)
S = TypeVar("S", bound=AnySplit)  # the split kind a loader kind reads


class Sampler(Protocol):
    """A training epoch's order of sample indices; consecutive batch_size chunks are the batches.

    `order` may repeat or leave out samples (e.g. a same-class partner after each sample);
    `length(n)` is the order's length for a split of n samples (the loader's len depends on it).
    It runs once per epoch, outside the training step, and may sync the device.
    """

    def order(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...

    def length(self, n: int) -> int: ...


class Shuffle:
    """Every sample once, in a random permutation (torch.randperm on the labels' device)."""

    def order(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(labels.shape[0], generator=generator, device=labels.device)

    def length(self, n: int) -> int:
        return n


class ClassPairs:
    """Every sample once as an anchor, in a random permutation, each followed by a partner: a
    random other sample of its class (itself only when its class has no other sample).

    The order is [a_1, p_1, a_2, p_2, ...], 2n long, so every even-sized batch holds whole
    pairs: anchors at even positions, their partners at odd ones (CS-KD's batches). Vectorised
    on the labels' device: the samples sorted by class, each anchor draws an offset among the
    other members of its class (no per-sample Python loop); deterministic under `generator`.
    """

    def order(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, device = labels.shape[0], labels.device
        anchors = torch.randperm(n, generator=generator, device=device)
        by_class = torch.sort(labels, stable=True).indices
        counts = torch.bincount(labels)
        starts = torch.cumsum(counts, 0) - counts
        place = torch.empty_like(by_class)
        place[by_class] = torch.arange(n, device=device)
        cls = labels[anchors]
        size, start = counts[cls], starts[cls]
        own = place[anchors] - start  # the anchor's offset within its class
        draw = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        others = (size - 1).clamp(min=1)
        offset = torch.minimum((draw * others).long(), others - 1)
        offset = torch.where(size > 1, offset + (offset >= own).long(), own)
        partners = by_class[start + offset]
        return torch.stack((anchors, partners), dim=1).reshape(-1)

    def length(self, n: int) -> int:
        return 2 * n


SAMPLERS: Registry[Callable[[], Sampler]] = Registry("sampler")
SAMPLERS.add("shuffle", Shuffle)
SAMPLERS.add("class_pairs", ClassPairs)
DEFAULT_SAMPLER = "shuffle"


class _BaseLoader(abc.ABC, Generic[S]):
    """What every loader shares: the validated options, the epoch counter and the length.

    Subclasses build their pipeline in `_build(split)`, called once the options are set.
    """

    def __init__(
        self,
        split: S,
        *,
        batch_size: int,
        train: bool,
        device: str | torch.device = "cpu",
        seed: int = 0,
        augment: str | Sequence[str] | None = "default",
        drop_last: bool | None = None,
        num_workers: int = 0,
        pad: int = PAD,
        max_degrees: float | None = None,
        image_size: int = 224,
        shard: tuple[int, int] = (0, 1),
        indices: bool = False,
        sampler: str | Sampler = DEFAULT_SAMPLER,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative int, got {num_workers!r}")
        self.split = split
        self.batch_size = batch_size
        self.train = bool(train)
        self.device = torch.device(device)
        self.seed = int(seed)
        names = parse_augment(augment, split)  # validated even when unused
        self.augment: tuple[str, ...] = names if self.train else ()
        self.drop_last = bool(drop_last) if (drop_last is not None and self.train) else False
        self.num_workers = num_workers
        self.pad = pad
        self.max_degrees = split.rotation if max_degrees is None else max_degrees
        self.image_size = image_size
        self.shard = _check_shard(shard, batch_size, self.train)
        self.indices = bool(indices)
        self.sampler: Sampler = SAMPLERS.get(sampler)() if isinstance(sampler, str) else sampler
        if not isinstance(self.sampler, Shuffle) and not self.custom_samplers:
            raise ValueError(
                f"the {type(self).__name__} draws shuffled batches only; a mode's own sampler "
                "needs loader=device"
            )
        self.epoch = 0
        self._build(split)

    custom_samplers: bool = False  # whether this loader kind draws its order from `sampler`

    @abc.abstractmethod
    def _build(self, split: S) -> None:
        """Prepare this loader kind's pipeline over `split`."""

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        self.epoch = int(epoch)

    def _next_epoch(self) -> int:
        epoch = self.epoch
        self.epoch += 1
        return epoch

    def __len__(self) -> int:
        n = self.sampler.length(len(self.split)) if self.train else len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _with_indices(self, batch: Batch, idx: torch.Tensor) -> Batch:
        return (*batch, idx) if self.indices else batch


def _check_shard(shard: tuple[int, int], batch_size: int, train: bool) -> tuple[int, int]:
    """(rank, world): this data-parallel worker's share of every global batch."""
    rank, world = (int(v) for v in shard)
    if not 0 <= rank < world:
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard!r}")
    if world > 1 and (not train or batch_size < world):
        raise ValueError(f"a sharded loader trains on global batches of at least {world}")
    return rank, world


def _normaliser(split: AnySplit, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with (x / 255 - mean) / std == x * scale + shift, per channel."""
    std = torch.tensor(split.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    mean = torch.tensor(split.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return 1.0 / (255.0 * std), -mean / std


def _shard_slice(n: int, shard: tuple[int, int]) -> slice:
    """The contiguous slice of an n-sample global batch that worker `rank` of `world` trains on."""
    rank, world = shard
    return slice(n * rank // world, n * (rank + 1) // world)


class DeviceLoader(_BaseLoader[Split]):
    """Keeps the uint8 split on `device` and augments whole batches there.

    The images are moved to `device` once, at construction. Each epoch draws a permutation
    (train=True) and the augmentation parameters from one `torch.Generator` on `device`, seeded
    from (seed, epoch). train=False: fixed order, no augmentation, all samples. drop_last
    defaults to False (the last, smaller batch is kept) and only applies when train=True.
    `num_workers` is accepted so both loader kinds share a signature; it is unused here.
    The epoch's order comes from `sampler` (any registered one).
    """

    custom_samplers = True

    def _build(self, split: Split) -> None:
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self._scale, self._shift = _normaliser(split, self.device)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self._next_epoch()
        n, bs = self.images.shape[0], self.batch_size
        if not self.train:
            for start in range(0, n, bs):
                x = self.images[start : start + bs]
                positions = torch.arange(start, min(start + bs, n), device=self.device)
                yield self._with_indices(
                    (self._normalise(x.float()), self.labels[start : start + bs]), positions
                )
            return
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed_from("device-loader", self.seed, epoch))
        perm = self.sampler.order(self.labels, gen)
        total = perm.shape[0]
        stop = total - total % bs if self.drop_last else total
        for start in range(0, stop, bs):
            idx = perm[start : start + bs]
            params = sample_params(
                idx.shape[0], self.augment, gen, pad=self.pad, max_degrees=self.max_degrees
            )  # drawn for the whole global batch, so a shard's randomness is its slice's
            part = _shard_slice(idx.shape[0], self.shard)
            x = apply_params(self.images.index_select(0, idx[part]), _sliced(params, part))
            labels = self.labels.index_select(0, idx[part])
            yield self._with_indices((self._normalise(x), labels), idx[part])

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(self._scale).add_(self._shift)


def _sliced(params: AugmentParams, part: slice) -> AugmentParams:
    def cut(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[part]

    return AugmentParams(cut(params.offsets), cut(params.flip), cut(params.angles), params.pad)


class JpegLoader(_BaseLoader[FileSplit]):
    """JPEG files (a FileSplit) decoded and transformed as ImageNet's recipe (data.images)."""

    def _build(self, split: FileSplit) -> None:
        self._scale, self._shift = _normaliser(split, self.device)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(self._scale).add_(self._shift)

    def __iter__(self) -> Iterator[Batch]:
        # imported here: torchvision brings torch._dynamo with it (seconds of CPU per process),
        # which no other loader needs
        from . import images

        return images.iterate(self, self._next_epoch(), with_indices=self.indices)


class _PILDataset(torch.utils.data.Dataset):
    """Per-sample PIL images from a uint8 split, as the original CIFAR pipeline served them."""

    def __init__(self, split: Split, transform, indices: bool = False) -> None:  # noqa: ANN001
        hwc = split.images.permute(0, 2, 3, 1)
        self.images = np.ascontiguousarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc)
        self.labels = split.labels.numpy()
        self.transform = transform
        self.indices = indices

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple:
        from PIL import Image

        sample = self.transform(Image.fromarray(self.images[i])), int(self.labels[i])
        return (*sample, i) if self.indices else sample


class ClassicLoader(_BaseLoader[Split]):
    """The original implementation's pipeline: PIL + torchvision transforms + torch DataLoader.

    Transforms: RandomCrop(size, padding=4), RandomHorizontalFlip(), RandomRotation(15) (those
    in `augment`), ToTensor(), Normalize(mean, std); batches are moved to `device`. Shuffling
    and the workers' seeds come from a generator seeded from (seed, epoch). With num_workers=0
    the transforms draw from a private copy of torch's CPU RNG state, seeded the same way, so
    the global RNG is left untouched and epochs are reproducible (results differ between
    num_workers=0 and > 0, as the sample-to-RNG assignment differs).
    """

    def _build(self, split: Split) -> None:
        from torchvision import transforms as T

        if self.shard[1] > 1:
            raise ValueError("the classic loader trains one worker only; use loader=device")

        size = tuple(split.images.shape[2:])
        steps = []
        if "crop" in self.augment:
            steps.append(T.RandomCrop(size, padding=self.pad))
        if "flip" in self.augment:
            steps.append(T.RandomHorizontalFlip())
        if "rotate" in self.augment:
            steps.append(T.RandomRotation(self.max_degrees))
        steps += [T.ToTensor(), T.Normalize(split.mean, split.std)]
        self.transform = T.Compose(steps)
        self.dataset = _PILDataset(split, self.transform, self.indices)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self._next_epoch()
        seed = seed_from("classic-loader", self.seed, epoch)
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=self.train,
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(seed),
            pin_memory=self.device.type == "cuda",
        )
        isolate = self.num_workers == 0
        if isolate:
            outer = torch.get_rng_state()
            torch.default_generator.manual_seed(seed_from("classic-transforms", seed))
            ours = torch.get_rng_state()
            torch.set_rng_state(outer)
        it = iter(loader)
        while True:
            if isolate:
                outer = torch.get_rng_state()
                torch.set_rng_state(ours)
            try:
                x, y, *positions = next(it)
            except StopIteration:
                return
            finally:
                if isolate:
                    ours = torch.get_rng_state()
                    torch.set_rng_state(outer)
            nb = self.device.type == "cuda"
            yield (
                x.to(self.device, non_blocking=nb),
                y.to(self.device, non_blocking=nb),
                *(p.to(self.device, non_blocking=nb) for p in positions),
            )


LOADERS: Registry[type[_BaseLoader[Any]]] = Registry("loader")
LOADERS.add("device", DeviceLoader)
LOADERS.add("classic", ClassicLoader)
LOADERS.add("jpeg", JpegLoader)


def make_loader(kind: str, split: AnySplit, **kwargs) -> _BaseLoader[Any]:  # noqa: ANN003
    """Build a loader by kind ("device", "classic" or "jpeg"); an unknown kind raises ValueError.

    A split that names its own loader (a FileSplit of JPEG files: "jpeg") is read by that one.
    """
    return LOADERS.get(getattr(split, "loader", kind))(split, **kwargs)
