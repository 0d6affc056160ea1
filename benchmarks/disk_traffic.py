"""Bytes a sweep writes to disk per trial-epoch: resnet18 on fake CIFAR-sized data, tracked.

    python benchmarks/disk_traffic.py [--trials 2] [--epochs 3] [--checkout PATH] [--json]

Runs `tune_main.py` of a checkout (this one by default; `--checkout` measures another, e.g. an
older commit, the same way) in a temporary folder: random search, `--trials` trials of
`--epochs` epochs each (no ASHA stop), MLflow tracking to a SQLite file. While it runs, every
process below the driver is sampled from /proc/PID/io (`write_bytes`: bytes the process caused
to be written to a block device; tmpfs writes are not counted) and its last value kept. Reported:
  * trial processes (Ray's workers running the trainable): bytes per trial-epoch;
  * every process of the sweep (driver, Ray, MLflow writes included): bytes per trial-epoch;
  * the checkpoint itself (checkpoint.pt of one epoch) and what the results folder holds at the
    end, for scale.
Target: the trial processes write at most one checkpoint per trial-epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tfkd.sweep import processes  # noqa: E402

MB = 1e6
TRIAL_PROCESS = b"ImplicitFunc"  # Ray's title of a process running a function trainable


def written_bytes(pid: int) -> int | None:
    """/proc/PID/io write_bytes; None when the process is gone or unreadable."""
    try:
        for line in (processes.PROC / str(pid) / "io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def is_trial_process(pid: int) -> bool:
    try:
        return TRIAL_PROCESS in (processes.PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return False


class Sampler(threading.Thread):
    """Samples write_bytes of the driver and everything below it until stopped."""

    def __init__(self, driver: int, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.driver, self.period = driver, period
        self.last: dict[int, int] = {}
        self.trials: set[int] = set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for pid in [self.driver, *processes.descendants(self.driver)]:
                value = written_bytes(pid)
                if value is not None:
                    self.last[pid] = max(value, self.last.get(pid, 0))
                    if pid not in self.trials and is_trial_process(pid):
                        self.trials.add(pid)
            time.sleep(self.period)


def sweep_command(checkout: Path, workdir: Path, trials: int, epochs: int) -> list[str]:
    return [
        sys.executable,
        str(checkout / "tune_main.py"),
        *("--mode", "lsr", "--dataset", "fake", "--model", "resnet18"),
        *("--search-alg", "random", "--num-samples", str(trials), "--epochs", str(epochs)),
        *("--grace-period", str(epochs), "--max-concurrent", "1", "--name", "disk"),
        *("--set", "fake_size=64", "--mlflow-uri", f"sqlite:///{workdir / 'mlflow.db'}"),
        *("--storage", str(workdir / "ray_results")),
    ]


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(checkout: Path, trials: int, epochs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="disk-bench-") as tmp:
        workdir = Path(tmp)
        env = {**os.environ, "PYTHONPATH": str(checkout), "PYTHONDONTWRITEBYTECODE": "1"}
        log = open(workdir / "driver.log", "w")  # noqa: SIM115
        started = time.monotonic()
        driver = subprocess.Popen(
            sweep_command(checkout, workdir, trials, epochs),
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        sampler = Sampler(driver.pid)
        sampler.start()
        code = driver.wait()
        sampler.done.set()
        sampler.join()
        if code != 0:
            raise SystemExit(f"the sweep failed ({code}):\n{(workdir / 'driver.log').read_text()}")
        trial_epochs = trials * epochs
        checkpoint = next((workdir / "ray_results").rglob("checkpoint.pt"))
        return {
            "checkout": str(checkout),
            "trials": trials,
            "epochs": epochs,
            "wall_s": round(time.monotonic() - started, 1),
            "trial_processes": len(sampler.trials),
            "trial_mb_per_trial_epoch": round(
                sum(sampler.last[p] for p in sampler.trials) / trial_epochs / MB, 1
            ),
            "all_mb_per_trial_epoch": round(sum(sampler.last.values()) / trial_epochs / MB, 1),
            "checkpoint_mb": round(checkpoint.stat().st_size / MB, 1),
            "results_folder_mb": round(folder_bytes(workdir / "ray_results") / MB, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--checkout", type=Path, default=REPO, help="the tfkd checkout to run")
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = parser.parse_args()
    result = measure(args.checkout.resolve(), args.trials, args.epochs)
    result["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'measure':<34} {'value':>10}")
    for key in (
        "trial_mb_per_trial_epoch",
        "all_mb_per_trial_epoch",
        "checkpoint_mb",
        "results_folder_mb",
        "trial_processes",
        "wall_s",
    ):
        print(f"{key:<34} {result[key]:>10}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
