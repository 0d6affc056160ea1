"""Where on the schedule early stopping can judge: does a rung's accuracy predict the final ranking?

    python benchmarks/rung_fidelity.py [--epochs 10] [--configs 16] [--modes baseline lsr ...]
        [--concurrency 2] [--out DIR] [--json]

For each mode, `--configs` configurations drawn from its shipped search space (the first is the
space's first point, the preset or defaults; the others uniform, log-uniform where the space is)
are trained to the end of the schedule on scikit-learn's digits (resnet8, one CPU thread each,
`--concurrency` at a time), without early stopping. At every named point of the schedule
(tfkd.sweep.rungs: end of warm-up, before and after each learning-rate drop) it measures

  rho        Spearman's rank correlation between the validation accuracy there and the final one;
  survives   whether the configuration that is best at the end is in the top half there (what
             ASHA with reduction factor 2 keeps);
  regret     final accuracy of the best at the end minus that of the best at the rung (pp).

tfkd_self's teacher is a baseline resnet8 trained first on the same schedule. Writes
rung_fidelity.json and rung_fidelity.md into --out.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from tfkd.core.config import TrialConfig  # noqa: E402
from tfkd.sweep import rungs, search_space  # noqa: E402

MODES = ("baseline", "lsr", "tfkd_reg", "tfkd_self")
DATA_DIR = str(Path(tempfile.gettempdir()) / "tfkd-digits")


def draw(param: search_space.Param, rng: np.random.Generator) -> Any:
    """One value of a searched key, drawn the way its distribution says."""
    if param.distribution == "choice":
        return param.values[int(rng.integers(len(param.values)))]
    if param.distribution.startswith("log"):
        value = math.exp(rng.uniform(math.log(param.low), math.log(param.high)))
    else:
        value = rng.uniform(param.low, param.high)
    return int(round(value)) if param.distribution in ("int", "logint") else float(value)


def configurations(mode: str, count: int, seed: int) -> list[dict[str, Any]]:
    """The space's first point, then `count - 1` random points of it."""
    space = search_space.load(search_space.default_path(mode), mode)
    rng = np.random.default_rng(seed)
    points = [space.first_point("resnet8")]
    while len(points) < count:
        points.append({name: draw(p, rng) for name, p in space.params.items()})
    fixed = {k: v for k, v in space.defaults.items() if k not in space.params}
    return [{**fixed, **point} for point in points]


def base_config(mode: str, epochs: int, batch_size: int) -> dict[str, Any]:
    return {
        "mode": mode,
        "model": "resnet8",
        "dataset": "digits",
        "data_dir": DATA_DIR,
        "epochs": epochs,
        "batch_size": batch_size,
        "device": "cpu",
        "seed": 0,
    }


def train(job: tuple[dict[str, Any], str | None]) -> dict[str, Any]:
    """One configuration to the end: its validation accuracy after every epoch (a worker)."""
    import torch

    from tfkd.core.train import run_trial

    config, keep_dir = job
    torch.set_num_threads(1)
    curve: list[float] = []

    def report(metrics: Mapping[str, Any], checkpoint_dir: str) -> None:
        curve.append(float(metrics["val_accuracy"]))
        if keep_dir and metrics["epoch"] == config["epochs"]:
            shutil.copytree(checkpoint_dir, keep_dir, dirs_exist_ok=True)

    final = run_trial(config, report)
    return {"config": config, "val": curve, "test": final.get("test_accuracy")}


def fidelity(runs: Sequence[Mapping[str, Any]], epoch: int) -> dict[str, Any]:
    """rho, survival of the final best and regret when judging at `epoch` (1-based)."""
    final = np.array([r["val"][-1] for r in runs])
    there = np.array([r["val"][epoch - 1] for r in runs])
    rho = float(stats.spearmanr(there, final).statistic)
    best_final = int(np.argmax(final))
    kept = set(np.argsort(-there, kind="stable")[: max(1, len(runs) // 2)].tolist())
    return {
        "epoch": epoch,
        "rho": None if math.isnan(rho) else round(rho, 3),
        "survives": best_final in kept,
        "regret": round(float(final[best_final] - final[int(np.argmax(there))]), 2),
    }


def measure(opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    teacher_dir = str(workdir / "teacher")
    jobs: list[tuple[dict[str, Any], str | None]] = []
    with multiprocessing.get_context("spawn").Pool(opts.concurrency) as pool:
        if "tfkd_self" in opts.modes:
            pool.map(train, [(base_config("baseline", opts.epochs, opts.batch_size), teacher_dir)])
        for mode in opts.modes:
            base = base_config(mode, opts.epochs, opts.batch_size)
            if mode == "tfkd_self":
                base["teacher_checkpoint"] = teacher_dir
            jobs += [({**base, **c}, None) for c in configurations(mode, opts.configs, opts.seed)]
        started = time.perf_counter()
        runs = pool.map(train, jobs, chunksize=1)
    cfg = TrialConfig.from_dict(base_config("baseline", opts.epochs, opts.batch_size))
    points = {n: e for n, e in rungs.schedule_points(cfg).items() if e < opts.epochs}
    table = {}
    for mode in opts.modes:
        mine = [r for r in runs if r["config"]["mode"] == mode]
        table[mode] = {name: fidelity(mine, epoch) for name, epoch in points.items()}
    return {
        "epochs": opts.epochs,
        "batch_size": opts.batch_size,
        "configs": opts.configs,
        "points": points,
        "fidelity": table,
        "runs": runs,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def markdown(result: Mapping[str, Any]) -> str:
    points = result["points"]
    head = "| mode | " + " | ".join(f"{n} (ep {e})" for n, e in points.items()) + " |"
    lines = [head, "|" + "---|" * (len(points) + 1)]
    for mode, row in result["fidelity"].items():
        cells = [
            f"{c['rho']:+.2f} {'kept' if c['survives'] else 'LOST'} {c['regret']:.1f}"
            if c["rho"] is not None
            else "n/a"
            for c in row.values()
        ]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    means = [
        statistics.mean(result["fidelity"][m][n]["rho"] or 0.0 for m in result["fidelity"])
        for n in points
    ]
    lines.append("| mean rho | " + " | ".join(f"{v:+.2f}" for v in means) + " |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--epochs", type=int, default=10, help="the full schedule (default 10)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--configs", type=int, default=16, help="per mode (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="of the configurations drawn")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--json", action="store_true", help="also print the JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tfkd-rungs-") as tmp:
        result = measure(opts, Path(tmp))
    result["command"] = "python benchmarks/rung_fidelity.py " + " ".join(argv or sys.argv[1:])
    table = markdown(result)
    (out / "rung_fidelity.json").write_text(json.dumps(result, indent=1))
    (out / "rung_fidelity.md").write_text(table)
    print(table)
    if opts.json:
        print(json.dumps(result["fidelity"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
