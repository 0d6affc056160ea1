"""What a sweep costs beyond its training, from 8 to 256 trials, beside a bare Ray Tune script.

    python benchmarks/sweep_scale.py [--sizes 8 64 256] [--samplers random optuna gp]
        [--stores sqlite server untracked] [--epochs 1] [--fake-size 128] [--cpus 2]
        [--cpus-per-trial 0.25] [--only SIZE=SAMPLER/STORE ...] [--out DIR]

Every sweep is `tfkd tune --mode tfkd_reg --dataset fake --model resnet8` (short trials: the
smallest model, `--fake-size` images, `--epochs` epochs, so that training is a small part), run
in its own process on its own local Ray (`--cpus` CPUs, `--cpus-per-trial` each: 8 trials fit at
once by default), through `tfkd.cli.tune.main`, the command's own code path. Beside each tfkd
sweep the same number of trials runs through a bare Ray Tune script (`bare_trainable`): the same
training (`tfkd.core.train.run_trial` on the same data, shared through the object store), the
same sampler (Ray's random search or OptunaSearch with Optuna's TPE or GP sampler) and the same
number of trials at once, reporting once at the end: no checkpoints, no tracking, no status. The
bare script reuses its actors between trials as tfkd does; `bare-fresh` (Ray's default) starts
a new actor, a new process, for every trial. `untracked` (not run by default) is `tfkd tune
--no-tracking`: everything tfkd does but MLflow, an ablation that splits tfkd's own cost into its
tracking and the rest (checkpoints, the trial's record, status, summary); its rows count against
no target.

Measured per sweep (JSON and a Markdown table, with the machine):

  wall_s            from the process' start to the command's return (interpreter, imports and
                    Ray's start included; the tracking store exists already, as it does from a
                    user's second sweep on: `store`)
  to_first_trial_s  the command's start to its first trial's start (checks, dataset, Ray)
  trials_s          the first trial's start to the last one's end
  vs_bare           wall_s / the bare script's wall_s with the same sampler and size
  own_core_s        (wall_s - bare wall_s) x cpus / trials: what tfkd adds per trial
  driver_cpu_s      the driver process' CPU seconds (user + system) per trial
  startup_first_s   the first trial's start to its first report, less that epoch's compute
  startup_median_s  the same, median over trials (actors reused: no new process per trial)
  proposal_max_s    the sampler's longest proposal (Searcher.suggest, timed on the driver)
  proposal_p50_s    its median proposal
  run_closed_s      a trial's end (Tune) to its MLflow run's end time, median and max
  redraw_max_ms     the status table's longest redraw (render), in milliseconds
  end_s             the last trial's end to the command's return (summary, files, plots)
  peak_rss_mb       the driver's peak resident memory
  lines             lines the command printed
  lost              epochs Tune saw that MLflow lacks or holds twice, plus writes set aside
  max_running       the most trials running at once (slots filled)

Targets (issue "sweeps of hundreds of trials"): vs_bare <= 1.2; own_core_s <= 1; from 8 to 256
trials driver_cpu_s and startup_median_s grow <= 1.5x; proposal_max_s < 1 at 256 trials; end_s
< 30 at 256 trials; lost = 0. The figures are in docs/performance.md ("Sweeps of hundreds of
trials").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

REPO = Path(__file__).resolve().parent.parent
SIZES = (8, 64, 256)
SAMPLERS = ("random", "optuna", "gp")
STORES = ("sqlite", "server")
# an ablation, not a default: `tfkd tune --no-tracking` (checkpoints, status, summary; no MLflow),
# which splits tfkd's own cost into its tracking and the rest; never counted against the targets
UNTRACKED = "untracked"
MODE, DATASET, MODEL = "tfkd_reg", "fake", "resnet8"


@dataclass(frozen=True)
class Case:
    """One sweep of the benchmark: its size, sampler, and store (bare: Ray Tune alone)."""

    size: int
    sampler: str
    store: str  # sqlite, server, untracked, bare (Ray Tune alone), bare-fresh (new actors)

    @property
    def label(self) -> str:
        return f"{self.size}={self.sampler}/{self.store}"

    @classmethod
    def parse(cls, text: str) -> Case:
        size, _, rest = text.partition("=")
        sampler, _, store = rest.partition("/")
        return cls(int(size), sampler, store)


# ---------------------------------------------------------------- what the driver records


class Timeline(tune.Callback):
    """Each trial's start, first report and end as the driver saw them, and how many ran at
    once."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.first: dict[str, tuple[float, float]] = {}  # time, that epoch's own seconds
        self.ended: dict[str, float] = {}
        self.epochs: dict[str, int] = {}
        self.running = 0
        self.max_running = 0

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.started[trial.trial_id] = time.time()
        self.running += 1
        self.max_running = max(self.max_running, self.running)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._result(trial.trial_id, result)

    def _result(self, trial_id: str, result: Mapping[str, Any]) -> None:
        if trial_id not in self.first:
            self.first[trial_id] = (time.time(), float(result.get("epoch_seconds", 0.0)))
        if "epoch" in result:
            self.epochs[trial_id] = max(self.epochs.get(trial_id, 0), int(result["epoch"]))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if trial.last_result:
            self._result(trial.trial_id, trial.last_result)
        self.ended[trial.trial_id] = time.time()
        self.running -= 1

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.ended[trial.trial_id] = time.time()
        self.running -= 1

    def startups(self) -> list[float]:
        """Start to first report less that epoch's compute, in the order the trials started."""
        order = sorted(self.started, key=self.started.__getitem__)
        return [
            self.first[t][0] - self.started[t] - self.first[t][1] for t in order if t in self.first
        ]


