"""Where on the schedule early stopping can judge: does a rung's accuracy predict the final ranking?

    python benchmarks/rung_fidelity.py [--epochs 10] [--configs 16] [--draws 3]
        [--modes baseline lsr tfkd_reg tfkd_self] [--concurrency 2] [--workdir DIR] [--out DIR]

For each mode, --draws independent draws of --configs configurations from its SHIPPED search space
(search_spaces/<mode>.yaml, read when the run starts: each draw is the space's first point, the
preset or defaults, then uniform points, log-uniform where the space is; draw d uses seed
--seed + d) are trained to the end of the schedule on scikit-learn's digits (resnet8, one CPU
thread each, --concurrency at a time), without early stopping. At every named point of the
schedule (tfkd.sweep.rungs: end of warm-up, before and after each learning-rate drop) it measures,
per draw,

  rho        Spearman's rank correlation between the validation accuracy there and the final one,
             with its 95% Fisher-z interval (var 1.06 / (n - 3), benchmarks/evidence_stats.py);
  survives   whether the configuration that is best at the end is in the top half there (what
             ASHA with reduction factor 2 keeps);
  regret     final accuracy of the best at the end minus that of the best at the rung (pp);

and per mode the draws' rho pooled in z (weights n - 3) with its interval. tfkd_self's teacher is
a baseline resnet8 trained first on the same schedule.

Each trained configuration is one JSON file under --workdir/units/<mode>/ (named by the
configuration, so a configuration two draws share is trained once), written when it ends and
skipped when present: stop the run and start it again to continue. Writes rung_fidelity.json and
rung_fidelity.md into --out. The full measurement, in the background:

    nohup python benchmarks/rung_fidelity.py --draws 3 --workdir $HOME/tfkd-rungs \
        --out benchmarks/results > $HOME/tfkd-rungs.log 2>&1 &

4 modes x 3 draws x 16 configurations x 10 epochs ~ 190 trainings of ~35 s on one core: ~ 1 h on
both cores of the 2-core machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import evidence_stats as es  # noqa: E402
import numpy as np  # noqa: E402

from tfkd.core import atomic  # noqa: E402
from tfkd.core.config import TrialConfig  # noqa: E402
from tfkd.sweep import rungs, search_space  # noqa: E402

MODES = ("baseline", "lsr", "tfkd_reg", "tfkd_self")
TEACHER = "teacher"  # the units name of tfkd_self's teacher (a baseline of the same schedule)


def draw(param: search_space.Param, rng: np.random.Generator) -> Any:
    """One value of a searched key, drawn the way its distribution says (q: rounded to it)."""
    if param.distribution == "choice":
        return param.values[int(rng.integers(len(param.values)))]
    if param.distribution.startswith("log"):
        value = math.exp(rng.uniform(math.log(param.low), math.log(param.high)))
    else:
        value = rng.uniform(param.low, param.high)
    if param.q:
        value = min(max(round(value / param.q) * param.q, param.low), param.high)
    return int(round(value)) if param.distribution in ("int", "logint") else float(value)


def configurations(mode: str, count: int, seed: int) -> list[dict[str, Any]]:
    """The shipped space's first point, then `count - 1` random points of it (seeded)."""
    space = search_space.load(search_space.default_path(mode), mode)
    rng = np.random.default_rng(seed)
    points = [space.first_point("resnet8")]
    while len(points) < count:
        points.append({name: draw(p, rng) for name, p in space.params.items()})
    fixed = {k: v for k, v in space.defaults.items() if k not in space.sets()}
    return [{**fixed, **point} for point in points]


def base_config(mode: str, epochs: int, batch_size: int, data_dir: Path) -> dict[str, Any]:
    return {
        "mode": mode,
        "model": "resnet8",
        "dataset": "digits",
        "data_dir": str(data_dir),
        "epochs": epochs,
        "batch_size": batch_size,
        "device": "cpu",
        "seed": 0,
    }


