"""The `jpeg` loader: batches of JPEG files decoded and transformed as PyTorch's ImageNet example.

Training: RandomResizedCrop(size) (scale 0.08-1, aspect ratio 3/4-4/3) and a horizontal flip
with probability 0.5; evaluation: Resize(size * 256 / 224) of the shorter side and
CenterCrop(size); then normalised with the split's mean and std on the device.

Where the work runs:
- CPU: `num_workers` worker processes (torch's DataLoader) read, decode (libjpeg-turbo through
  torchvision.io.decode_jpeg) and crop each image; the batch arrives as uint8.
- CUDA: the workers only read the files' bytes; the batch is decoded on the GPU by nvJPEG in
  one `torchvision.io.decode_jpeg(list, device="cuda")` call and cropped and resized there, so
  the CPU never touches a pixel. (torchvision's nvJPEG binding is used rather than NVIDIA DALI:
  it ships with torchvision, needs no second pipeline language, and batch-decodes on the
  trial's own stream.) A file nvJPEG refuses (e.g. CMYK) is decoded on the CPU instead.

Randomness: sample number `position` of epoch `e` draws its crop and flip from a generator
seeded from (seed, e, position), and the epoch's order from (seed, e). So the batches do not
depend on the number of worker processes, nor on how a global batch is split between the
data-parallel workers of a trial (`shard`): each worker reads only its slice, and the slices
put together are the single-worker batch exactly.

A file that cannot be decoded mid-epoch stops the trial with a DataError naming the file.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms.v2 import functional as TF

from .core import DataError, seed_from

EVAL_RESIZE_RATIO = 256 / 224  # ImageNet's Resize(256) before CenterCrop(224)
SCALE = (0.08, 1.0)
RATIO = (3 / 4, 4 / 3)
Crop = tuple[int, int, int, int]  # top, left, height, width


def random_resized_crop(height: int, width: int, gen: torch.Generator) -> Crop:
    """A RandomResizedCrop window (torchvision's distribution) drawn from `gen`.

    Ten tries at an area share uniform in SCALE and a log-uniform aspect ratio in RATIO whose
    window fits; else the largest centred window with the ratio clamped into RATIO.
    """
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        u = torch.rand(3, generator=gen).tolist()
        target = area * (SCALE[0] + (SCALE[1] - SCALE[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(u[2] * (height - h + 1))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    ratio = width / height
    if ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif ratio > RATIO[1]:
        h, w = height, int(round(height * RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def sample_generator(seed: int, epoch: int, position: int) -> torch.Generator:
    """The generator of one sample's augmentation: a function of (seed, epoch, position) only."""
    return torch.Generator().manual_seed(seed_from("jpeg-sample", seed, epoch, position))


def train_transform(
    image: torch.Tensor, size: int, gen: torch.Generator, augment: Sequence[str] = ("crop", "flip")
) -> torch.Tensor:
    """RandomResizedCrop(size) ("crop"; else the evaluation crop) + RandomHorizontalFlip()
    ("flip") of a uint8 C x H x W image."""
    if "crop" in augment:
        top, left, h, w = random_resized_crop(image.shape[-2], image.shape[-1], gen)
        out = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
    else:
        out = eval_transform(image, size)
    flip = "flip" in augment and float(torch.rand(1, generator=gen)) < 0.5
    return TF.horizontal_flip(out) if flip else out


def eval_transform(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize(round(size * 256 / 224)) of the shorter side, then CenterCrop(size)."""
    resized = TF.resize(image, [round(size * EVAL_RESIZE_RATIO)], antialias=True)
    return TF.center_crop(resized, [size, size])


def decode(data: torch.Tensor, path: str, device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 3 x H x W RGB from a JPEG's bytes, or a DataError naming the file."""
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:
        reason = " ".join(str(exc).split()) or "undecodable"
        raise DataError(f"{path}: cannot decode the JPEG ({reason}); replace it") from None


class _Files(torch.utils.data.Dataset):
    """Item (position, index) -> (image or bytes, label, error message or '')."""

    def __init__(self, paths: Sequence[str], labels: torch.Tensor, plan: _Plan) -> None:
        self.paths, self.labels, self.plan = paths, labels, plan

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, str]:
        position, index = item
        path, label = self.paths[index], int(self.labels[index])
        try:
            data = read_file(path)
            if self.plan.on_device:
                return data, label, ""
            return self.plan.transform(decode(data, path), position), label, ""
        except (DataError, OSError) as exc:  # raised in the trial's process, not a worker's
            return torch.empty(0, dtype=torch.uint8), label, str(exc).splitlines()[0]


class _Plan:
    """How one epoch's samples are transformed (picklable: DataLoader workers receive it)."""

    def __init__(self, augment: Sequence[str], size: int, seed: int, epoch: int, on_device: bool
                 ) -> None:  # fmt: skip
        self.augment, self.size, self.seed, self.epoch = tuple(augment), size, seed, epoch
        self.on_device = on_device

    def transform(self, image: torch.Tensor, position: int) -> torch.Tensor:
        if not self.augment:
            return eval_transform(image, self.size)
        gen = sample_generator(self.seed, self.epoch, position)
        return train_transform(image, self.size, gen, self.augment)


def _collate(items: list[tuple[torch.Tensor, int, str]]) -> tuple[list, torch.Tensor]:
    errors = [err for _, _, err in items if err]
    if errors:
        raise DataError(errors[0])
    return [image for image, _, _ in items], torch.tensor([label for _, label, _ in items])


def epoch_batches(n: int, batch_size: int, order: torch.Tensor | None, drop_last: bool,
                  shard: tuple[int, int]) -> list[list[tuple[int, int]]]:  # fmt: skip
    """(position, index) lists: this shard's contiguous slice of each global batch."""
    rank, world = shard
    index = order.tolist() if order is not None else list(range(n))
    stop = n - n % batch_size if drop_last else n
    out = []
    for start in range(0, stop, batch_size):
        size = min(batch_size, stop - start)
        lo, hi = start + size * rank // world, start + size * (rank + 1) // world
        out.append([(p, index[p]) for p in range(lo, hi)])
    return out


def decode_on_device(datas: list[torch.Tensor], paths: list[str], device: torch.device
                     ) -> list[torch.Tensor]:  # fmt: skip
    """nvJPEG batch decode; a file it refuses is decoded on the CPU and moved over."""
    try:
        return decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return [_decode_one(d, p, device) for d, p in zip(datas, paths, strict=True)]


def _decode_one(data: torch.Tensor, path: str, device: torch.device) -> torch.Tensor:
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return decode(data, path).to(device)


def iterate(  # noqa: ANN001
    loader, epoch: int, with_indices: bool = False
) -> Iterator[tuple[torch.Tensor, ...]]:
    """One epoch of (normalised float images, labels[, sample indices]) on the loader's device
    (see JpegLoader)."""
    split, device = loader.split, loader.device
    on_device = device.type == "cuda"
    plan = _Plan(loader.augment, loader.image_size, loader.seed, epoch, on_device)
    order = None
    if loader.train:
        gen = torch.Generator().manual_seed(seed_from("jpeg-order", loader.seed, epoch))
        order = torch.randperm(len(split), generator=gen)
    batches = epoch_batches(len(split), loader.batch_size, order, loader.drop_last, loader.shard)
    files = _Files(split.images.paths, split.labels, plan)
    data = torch.utils.data.DataLoader(
        files, batch_sampler=batches, num_workers=loader.num_workers, collate_fn=_collate,
        pin_memory=on_device,
    )  # fmt: skip
    for batch, (images, labels) in zip(batches, data, strict=True):
        if on_device:
            paths = [split.images.paths[i] for _, i in batch]
            decoded = decode_on_device(images, paths, device)
            images = [plan.transform(im, pos) for im, (pos, _) in zip(decoded, batch, strict=True)]
        x = torch.stack(images).to(device, non_blocking=on_device)
        out: tuple[torch.Tensor, ...] = (
            loader.normalise(x.float()),
            labels.to(device, non_blocking=on_device),
        )
        if with_indices:
            out = (*out, torch.tensor([i for _, i in batch], device=device))
        yield out