class Stopwatch:
    """Durations of calls to one method, wrapped in place."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def wrap(self, owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds.append(time.perf_counter() - started)

        setattr(owner, name, timed)


def phases(timeline: Timeline, started: float, returned: float) -> dict[str, float | None]:
    """The command's start to its first trial's start, the first start to the last trial's end
    (the trials), and that end to the command's return (end of sweep)."""
    if not timeline.started or not timeline.ended:
        return {"to_first_trial_s": None, "trials_s": None, "end_s": None}
    first, last = min(timeline.started.values()), max(timeline.ended.values())
    return {"to_first_trial_s": first - started, "trials_s": last - first, "end_s": returned - last}


def searcher_method(searcher: Any) -> str:
    """The method through which Tune asks a searcher for a trial's values."""
    return "next_trial" if hasattr(searcher, "next_trial") else "suggest"


def quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "max": None}
    return {"p50": round(statistics.median(values), 3), "max": round(max(values), 3)}


def driver_usage() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}


# ---------------------------------------------------------------- one tfkd sweep (child process)


def tfkd_argv(case: Case, opts: argparse.Namespace, workdir: Path, uri: str) -> list[str]:
    return [
        *("--mode", MODE, "--dataset", DATASET, "--model", MODEL),
        *("--set", f"fake_size={opts.fake_size}", "--set", "warmup_epochs=0"),
        *("--epochs", str(opts.epochs), "--num-samples", str(case.size)),
        *("--search-alg", case.sampler, "--cpus-per-trial", str(opts.cpus_per_trial)),
        *("--storage", str(workdir / "ray_results")),
        *(("--mlflow-uri", uri) if uri else ("--no-tracking",)),
        *("--name", "scale", "--data-dir", str(workdir)),
    ]


