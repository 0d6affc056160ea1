"""Trials per GPU: the original-like pipeline, tfkd's eager step and its graph-captured step.

One run measures, with `run_trial` on CIFAR-100-format data (ResNet18 and MobileNetV2, batch 128,
mode tfkd_reg, 45,000 training images), each configuration in fresh processes:

- original-like: PIL/torchvision DataLoader with 4 workers, fp32, no channels_last, eager step
  (with tfkd's fused SGD, so a little faster than the 2019 script: the ratios err low);
- eager default: DeviceLoader, bf16 autocast, channels_last, fused SGD, eager step;
- graph-captured default: the same with the whole step captured into a CUDA graph;
- 1, 2 and 4 concurrent graph-captured resnet18 trials (separate processes, as Ray runs them),
  with whether the CUDA MPS daemon was running; with --mps-control the same again under MPS,
  which this script then starts before and stops after (a trial itself never does);
- optionally (--with-compile) torch.compile(mode="reduce-overhead") instead of the capture.

For each: steady images/s (mean over the epochs after the first), the first epoch's time, and the
start-up time (process start to the end of the first epoch, i.e. to steady speed). Prints a table
and writes JSON with the GPU's name. Uses torch and tfkd only (no Ray, MLflow or Optuna: each
worker records that none of them was imported). Without --data-dir it writes random
CIFAR-100-format files (50,000 + 10,000 images; the content does not change the work).

    python benchmarks/gpu_trials.py --out results.json          # one GPU, about 4-5 minutes
    python benchmarks/gpu_trials.py --out results.json \\
        --mps-control /usr/local/nvidia/bin/nvidia-cuda-mps-control   # adds the MPS runs
    python benchmarks/gpu_trials.py --smoke --out smoke.json     # CPU, tiny data, < 1 minute
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmarks, when imported
from data_pipeline import cpu_name  # noqa: E402  (one way to name the machine's CPU)

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("ray", "mlflow", "optuna")
VARIANTS = {  # config keys on top of the common ones
    "original": {
        "loader": "classic",
        "num_workers": 4,
        "amp": False,
        "channels_last": False,
        "cuda_graphs": "off",
    },
    "eager": {"cuda_graphs": "off"},
    "graphed": {"cuda_graphs": "capture"},
    "compile": {"cuda_graphs": "compile"},
}
TARGETS = {
    "resnet18 graphed img/s": 45_000,
    "resnet18 graphed / original": 3.0,
    "mobilenet_v2 graphed / eager": 3.0,
    "4 x resnet18 graphed under MPS, aggregate img/s": 75_000,
    "start-up of a later graphed resnet18 trial, s (at most)": 15.0,
}


@dataclass
class Run:
    name: str
    model: str
    variant: str
    processes: int = 1
    mps: bool = False
    epochs: int = 3
    results: list[dict] = field(default_factory=list)
    error: str = ""
    summary: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------- data


def write_cifar100(root: Path, train: int, test: int, seed: int = 0) -> Path:
    """Random images in CIFAR-100's python format (root/cifar-100-python/{train,test})."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", train), ("test", test)):
        labels = np.arange(n) % 100
        rng.shuffle(labels)
        batch = {
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"fine_labels": labels.tolist(),
            b"coarse_labels": (labels // 5).tolist(),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=4)
    return root


# ------------------------------------------------------------------------------------- worker


def worker(spec: dict) -> None:
    """One trial in this process: import, load the data, run_trial; write the timings."""
    import torch

    from tfkd.core import data, steps
    from tfkd.core.config import TrialConfig
    from tfkd.core.train import resolve_device, run_trial

    imported = time.time()
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    cfg = TrialConfig.from_dict(spec["config"])
    dataset = data.load(cfg.dataset, cfg.data_dir, val_fraction=cfg.val_fraction, seed=0)
    loaded = time.time()
    device = resolve_device(cfg.device)
    epochs: list[dict] = []

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        keep = ("epoch", "images_per_second", "epoch_seconds", "train_images", "train_loss")
        epochs.append({k: metrics[k] for k in keep} | {"reported_at": time.time()})

    run_trial(cfg.to_dict(), report, dataset=dataset)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    result = {
        "device": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "step": steps.kind_for(cfg, device, len(dataset.train)),
        "spawned_at": spec["spawned_at"],
        "import_s": imported - spec["spawned_at"],
        "data_s": loaded - imported,
        "epochs": epochs,
        "forbidden_imported": [m for m in FORBIDDEN if m in sys.modules],
    }
    Path(spec["out"]).write_text(json.dumps(result))


# ------------------------------------------------------------------------------------- parent


def summarise(run: Run) -> dict:
    """Steady img/s per process (epochs after the first), their sum, start-up times."""
    per_process, startups, first_epochs = [], [], []
    for r in run.results:
        steady = [e["images_per_second"] for e in r["epochs"][1:]] or [
            e["images_per_second"] for e in r["epochs"]
        ]
        per_process.append(sum(steady) / len(steady))
        startups.append(r["epochs"][0]["reported_at"] - r["spawned_at"])
        first_epochs.append(r["epochs"][0]["epoch_seconds"])
    steady_epoch = [e["epoch_seconds"] for r in run.results for e in r["epochs"][1:]]
    return {
        "img_per_s_per_trial": per_process,
        "img_per_s": sum(per_process),
        "steady_epoch_s": sum(steady_epoch) / len(steady_epoch) if steady_epoch else None,
        "first_epoch_s": max(first_epochs) if first_epochs else None,
        "startup_s": max(startups) if startups else None,
        "step": run.results[0]["step"] if run.results else None,
    }


def launch(run: Run, args: argparse.Namespace, data_dir: Path, work: Path, env: dict) -> None:
    """Start `run.processes` workers at once and wait for all of them."""
    common = {
        "mode": "tfkd_reg",
        "model": run.model,
        "dataset": "cifar100",
        "data_dir": str(data_dir),
        "epochs": run.epochs,
        "batch_size": args.batch_size,
        "device": args.device,
        "gpu_share": 1.0 / run.processes,
    }
    procs = []
    for i in range(run.processes):
        config = {**common, **VARIANTS[run.variant]}
        if args.smoke and run.variant == "original":
            config["num_workers"] = 2
        out = work / f"{run.name}-{i}.json"
        log = open(work / f"{run.name}-{i}.log", "w")  # noqa: SIM115 - closed below
        spec = {"config": config, "out": str(out), "threads": args.threads}
        spec["spawned_at"] = time.time()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
        procs.append(
            (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), out, log)
        )
    deadline = time.monotonic() + args.run_timeout
    for proc, out, log in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if proc.returncode == 0 and out.is_file():
            run.results.append(json.loads(out.read_text()))
        else:
            tail = Path(log.name).read_text().strip().splitlines()[-3:]
            run.error = f"exit {proc.returncode}: " + " | ".join(tail)


def plan(args: argparse.Namespace) -> list[Run]:
    """The runs in order; `mps` is filled in when they start."""
    single = 2 if args.smoke else 3  # epoch 1 warms up, the rest are steady
    runs = []
    for model in args.models:
        for variant in ("original", "eager", "graphed") + (
            ("compile",) if args.with_compile else ()
        ):
            epochs = 2 if variant in ("original", "eager") else single
            runs.append(Run(f"{model}-{variant}", model, variant, epochs=epochs))
    for n in args.concurrency:
        epochs = single + (0 if args.smoke else 1)
        runs.append(
            Run(f"{args.models[0]}-graphed-x{n}", args.models[0], "graphed", n, epochs=epochs)
        )
    return runs


def mps_env(base: dict) -> dict:
    env = dict(base)
    env.setdefault("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")
    env.setdefault("CUDA_MPS_LOG_DIRECTORY", "/tmp/nvidia-mps-log")
    Path(env["CUDA_MPS_LOG_DIRECTORY"]).mkdir(parents=True, exist_ok=True)
    return env


def start_mps(control: str, env: dict) -> None:
    subprocess.run([control, "-d"], env=env, check=True)
    time.sleep(1.0)


def stop_mps(control: str, env: dict) -> None:
    subprocess.run([control], input=b"quit\n", env=env, check=False, timeout=30)


def table(runs: list[Run]) -> str:
    rows = [
        ("run", "step", "procs", "MPS", "img/s each", "img/s total", "epoch s", "1st s", "start s")
    ]
    for run in runs:
        if not run.results:
            rows.append(
                (run.name, "-", str(run.processes), "-", run.error or "skipped", "", "", "", "")
            )
            continue
        s = run.summary
        each = "/".join(f"{v:,.0f}" for v in s["img_per_s_per_trial"])
        rows.append(
            (
                run.name,
                s["step"],
                str(run.processes),
                "on" if run.mps else "off",
                each,
                f"{s['img_per_s']:,.0f}",
                f"{s['steady_epoch_s']:.2f}" if s["steady_epoch_s"] else "-",
                f"{s['first_epoch_s']:.2f}",
                f"{s['startup_s']:.1f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def verdicts(runs: list[Run]) -> dict:
    """The issue's targets, where this run measured them."""
    by = {(r.name, r.mps): r.summary["img_per_s"] for r in runs if r.results}
    start = {(r.name, r.mps): r.summary["startup_s"] for r in runs if r.results}
    out = {}

    def put(name: str, value: float | None, ok: bool | None) -> None:
        if value is not None:
            out[name] = {"value": value, "target": TARGETS[name], "met": ok}

    g = by.get(("resnet18-graphed", False))
    o, e = by.get(("resnet18-original", False)), by.get(("mobilenet_v2-eager", False))
    m = by.get(("mobilenet_v2-graphed", False))
    put("resnet18 graphed img/s", g, g is not None and g >= 45_000)
    if g and o:
        put("resnet18 graphed / original", g / o, g / o >= 3)
    if m and e:
        put("mobilenet_v2 graphed / eager", m / e, m / e >= 3)
    four = by.get(("resnet18-graphed-x4", True))
    put(
        "4 x resnet18 graphed under MPS, aggregate img/s", four, four is not None and four >= 75_000
    )
    later = start.get(("resnet18-graphed-x1", False))
    name = "start-up of a later graphed resnet18 trial, s (at most)"
    put(name, later, later is not None and later <= 15)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the JSON here")
    parser.add_argument("--data-dir", type=Path, help="a folder holding cifar-100-python/")
    parser.add_argument("--models", default=None, help="comma-separated (resnet18,mobilenet_v2)")
    parser.add_argument("--concurrency", default=None, help="process counts (1,2,4)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default=None, help="cuda (default) or cpu")
    parser.add_argument("--mps-control", help="nvidia-cuda-mps-control: also measure under MPS")
    parser.add_argument("--with-compile", action="store_true", help="add torch.compile runs")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per worker")
    parser.add_argument("--run-timeout", type=float, default=150.0, help="seconds per run")
    parser.add_argument("--budget", type=float, default=330.0, help="skip runs after this (s)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny data, resnet8, 1 + 2")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    args.device = args.device or ("cpu" if args.smoke else "cuda")
    args.models = (args.models or ("resnet8" if args.smoke else "resnet18,mobilenet_v2")).split(",")
    args.concurrency = [
        int(n) for n in (args.concurrency or ("1,2" if args.smoke else "1,2,4")).split(",")
    ]
    if args.smoke:
        args.threads = args.threads or 1
        args.batch_size = min(args.batch_size, 32)

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="tfkd-gpu-trials-"))
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    try:
        size = (320, 100) if args.smoke else (50_000, 10_000)
        data_dir = args.data_dir or write_cifar100(work / "data", *size)
        runs = measure(args, data_dir, work, env, started)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for run in runs:
        run.summary = summarise(run) if run.results else {}
    first = next((r.results[0] for r in runs if r.results), {})
    report = {
        "machine": {
            "device": first.get("device"),
            "torch": first.get("torch"),
            "cuda": first.get("cuda"),
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
        },
        "settings": {"batch_size": args.batch_size, "mode": "tfkd_reg", "smoke": args.smoke},
        "wall_s": time.monotonic() - started,
        "runs": [asdict(r) for r in runs],
        "targets": verdicts(runs),
        "forbidden_imported": sorted(
            {m for r in runs for x in r.results for m in x["forbidden_imported"]}
        ),
    }
    print_report(report, runs)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0 if all(r.results for r in runs if not r.error.startswith("skipped")) else 1


def measure(
    args: argparse.Namespace, data_dir: Path, work: Path, env: dict, started: float
) -> list[Run]:
    """Every planned run, then (with --mps-control, MPS not yet running) the MPS runs."""
    sys.path.insert(0, str(REPO))
    from tfkd.sweep import cluster

    def go(run: Run, run_env: dict) -> None:
        if time.monotonic() - started > args.budget:
            run.error = "skipped: over the time budget"
            return
        mps = "on" if run.mps else "off"
        print(f"[gpu_trials] {run.name}: {run.processes} process(es), MPS {mps}", flush=True)
        launch(run, args, data_dir, work, run_env)

    runs = plan(args)
    mps_on = cluster.mps_running()
    for run in runs:
        run.mps = mps_on
        go(run, env)
    if args.mps_control and not mps_on:
        menv = mps_env(env)
        start_mps(args.mps_control, menv)
        try:
            for n in args.concurrency:
                model = args.models[0]
                run = Run(f"{model}-graphed-x{n}", model, "graphed", n, mps=True, epochs=4)
                runs.append(run)
                go(run, menv)
        finally:
            stop_mps(args.mps_control, menv)
    return runs


def print_report(report: dict, runs: list[Run]) -> None:
    machine = report["machine"]
    print(f"\n{machine['device']} (torch {machine['torch']}, CUDA {machine['cuda']})")
    print(table(runs))
    for name, v in report["targets"].items():
        verdict = "met" if v["met"] else "NOT met"
        print(f"target {name}: {v['value']:,.2f} (target {v['target']:,}) {verdict}")
    if report["forbidden_imported"]:
        print(f"WARNING: imported {', '.join(report['forbidden_imported'])}")


if __name__ == "__main__":
    sys.exit(main())
