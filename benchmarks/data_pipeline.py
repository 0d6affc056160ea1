"""Input-pipeline throughput: tfkd's DeviceLoader vs the original PIL/torchvision pipeline.

Both loaders iterate the same split with the same augmentation (default: CIFAR-100's full
recipe, crop + flip + rotate), batch 128, and yield normalised float32 batches on --device.
One warm-up batch each, then full epochs until --seconds have passed (or exactly --epochs).
By default torch runs one thread, so both sides are one process on one core (--threads 0 for
torch's default; on a shared 2-core machine its OpenMP team stalls whenever another process
holds a core). Ratios are meaningful within one run; absolute numbers only with the machine
named, so the machine is printed too.

    python benchmarks/data_pipeline.py                       # synthetic 50,000 x 3 x 32 x 32
    python benchmarks/data_pipeline.py --classic-workers 0 2 --threads 0 --json
    python benchmarks/data_pipeline.py --dataset cifar100 --data-dir ./data --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tfkd.core.data as D  # noqa: E402

CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def synthetic_split(n: int, augment: tuple[str, ...]) -> D.Split:
    """A CIFAR-100-shaped uint8 split of random pixels (content does not change the work)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 100, (n,), generator=gen)
    return D.Split(images, labels, CIFAR100_MEAN, CIFAR100_STD, augment)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(loader, device: torch.device, seconds: float, epochs: int | None) -> dict:  # noqa: ANN001
    """Images/s over full epochs after one warm-up batch; stops at an epoch or time limit."""
    loader.set_epoch(0)
    it = iter(loader)
    next(it)  # warm-up batch (allocations, worker start, kernels)
    del it
    sync(device)
    images, batches, epoch = 0, 0, 1
    start = time.perf_counter()
    done = False
    while not done:
        loader.set_epoch(epoch)
        for x, _ in loader:
            images += x.shape[0]
            batches += 1
            if epochs is None and time.perf_counter() - start >= seconds:
                done = True
                break
        epoch += 1
        if epochs is not None and epoch > epochs:
            done = True
    sync(device)
    elapsed = time.perf_counter() - start
    rate = images / elapsed
    return {"images": images, "batches": batches, "seconds": elapsed, "images_per_s": rate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", help="a registered dataset (default: synthetic CIFAR-100)")
    parser.add_argument("--data-dir", default="./data", help="dataset root for --dataset")
    parser.add_argument("--size", type=int, default=50_000, help="synthetic split size")
    parser.add_argument("--augment", default="crop,flip,rotate", help="augmentations (both)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--classic-workers", type=int, nargs="+", default=[0], help="DataLoader workers (list)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="time per loader")
    parser.add_argument("--epochs", type=int, help="exactly this many epochs instead")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: one process on one core, like the classic loader with "
        "0 workers; 0: torch's default, which collapses when other processes busy the cores)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    augment = D.parse_augment(args.augment, None)
    if args.dataset:
        split = D.load(args.dataset, args.data_dir, val_fraction=0.0).train
        source = f"{args.dataset} train ({args.data_dir})"
    else:
        split = synthetic_split(args.size, augment)
        source = f"synthetic CIFAR-100-shaped {args.size}x3x32x32 uint8"

    common = dict(batch_size=args.batch_size, train=True, device=device, seed=0, augment=augment)
    runs = []
    t0 = time.perf_counter()
    loader = D.DeviceLoader(split, **common)
    setup = time.perf_counter() - t0
    result = measure(loader, device, args.seconds, args.epochs)
    runs.append({"loader": "device", "workers": 0, "setup_s": setup, **result})
    del loader
    for workers in args.classic_workers:
        t0 = time.perf_counter()
        loader = D.ClassicLoader(split, num_workers=workers, **common)
        setup = time.perf_counter() - t0
        result = measure(loader, device, args.seconds, args.epochs)
        runs.append({"loader": "classic", "workers": workers, "setup_s": setup, **result})
        del loader

    device_rate = runs[0]["images_per_s"]
    for run in runs[1:]:
        run["device_speedup"] = device_rate / run["images_per_s"]
    report = {
        "split": source,
        "images": len(split),
        "augment": list(augment),
        "batch_size": args.batch_size,
        "device": str(device),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "device_name": device_name(device),
        },
        "runs": runs,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    m = report["machine"]
    print(f"{source}, augment={','.join(augment)}, batch {args.batch_size}")
    print(f"machine: {m['device_name']}, {m['cpu_count']} CPUs, torch {m['torch']}, ", end="")
    print(f"{m['torch_threads']} torch threads, {m['platform']}")
    print(f"{'loader':<20} {'device':<8} {'images/s':>10} {'epochs-worth':>13}")
    for run in runs:
        workers = f" ({run['workers']} workers)" if run["loader"] == "classic" else ""
        name = run["loader"] + workers
        worth = run["images"] / len(split)
        print(f"{name:<20} {str(device):<8} {run['images_per_s']:>10,.0f} {worth:>13.2f}")
    for run in runs[1:]:
        print(f"DeviceLoader / classic ({run['workers']} workers): {run['device_speedup']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
