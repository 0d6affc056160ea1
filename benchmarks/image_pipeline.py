"""JPEG input pipeline at ImageNet sizes: tfkd's jpeg loader vs the original's PIL + DataLoader.

The script writes --images JPEG files of ImageNet's typical sizes (500 x 375, 375 x 500,
500 x 333, 640 x 480; photo-like smooth content, quality 90) in ImageNet's folder layout, then
reads them as the training split with ImageNet's training transforms (RandomResizedCrop 224 +
horizontal flip, normalised) and, separately, the evaluation transforms (Resize 256 +
CenterCrop 224), batch --batch-size:

- original: torchvision ImageFolder-style per-sample PIL decode + transforms + torch DataLoader
  (what PyTorch's ImageNet example, and so the original's ImageNet_train/main.py, runs);
- tfkd: tfkd.core.data's jpeg loader (libjpeg-turbo through torchvision.io on CPU worker
  processes; on CUDA, nvJPEG batch decoding and the transforms on the device).

Both with --workers loader processes (0: in the measuring process). Reported: images/s, and on
the CPU images/s per process (divided by max(1, workers)). One warm-up batch, then whole
passes until --seconds have passed. Table on stdout, JSON with --json / --out.

    python benchmarks/image_pipeline.py --images 256 --workers 0 --json
    python benchmarks/image_pipeline.py --device cuda --workers 4 --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tfkd.core.data as D  # noqa: E402
from benchmarks.data_pipeline import device_name  # noqa: E402

SIZES = ((375, 500), (500, 375), (333, 500), (480, 640))  # (height, width)
CLASSES = 8


def write_images(root: Path, count: int) -> Path:
    """`count` JPEGs of ImageNet sizes under root/train/<class>/ (and one per class in val/)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count + CLASSES):
        split, k = ("train", i % CLASSES) if i < count else ("val", i - count)
        h, w = SIZES[i % len(SIZES)]
        coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
        folder = root / split / f"n{k:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"img_{i:06d}.JPEG", quality=90)
    return root


def original_loader(split: D.FileSplit, train: bool, batch: int, workers: int):  # noqa: ANN201
    """PyTorch's ImageNet example: PIL open + convert, torchvision transforms, DataLoader."""
    from PIL import Image
    from torchvision import transforms as T

    steps = (
        [T.RandomResizedCrop(224), T.RandomHorizontalFlip()]
        if train
        else [T.Resize(256), T.CenterCrop(224)]
    )
    transform = T.Compose([*steps, T.ToTensor(), T.Normalize(split.mean, split.std)])

    class Files(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(split)

        def __getitem__(self, i: int):  # noqa: ANN204
            with open(split.images.paths[i], "rb") as f:
                image = Image.open(f).convert("RGB")
            return transform(image), int(split.labels[i])

    return torch.utils.data.DataLoader(
        Files(), batch_size=batch, shuffle=train, num_workers=workers, drop_last=False
    )


def tfkd_loader(split: D.FileSplit, train: bool, batch: int, workers: int, device: str):  # noqa: ANN201
    return D.make_loader(
        "jpeg", split, batch_size=batch, train=train, device=device, num_workers=workers,
        image_size=224,
    )  # fmt: skip


def measure(loader, device: torch.device, seconds: float) -> float:  # noqa: ANN001
    """images/s over whole passes after one warm-up batch."""
    it = iter(loader)
    next(it)
    del it
    images, started = 0, time.perf_counter()
    while True:
        for x, _ in loader:
            x = x.to(device)
            images += x.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return images / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's own)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="tfkd-jpeg-bench-") as tmp:
        split = D.load("folder", write_images(Path(tmp), args.images), val_fraction=0.0).train
        rows = []
        for train in (True, False):
            for name in ("original", "tfkd"):
                loader = (
                    original_loader(split, train, args.batch_size, args.workers)
                    if name == "original"
                    else tfkd_loader(split, train, args.batch_size, args.workers, args.device)
                )
                rate = measure(loader, device, args.seconds)
                per_process = rate / max(1, args.workers) if device.type == "cpu" else None
                rows.append(
                    {
                        "pipeline": name,
                        "transforms": "train" if train else "eval",
                        "images_per_s": rate,
                        "images_per_s_per_process": per_process,
                    }
                )
    result = {
        "device": device_name(device), "torch": torch.__version__, "images": args.images,
        "batch_size": args.batch_size, "workers": args.workers, "threads": args.threads,
        "sizes": SIZES, "rows": rows,
    }  # fmt: skip
    print("| pipeline | transforms | images/s | images/s per process |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        per = f"{r['images_per_s_per_process']:.0f}" if r["images_per_s_per_process"] else "-"
        print(f"| {r['pipeline']} | {r['transforms']} | {r['images_per_s']:.0f} | {per} |")
    if args.json:
        print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
