"""Batched, seeded data augmentation on any device, without per-sample Python loops.

The three augmentations of the original recipe, with the same distributions as torchvision's
`RandomCrop(size, padding=4)`, `RandomHorizontalFlip()` and `RandomRotation(15)` applied in
that order:

- crop: a per-sample shift (dy, dx), each uniform in {-pad..pad}, zero fill (= pad then crop);
- flip: horizontal flip with probability 0.5;
- rotate: a per-sample angle uniform in [-max_degrees, max_degrees] degrees, counter-clockwise
  for positive angles, about the image centre, nearest-neighbour sampling and zero fill
  (torchvision's RandomRotation defaults).

Without rotation, crop and flip are one integer gather on the zero-padded uint8 batch. With
rotation, all three are one batched affine `F.grid_sample(mode="nearest")`: the sampling grid
(what `F.affine_grid` would build, composed with the flip and the crop shift, and masked to the
crop window) is computed by broadcasting. Per sample this equals torchvision's transforms in
sequence (tested pixel for pixel, up to float ties at the window edge).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .core import AnySplit

AUGMENTATIONS: tuple[str, ...] = ("crop", "flip", "rotate")
PAD = 4
MAX_DEGREES = 15.0


def parse_augment(augment: str | Sequence[str] | None, split: AnySplit | None) -> tuple[str, ...]:
    """Validate an augmentation choice into a tuple in canonical order (crop, flip, rotate).

    "default" -> `split.augment`; None, "", "none" -> (); "crop,flip" or ["crop", "flip"] ->
    that subset. An unknown name raises ValueError naming it and the valid names.
    """
    if augment is None:
        return ()
    if isinstance(augment, str):
        text = augment.strip().lower()
        if text == "default":
            if split is None:
                raise ValueError("augment='default' needs a split to take its default from")
            return parse_augment(tuple(split.augment), None)
        if text in ("", "none"):
            return ()
        items = [part.strip() for part in text.split(",")]
    else:
        items = [str(part).strip().lower() for part in augment]
    items = [item for item in items if item]
    for item in items:
        if item not in AUGMENTATIONS:
            raise ValueError(
                f"unknown augmentation {item!r}; valid: {', '.join(AUGMENTATIONS)} "
                "(comma-separated), 'default' or 'none'"
            )
    return tuple(name for name in AUGMENTATIONS if name in items)


@dataclass(frozen=True, eq=False)
class AugmentParams:
    """Sampled per-sample parameters; None where that augmentation is off.

    offsets: int64 N x 2 (dy, dx): output pixel (y, x) reads input pixel (y + dy, x + dx).
    flip: bool N. angles: float32 N, degrees, counter-clockwise.
    """

    offsets: torch.Tensor | None
    flip: torch.Tensor | None
    angles: torch.Tensor | None
    pad: int = PAD


def sample_params(
    n: int,
    names: Sequence[str],
    generator: torch.Generator,
    *,
    pad: int = PAD,
    max_degrees: float = MAX_DEGREES,
) -> AugmentParams:
    """Draw the parameters for `n` samples from `generator` (on the generator's device)."""
    dev = generator.device
    offsets = flip = angles = None
    if "crop" in names:
        offsets = torch.randint(-pad, pad + 1, (n, 2), generator=generator, device=dev)
    if "flip" in names:
        flip = torch.rand(n, generator=generator, device=dev) < 0.5
    if "rotate" in names:
        angles = (torch.rand(n, generator=generator, device=dev) * 2.0 - 1.0) * max_degrees
    return AugmentParams(offsets, flip, angles, pad)


def apply_params(x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Apply crop -> flip -> rotation to a N x C x H x W batch; float32 out, same value scale."""
    if params.angles is not None:
        return _affine(x, params.angles, params)
    if params.offsets is not None or params.flip is not None:
        return _shift_flip(x, params).float()
    return x.float()


def augment_batch(
    x: torch.Tensor,
    names: Sequence[str],
    generator: torch.Generator,
    *,
    pad: int = PAD,
    max_degrees: float = MAX_DEGREES,
    return_params: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, AugmentParams]:
    """Augment a uint8 or float batch with the named augmentations, randomness from `generator`.

    Returns float32 in the input's value scale (0..255 for uint8), optionally with the sampled
    `AugmentParams` so callers (tests) can check the distributions.
    """
    params = sample_params(x.shape[0], names, generator, pad=pad, max_degrees=max_degrees)
    out = apply_params(x, params)
    return (out, params) if return_params else out


def _shift_flip(x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Crop (zero padded shift) and flip as one gather; keeps the input dtype."""
    n, c, h, w = x.shape
    dev = x.device
    p = params.pad if params.offsets is not None else 0
    xp = F.pad(x, (p, p, p, p)) if p else x
    wp = w + 2 * p
    cols = torch.arange(w, device=dev).expand(n, w)
    if params.flip is not None:
        cols = torch.where(params.flip[:, None], (w - 1) - cols, cols)
    rows = torch.arange(h, device=dev).expand(n, h)
    if params.offsets is not None:
        rows = rows + params.offsets[:, :1]
        cols = cols + params.offsets[:, 1:]
    index = ((rows + p) * wp)[:, :, None] + (cols + p)[:, None, :]
    index = index.view(n, 1, h * w).expand(n, c, h * w)
    return xp.reshape(n, c, -1).gather(2, index).view(n, c, h, w)


_BASE: dict[tuple[int, int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def _base_coords(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre x (1 x 1 x W) and y (1 x H x 1) in normalised coordinates."""
    key = (h, w, device)
    if key not in _BASE:
        xs = (torch.arange(w, device=device, dtype=torch.float32) * 2 + 1) / w - 1
        ys = (torch.arange(h, device=device, dtype=torch.float32) * 2 + 1) / h - 1
        _BASE[key] = (xs.view(1, 1, w), ys.view(1, h, 1))
    return _BASE[key]


def _affine(x: torch.Tensor, angles: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Crop, flip and rotation as ONE grid_sample (nearest, zero fill).

    In grid_sample's normalised coordinates (align_corners=False) output point q first maps to
    r = R^-1 q (R^-1: the aspect-corrected inverse rotation), a point of the cropped+flipped
    image; then to the input point F r + t (F negates x for flipped samples, t = (2 dx / W,
    2 dy / H) is the crop shift). A point r outside (-1, 1)^2 lies outside the crop window and
    must read zero, as when rotating the already-cropped image: adding 8 * floor(max|r|) moves
    exactly those points off the image. Integer shifts and flips commute with nearest rounding,
    so this equals the three transforms in sequence. The grid is what F.affine_grid would
    build, computed as two planes by broadcasting (several times faster on CPU than
    affine_grid or an interleaved N x H x W x 2 computation).
    """
    n, c, h, w = x.shape
    gx, gy = _base_coords(h, w, x.device)
    rad = (angles.to(torch.float32) * (math.pi / 180.0)).view(n, 1, 1)
    cos, sin = torch.cos(rad), torch.sin(rad)
    rx = torch.addcmul(cos * gx, sin * (-h / w), gy)  # N x H x W
    ry = torch.addcmul((sin * (w / h)) * gx, cos, gy)
    planes = torch.empty((n, 2, h, w), device=x.device)
    gx_out, gy_out = planes[:, 0], planes[:, 1]
    if params.flip is not None:
        sign = (1.0 - 2.0 * params.flip.to(torch.float32)).view(n, 1, 1)
        torch.mul(rx, sign, out=gx_out)
    else:
        gx_out.copy_(rx)
    if params.offsets is not None:
        shift = params.offsets.to(torch.float32).view(n, 2, 1, 1)
        outside = torch.maximum(rx.abs_(), ry.abs()).floor_()  # 0 inside the window, >= 1 out
        gx_out.add_(shift[:, 1], alpha=2.0 / w).add_(outside, alpha=8.0)
        torch.add(ry, shift[:, 0], alpha=2.0 / h, out=gy_out)
    else:
        gy_out.copy_(ry)
    grid = planes.permute(0, 2, 3, 1)  # N x H x W x 2 view; grid_sample reads it by strides
    return F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