def run_tfkd(case: Case, opts: argparse.Namespace, workdir: Path, uri: str) -> dict[str, Any]:
    """`tfkd tune` in this process, its driver instrumented; its output to a file."""
    import ray

    import tfkd.cli.tune as tune_command
    from tfkd.sweep import status, tuner

    timeline, proposals, redraws = Timeline(), Stopwatch(), Stopwatch()
    original_searcher, original_run_sweep = tuner.searcher, tuner.run_sweep

    def timed_searcher(spec):
        made = original_searcher(spec)
        # on the class: Tune pickles the searcher with the experiment's state
        proposals.wrap(type(made), searcher_method(made))
        return made

    def recorded_run_sweep(spec, dataset=None):
        from dataclasses import replace

        spec = replace(spec, callbacks=(*spec.callbacks, timeline))
        result = original_run_sweep(spec, dataset)
        recorded["result"] = result
        return result

    recorded: dict[str, Any] = {}
    tuner.searcher, tuner.run_sweep = timed_searcher, recorded_run_sweep
    redraws.wrap(status.SweepStatus, "render")
    original_init = ray.init
    ray.init = lambda *a, **k: original_init(*a, **{**k, "num_cpus": opts.cpus})
    log = workdir / "tfkd.log"
    started = opts.spawned
    with log.open("w") as out, redirect_stdout(out):
        code = tune_command.main(tfkd_argv(case, opts, workdir, uri), prog="tfkd tune")
    returned = time.time()
    result = recorded.get("result")
    return {
        "code": code,
        "wall_s": returned - started,
        **phases(timeline, started, returned),
        "timeline": timeline,
        "proposals": proposals.seconds,
        "redraw_max_ms": 1000 * max(redraws.seconds, default=0.0),
        "lines": len(log.read_text().splitlines()),
        "set_aside": len(result.tracking_pending) + len(result.tracking_refused) if result else -1,
    }


def tracked_epochs(uri: str) -> dict[str, tuple[int, float]]:
    """Each trial run's epochs of val_accuracy in MLflow and its end time (s), by Tune trial id."""
    from mlflow import MlflowClient

    from tfkd.tracking.store import KIND_TAG, TRIAL, TRIAL_TAG

    client = MlflowClient(uri)
    found: dict[str, tuple[int, float]] = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=5000):
            trial = run.data.tags.get(TRIAL_TAG)
            if run.data.tags.get(KIND_TAG) != TRIAL or not trial:
                continue
            history = client.get_metric_history(run.info.run_id, "val_accuracy")
            found[trial] = (len(history), (run.info.end_time or 0) / 1000)
    return found


