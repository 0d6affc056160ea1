"""Image folders of real JPEG files in ImageNet's layout (root/train/<class>, root/val/<class>).

Each class is a flat colour (`class_colour`) plus noise, at sizes that differ per image (so the
resize and crop paths are exercised); a small CNN tells the classes apart within an epoch or two.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("n01440764", "n01443537", "n01484850", "n01491361")


def class_colour(k: int) -> tuple[int, int, int]:
    return ((70 * k + 40) % 256, (150 - 35 * k) % 256, (25 + 90 * k) % 256)


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int], seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    pixels = np.clip(np.array(colour)[None, None, :] + rng.normal(0, 12, (h, w, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path, format="JPEG", quality=90)


def write_image_folder(
    root: Path,
    *,
    classes: tuple[str, ...] = CLASSES,
    train_per_class: int = 10,
    val_per_class: int = 3,
    sizes: tuple[tuple[int, int], ...] = ((40, 48), (48, 40), (44, 44)),
) -> Path:
    """Write root/train/<class>/*.JPEG and root/val/<class>/*.JPEG; returns `root`."""
    seed = 0
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for k, name in enumerate(classes):
            for i in range(count):
                seed += 1
                file = root / split / name / f"{name}_{i:04d}.JPEG"
                write_image(file, class_colour(k), sizes[i % len(sizes)], seed)
    return root