def config_key(config: Mapping[str, Any]) -> str:
    """A stable file name for a configuration: the same configuration is trained once."""
    text = json.dumps(dict(config), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def train(job: tuple[dict[str, Any], str, str | None]) -> dict[str, Any]:
    """A worker: one configuration to the end, its validation accuracy after every epoch,
    stored atomically at `path` (and its last checkpoint copied to `keep_dir`, if given)."""
    import torch

    from tfkd.core.train import run_trial

    config, path, keep_dir = job
    torch.set_num_threads(1)
    curve: list[float] = []
    started = time.perf_counter()

    def report(metrics: Mapping[str, Any], checkpoint_dir: str) -> None:
        curve.append(float(metrics["val_accuracy"]))
        if keep_dir and metrics["epoch"] == config["epochs"]:
            shutil.copytree(checkpoint_dir, keep_dir, dirs_exist_ok=True)

    final = run_trial(config, report)
    document = {
        "config": config,
        "val": curve,
        "test": final.get("test_accuracy"),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    atomic.write_text(path, json.dumps(document, indent=1))
    return document


def train_missing(jobs: Sequence[tuple[dict[str, Any], str, str | None]], pool) -> None:
    todo = list(
        {path: (c, path, keep) for c, path, keep in jobs if not Path(path).is_file()}.values()
    )
    print(f"[rung_fidelity] training {len(todo)} configurations ({len(jobs) - len(todo)} stored)")
    for done in pool.imap_unordered(train, todo):
        print(f"[rung_fidelity] {done['config']['mode']}: final val {done['val'][-1]:.2f}")


def fidelity(runs: Sequence[Mapping[str, Any]], epoch: int) -> dict[str, Any]:
    """rho with its interval, survival of the final best and regret when judging at `epoch`."""
    final = np.array([r["val"][-1] for r in runs])
    there = np.array([r["val"][epoch - 1] for r in runs])
    rho = es.spearman(there, final)
    low, high = es.spearman_ci(rho, len(runs))
    best_final = int(np.argmax(final))
    kept = set(np.argsort(-there, kind="stable")[: max(1, len(runs) // 2)].tolist())
    return {
        "epoch": epoch,
        "n": len(runs),
        "rho": None if math.isnan(rho) else round(rho, 3),
        "low": None if low is None else round(low, 3),
        "high": None if high is None else round(high, 3),
        "survives": best_final in kept,
        "regret": round(float(final[best_final] - final[int(np.argmax(there))]), 2),
    }


def pooled(per_draw: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The draws' rho at one point pooled in z, with its 95% interval (None where undefined)."""
    rhos = [math.nan if d["rho"] is None else d["rho"] for d in per_draw]
    result = es.pooled_spearman(rhos, [d["n"] for d in per_draw])
    return {k: v if v is None or k == "draws" else round(v, 3) for k, v in result.items()}


def jobs_for(opts: argparse.Namespace, workdir: Path) -> tuple[list, list, dict]:
    """The teacher job (if tfkd_self is measured), every draw's jobs, and each mode's draws as
    lists of unit paths."""
    units, data_dir = workdir / "units", workdir / "data"
    teacher_dir = workdir / TEACHER
    teacher_jobs = []
    if "tfkd_self" in opts.modes:
        config = base_config("baseline", opts.epochs, opts.batch_size, data_dir)
        teacher_jobs.append((config, str(units / f"{TEACHER}.json"), str(teacher_dir)))
    jobs, draws = [], {}
    for mode in opts.modes:
        base = base_config(mode, opts.epochs, opts.batch_size, data_dir)
        if mode == "tfkd_self":
            base["teacher_checkpoint"] = str(teacher_dir)
        for d in range(opts.draws):
            paths = []
            for point in configurations(mode, opts.configs, opts.seed + d):
                config = {**base, **point}
                path = str(units / mode / f"{config_key(config)}.json")
                jobs.append((config, path, None))
                paths.append(path)
            draws.setdefault(mode, []).append(paths)
    return teacher_jobs, jobs, draws


def measure(opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    teacher_jobs, jobs, draws = jobs_for(opts, workdir)
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(opts.concurrency) as pool:
        train_missing(teacher_jobs, pool)
        train_missing(jobs, pool)
    cfg = TrialConfig.from_dict(base_config("baseline", opts.epochs, opts.batch_size, workdir))
    points = {n: e for n, e in rungs.schedule_points(cfg).items() if e < opts.epochs}
    table, runs = {}, {}
    for mode, mode_draws in draws.items():
        loaded = [[json.loads(Path(p).read_text()) for p in paths] for paths in mode_draws]
        runs[mode] = loaded
        per_point = {}
        for name, epoch in points.items():
            per_draw = [fidelity(draw_runs, epoch) for draw_runs in loaded]
            per_point[name] = {"pooled": pooled(per_draw), "draws": per_draw}
        table[mode] = per_point
    return {
        "epochs": opts.epochs,
        "batch_size": opts.batch_size,
        "configs": opts.configs,
        "draws": opts.draws,
        "seed": opts.seed,
        "points": points,
        "fidelity": table,
        "runs": runs,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "unit_wall_seconds": round(
            sum(json.loads(Path(p).read_text())["wall_seconds"] for _, p, _ in jobs), 1
        ),
    }


def _interval(cell: Mapping[str, Any]) -> str:
    if cell["rho"] is None:
        return "n/a"
    if cell.get("low") is None:
        return f"{cell['rho']:+.2f}"
    return f"{cell['rho']:+.2f} [{cell['low']:+.2f}, {cell['high']:+.2f}]"


def markdown(result: Mapping[str, Any]) -> str:
    """Per mode and point: the pooled rho [95% CI], then per draw how often the final best was
    kept and the worst regret."""
    points = result["points"]
    head = "| mode | " + " | ".join(f"{n} (ep {e})" for n, e in points.items()) + " |"
    lines = [head, "|" + "---|" * (len(points) + 1)]
    for mode, row in result["fidelity"].items():
        cells = [_interval(c["pooled"]) for c in row.values()]
        lines.append(f"| {mode} rho [95% CI] | " + " | ".join(cells) + " |")
        kept = [
            f"kept {sum(d['survives'] for d in c['draws'])}/{len(c['draws'])}, "
            f"regret ≤ {max(d['regret'] for d in c['draws']):.1f}"
            for c in row.values()
        ]
        lines.append(f"| {mode} best kept, regret (pp) | " + " | ".join(kept) + " |")
    lines.append(
        f"\n{result['draws']} draws x {result['configs']} configurations per mode from the "
        f"shipped spaces, {result['epochs']} epochs; rho pooled over the draws in Fisher z."
    )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--epochs", type=int, default=10, help="the full schedule (default 10)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--configs", type=int, default=16, help="per draw (default 16)")
    parser.add_argument("--draws", type=int, default=3, help="per mode (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="of the first draw")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument(
        "--workdir",
        default=str(Path.home() / "tfkd-rungs"),
        help="trained configurations (resumable) and data (default: %(default)s)",
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--json", action="store_true", help="also print the JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = build_parser().parse_args(argv)
    for name in ("epochs", "configs", "draws", "concurrency"):
        if getattr(opts, name) < 1:
            print(f"rung_fidelity.py: error: --{name} must be at least 1", file=sys.stderr)
            return 2
    out = Path(opts.out)
    result = measure(opts, Path(opts.workdir).resolve())
    result["command"] = "python benchmarks/rung_fidelity.py " + " ".join(argv)
    table = markdown(result)
    atomic.write_text(out / "rung_fidelity.json", json.dumps(result, indent=1))
    atomic.write_text(out / "rung_fidelity.md", table)
    print(table)
    if opts.json:
        print(json.dumps(result["fidelity"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