def measure_tfkd(case: Case, opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    ran = run_tfkd(case, opts, workdir, opts.uri)
    timeline: Timeline = ran.pop("timeline")
    tracked = tracked_epochs(opts.uri) if opts.uri else {}
    usage = driver_usage()
    lost = sum(abs(tracked.get(t, (0, 0))[0] - n) for t, n in timeline.epochs.items())
    lost = lost + max(0, ran["set_aside"]) if opts.uri else None
    closed = [
        tracked[t][1] - timeline.ended[t] for t in timeline.ended if tracked.get(t, (0, 0))[1]
    ]
    startups = timeline.startups()
    proposals = ran.pop("proposals")
    return {
        **ran,
        "trials": len(timeline.started),
        "max_running": timeline.max_running,
        "driver_cpu_s": usage["cpu_s"] / max(1, case.size),
        "peak_rss_mb": usage["peak_rss_mb"],
        "startup_first_s": startups[0] if startups else None,
        "startup_median_s": statistics.median(startups) if startups else None,
        "proposal": quantiles(proposals),
        "run_closed_s": quantiles(closed),
        "lost": lost,
    }


@contextmanager
def store(kind: str, workdir: Path) -> Iterator[str]:
    """The tracking URI of the case, ready before the clock starts, as a user's store is after
    their first sweep: a SQLite file MLflow has created (its one-time creation and migrations
    take seconds), or a real `mlflow server` on loopback over one; '' for the bare script."""
    if kind.startswith("bare") or kind == UNTRACKED:
        yield ""
        return
    from mlflow import MlflowClient

    database = f"sqlite:///{workdir / 'mlflow.db'}"
    MlflowClient(database).search_experiments()
    if kind != "server":
        yield database
        return
    port = free_port()
    with (workdir / "mlflow_server.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
            + ["--backend-store-uri", database, "--workers", "1"]
            + ["--artifacts-destination", str(workdir / "artifacts")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for(f"http://127.0.0.1:{port}/health", server)
            yield f"http://127.0.0.1:{port}"
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, server: subprocess.Popen, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the MLflow server did not answer at {url}")


# ---------------------------------------------------------------- the bare script (child process)


def bare_trainable(config: dict[str, Any], packed: Mapping[str, Any]) -> None:
    """What a user would write: train, report the result once; nothing else."""
    import torch
    from ray import tune

    from tfkd.core.data_sharing import unpack_dataset
    from tfkd.core.train import run_trial

    torch.set_num_threads(1)
    tune.report(run_trial(config, dataset=unpack_dataset(packed)))


def bare_searcher(sampler: str, seed: int):
    """Ray's random search, or OptunaSearch with the TPE or GP sampler at Optuna's defaults."""
    if sampler == "random":
        return None
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    made = {
        "optuna": lambda: optuna.samplers.TPESampler(seed=seed),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed),
    }[sampler]()
    return OptunaSearch(sampler=made)


def measure_bare(case: Case, opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The bare script, at the same trials at once as tfkd runs for the case."""
    started = opts.spawned
    import ray
    from ray import tune

    from tfkd.core.data_sharing import pack_dataset
    from tfkd.core.train import dataset_of
    from tfkd.sweep import tuner
    from tfkd.sweep.plan import make_plan
    from tfkd.sweep.request import SweepRequest
    from tfkd.sweep.spec import SweepSpec, param_space

    request = SweepRequest(
        mode=MODE,
        dataset=DATASET,
        model=MODEL,
        epochs=opts.epochs,
        num_samples=case.size,
        search_alg=case.sampler,
        set=[f"fake_size={opts.fake_size}", "warmup_epochs=0"],
        data_dir=str(workdir),
    )
    plan = make_plan(request)
    spec = SweepSpec(
        name="bare",
        base_config=plan.config,
        space=plan.space,
        search_alg=case.sampler,
        num_samples=case.size,
        cpus_per_trial=opts.cpus_per_trial,
    )
    timeline = Timeline()
    ray.init(num_cpus=opts.cpus, include_dashboard=False, log_to_driver=False)
    try:
        slots = int(opts.cpus / opts.cpus_per_trial)
        at_once = (tuner.concurrency(spec) or slots) if tuner.model_based(spec) else slots
        searcher = bare_searcher(case.sampler, 0)
        grid = tune.Tuner(
            tune.with_resources(
                tune.with_parameters(bare_trainable, packed=pack_dataset(dataset_of(plan.config))),
                {"cpu": opts.cpus_per_trial},
            ),
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                metric="val_accuracy",
                mode="max",
                search_alg=searcher,
                num_samples=case.size,
                max_concurrent_trials=at_once,
                reuse_actors=case.store == "bare",  # bare-fresh: Ray's default, an actor each
            ),
            run_config=tune.RunConfig(
                storage_path=str(workdir / "bare_results"),
                callbacks=[timeline],
                verbose=0,
            ),
        ).fit()
        errors = len(grid.errors)
    finally:
        ray.shutdown()
    returned = time.time()
    usage = driver_usage()
    return {
        "code": 1 if errors else 0,
        "wall_s": returned - started,
        **phases(timeline, started, returned),
        "trials": len(timeline.started),
        "max_running": timeline.max_running,
        "driver_cpu_s": usage["cpu_s"] / max(1, case.size),
        "peak_rss_mb": usage["peak_rss_mb"],
    }


# ---------------------------------------------------------------- the parent: cases, table, JSON


def run_case(case: Case, opts: argparse.Namespace) -> dict[str, Any]:
    """One case in a fresh process (its own Ray, its own driver memory), its figures back."""
    with (
        tempfile.TemporaryDirectory(prefix="sweep-scale-") as tmp,
        store(case.store, Path(tmp)) as uri,
    ):
        answer = Path(tmp) / "answer.json"
        command = [sys.executable, __file__, "--child", case.label, "--workdir", tmp]
        command += ["--answer", str(answer), "--uri", uri, *passed_options(opts)]
        command += ["--spawned", repr(time.time())]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not answer.exists():
            raise RuntimeError(f"{case.label} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        return json.loads(answer.read_text())


def passed_options(opts: argparse.Namespace) -> list[str]:
    return [
        *("--epochs", str(opts.epochs), "--fake-size", str(opts.fake_size)),
        *("--cpus", str(opts.cpus), "--cpus-per-trial", str(opts.cpus_per_trial)),
    ]


def cases_of(opts: argparse.Namespace) -> list[Case]:
    """Every size x sampler: bare once, then tfkd on each store (side by side, in that order)."""
    if opts.only:
        return [Case.parse(text) for text in opts.only]
    return [
        Case(size, sampler, store)
        for size in opts.sizes
        for sampler in opts.samplers
        for store in ("bare", *opts.stores)
    ]


def is_tfkd(row: Mapping[str, Any]) -> bool:
    return not row["store"].startswith("bare")


def with_ratios(rows: list[dict[str, Any]], cpus: int) -> list[dict[str, Any]]:
    """vs_bare and own_core_s for every tfkd row whose bare twin ran."""
    bare = {(r["size"], r["sampler"]): r for r in rows if r["store"] == "bare"}
    for row in rows:
        twin = bare.get((row["size"], row["sampler"]))
        if is_tfkd(row) and twin:
            row["vs_bare"] = round(row["wall_s"] / twin["wall_s"], 2)
            row["own_core_s"] = round((row["wall_s"] - twin["wall_s"]) * cpus / row["size"], 2)
    return rows


def growth(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    """key at the largest size / key at the smallest, per sampler/store, between sweeps that ran
    as many trials at once (a model-based 8-trial sweep runs 2 at once, a larger one 8: each of
    its trials has a core to itself, which is not a smaller cost per trial)."""
    found: dict[str, float] = {}
    series: dict[str, dict[int, float]] = {}
    for row in rows:
        if row["store"] in STORES and row.get(key):
            label = f"{row['sampler']}/{row['store']}, {row['max_running']} at once"
            series.setdefault(label, {})[row["size"]] = row[key]
    for label, by_size in series.items():
        if len(by_size) > 1:
            found[label] = round(by_size[max(by_size)] / by_size[min(by_size)], 2)
    return found


COLUMNS = (
    ("size", "trials"),
    ("sampler", "sampler"),
    ("store", "store"),
    ("wall_s", "wall s"),
    ("vs_bare", "x bare"),
    ("own_core_s", "own core-s/trial"),
    ("driver_cpu_s", "driver CPU s/trial"),
    ("to_first_trial_s", "to 1st trial s"),
    ("trials_s", "trials s"),
    ("startup_first_s", "start-up first s"),
    ("startup_median_s", "start-up median s"),
    ("proposal_max_s", "proposal max s"),
    ("run_closed_p50_s", "run closed p50 s"),
    ("redraw_max_ms", "redraw max ms"),
    ("end_s", "end s"),
    ("peak_rss_mb", "driver MB"),
    ("lines", "lines"),
    ("max_running", "max at once"),
    ("lost", "lost"),
)


def flat(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row with its nested quantiles as columns, numbers rounded."""
    out = {k: v for k, v in row.items() if not isinstance(v, dict)}
    for key, nested, part in (
        ("proposal", "proposal_max_s", "max"),
        ("run_closed_s", "run_closed_p50_s", "p50"),
    ):
        if isinstance(row.get(key), dict):
            out[nested] = row[key][part]
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = ["-" if row.get(key) is None else str(row[key]) for key, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine(cpus: int) -> dict[str, Any]:
    import torch

    return {
        "processor": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "ray_cpus": cpus,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def worst(values: list[float]) -> float | None:
    return max(values) if values else None


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target of the issue with its worst measured value over the rows, and whether it is
    met (None: nothing measured it)."""
    tfkd_rows = [r for r in rows if r["store"] in STORES]
    largest = max((r["size"] for r in tfkd_rows), default=0)
    at_largest = [r for r in tfkd_rows if r["size"] == largest]
    measured = [
        (
            "sweep wall time / the bare script's",
            [r["vs_bare"] for r in tfkd_rows if "vs_bare" in r],
            1.2,
        ),
        (
            "tfkd's own core-seconds per trial",
            [r["own_core_s"] for r in tfkd_rows if "own_core_s" in r],
            1.0,
        ),
        (
            "driver CPU per trial, largest / smallest size",
            list(growth(rows, "driver_cpu_s").values()),
            1.5,
        ),
        (
            "median start-up per trial, largest / smallest size",
            list(growth(rows, "startup_median_s").values()),
            1.5,
        ),
        (
            f"longest proposal at {largest} trials (s)",
            [r.get("proposal_max_s") or 0.0 for r in at_largest],
            1.0,
        ),
        (
            f"end of sweep at {largest} trials (s)",
            [r["end_s"] for r in at_largest if "end_s" in r],
            30.0,
        ),
        (
            "epochs or writes lost or set aside",
            [float(r["lost"]) for r in tfkd_rows if r.get("lost") is not None],
            0.0,
        ),
    ]
    return [
        {
            "target": name,
            "worst": worst(values),
            "limit": limit,
            "met": None if not values else worst(values) <= limit,
        }
        for name, values, limit in measured
    ]


def child(opts: argparse.Namespace) -> None:
    case = Case.parse(opts.child)
    workdir = Path(opts.workdir)
    measure = measure_bare if case.store.startswith("bare") else measure_tfkd
    figures = measure(case, opts, workdir)
    row = {"size": case.size, "sampler": case.sampler, "store": case.store, **figures}
    Path(opts.answer).write_text(json.dumps(row, default=float))


def parent(opts: argparse.Namespace) -> None:
    rows = []
    for case in cases_of(opts):
        row = flat(run_case(case, opts))
        rows.append(row)
        print(f"{case.label}: {json.dumps(row)}", flush=True)
    result = {
        "machine": machine(opts.cpus),
        "command": "python benchmarks/sweep_scale.py " + " ".join(sys.argv[1:]),
        "commit": commit(),
        "settings": {
            "mode": MODE,
            "dataset": DATASET,
            "model": MODEL,
            "epochs": opts.epochs,
            "fake_size": opts.fake_size,
            "cpus_per_trial": opts.cpus_per_trial,
        },
        "rows": rows,
    }
    write(scored(result, opts.cpus), Path(opts.out), opts.name)


def scored(result: dict[str, Any], cpus: int) -> dict[str, Any]:
    """The result with each row's ratios to its bare twin and the targets, from its rows."""
    rows = with_ratios(result["rows"], cpus)
    return {**result, "rows": rows, "targets": targets(rows)}


def write(result: dict[str, Any], out: Path, name: str) -> None:
    table = markdown(result["rows"])
    print(table)
    for target in result["targets"]:
        print(f"{target['target']}: {target['worst']} (limit {target['limit']}): {target['met']}")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(table + "\n")


def rescore(path: Path) -> None:
    """Recompute an earlier result's ratios and targets with today's definitions (its measured
    figures are kept as they are)."""
    result = json.loads(path.read_text())
    write(scored(result, result["machine"]["ray_cpus"]), path.parent, path.stem)


def commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    parser.add_argument("--stores", nargs="+", default=list(STORES), choices=(*STORES, UNTRACKED))
    parser.add_argument("--only", nargs="+", help="cases as SIZE=SAMPLER/STORE (store: bare too)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--fake-size", type=int, default=128)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--cpus-per-trial", type=float, default=0.25)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--name", default="sweep_scale", help="the result files' name")
    parser.add_argument("--rescore", help="a result JSON: recompute its ratios and targets")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--answer", help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--spawned", type=float, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    opts = parse(argv)
    if opts.rescore:
        rescore(Path(opts.rescore))
    else:
        (child if opts.child else parent)(opts)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
