"""tfkd.analysis and its commands: best configs, reproductions, the report and the paper suite.

End to end on digits (real data, 2 CPUs): a small sweep with tune_main.py, then best-configs,
reproduce (2 seeds under holdout, 1 under the paper's protocol), a 2-trial paper-protocol sweep
ranked on the test maximum, and report, each run as a user would; rerunning reproduce skips what
is done.
Unit tests build MLflow stores and Ray folders by hand for the cases a real sweep cannot force
(an early-stopped trial with the best validation accuracy) and for bad input.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from scipy import stats as scipy_stats

from tfkd.analysis import (
    importance,
    paper,
    plots,
    report,
    reproduce,
    results,
    sweeps,
)
from tfkd.analysis.common import config_hash
from tfkd.cli.commands import best_configs as best_configs_command
from tfkd.cli.commands import paper_suite as paper_suite_command
from tfkd.cli.commands import report as report_command
from tfkd.cli.commands import reproduce as reproduce_command
from tfkd.cli.flags import EXIT_USAGE
from tfkd.core.config import TrialConfig

from conftest import (
    REPO,
    TUNE_MAIN,
    assert_ok,
    assert_one_line,
    clean_env,
    cli_args,
    sqlite_uri,
    test_accuracy_of_weights,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SWEEP = "baseline-digits-resnet8"
LSR_SWEEP = "lsr-digits-resnet8"  # one fixed trial: a row that pairs with the baseline's
PAPER_SWEEP = "baseline-digits-resnet8-paper"  # tune_main --protocol paper, in its own experiment
SEEDS, REPRO_EPOCHS, SWEEP_EPOCHS = 2, 2, 2
PAPER_SEEDS = 1


# ---------------------------------------------------------------- helpers


def run(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """A command run as a user would, from the repository root."""
    return subprocess.run(
        [sys.executable, *argv],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def config(**values: Any) -> dict[str, Any]:
    base = {"mode": "baseline", "model": "resnet8", "dataset": "digits", "epochs": 4}
    return TrialConfig.from_dict({**base, **values}).to_dict()


def add_trial(
    client: MlflowClient,
    experiment: str,
    parent: str,
    trial_id: str,
    curve: list[float],
    status: str = "FINISHED",
    stopped_early: str | None = None,
    metric: str = "val_accuracy",
    params: dict[str, Any] | None = None,
    **values: Any,
) -> str:
    """A child run like tfkd's: params = the config (or `params`, as given), `metric` per epoch
    with step = epoch."""
    tags = {"mlflow.parentRunId": parent, "tfkd.kind": "trial", "tfkd.ray_trial_id": trial_id}
    if stopped_early is not None:
        tags["stopped_early"] = stopped_early
    run_id = client.create_run(experiment, run_name=f"trial_{trial_id}", tags=tags).info.run_id
    now = int(time.time() * 1000)
    metrics = [
        Metric(key, value, now, epoch)
        for epoch, accuracy in enumerate(curve, start=1)
        for key, value in (("epoch", float(epoch)), (metric, accuracy))
    ]
    params = [Param(k, str(v)) for k, v in (params or config(**values)).items()]
    client.log_batch(run_id, metrics=metrics, params=params)
    client.set_terminated(run_id, status=status)
    return run_id


def make_sweep(
    folder: Path, name: str = "hand-made", epochs: int = 4, **more_tags: str
) -> tuple[str, Any, str]:
    """An empty finished sweep (parent run) in a fresh SQLite store: (uri, client, parent id)."""
    uri = sqlite_uri(folder)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(name, artifact_location=(folder / "art").as_uri())
    tags = {"tfkd.kind": "sweep", "epochs": str(epochs), "mode": "baseline", **more_tags}
    parent = client.create_run(experiment, run_name=name, tags=tags).info.run_id
    return uri, client, parent


# ---------------------------------------------------------------- the paper's table


@pytest.mark.parametrize(
    ("mode", "teacher", "key"),
    [
        ("baseline", "", ""),
        ("tfkd_reg", "anything", ""),
        ("tfkd_self", "self", "self"),
        ("tfkd_self", "resnet18@best", "self"),
        ("kd", "resnet18", "resnet18"),
        ("kd", "resnet18@best", "resnet18"),
        ("dekd", "resnet18@epoch1(15.48%)", "resnet18@epoch-1"),
        ("dekd", "resnet18@epoch-1", "resnet18@epoch-1"),
        ("dekd", "resnet50@epoch50(45.82%)", "resnet50@epoch-50"),
    ],
)
def test_teacher_normaliser(mode, teacher, key):
    assert paper.teacher_key(mode, teacher) == key


@pytest.mark.parametrize(
    ("row", "accuracy"),
    [
        (("cifar100", "resnet18", "tfkd_reg", ""), 77.36),
        (("cifar100", "resnet18", "tfkd_self", "resnet18@best"), 77.10),
        (("cifar100", "mobilenet_v2", "dekd", "resnet18@epoch-1"), 70.65),
        (("cifar100", "resnet18", "dekd", "resnext29@epoch-50"), 77.28),
        (("cifar100", "resnet18", "kd", "resnext29@best"), 77.84),
        (("cifar10", "cnn", "rekd", "mobilenet_v2"), 87.45),
    ],
)
def test_paper_match(row, accuracy):
    assert paper.match(*row).accuracy == pytest.approx(accuracy)


@pytest.mark.parametrize(
    "row",
    [
        ("digits", "resnet8", "baseline", ""),
        ("cifar100", "mobilenet_v2", "dekd", "resnet18@epoch-50"),  # another snapshot
        ("cifar100", "resnet18", "kd", "resnet50@epoch-1"),
    ],
)
def test_paper_has_no_row(row):
    assert paper.match(*row) is None


def test_paper_lookups_are_exact_where_the_paper_repeats_a_row():
    # GoogLeNet's baseline is 78.72 in T5 (self-training) and 78.15 in T9 (Tf-KD_reg, LSR, KD)
    with pytest.raises(paper.AmbiguousRow, match="T5, T9"):
        paper.match("cifar100", "googlenet", "baseline", "")
    assert paper.match("cifar100", "googlenet", "baseline", "", table="T9").accuracy == 78.15
    assert paper.match("cifar100", "googlenet", "baseline", "", table="T5").accuracy == 78.72
    assert paper.match("cifar100", "googlenet", "kd", "resnext29@best").accuracy == 78.84
    repeated = {}
    for row in paper.load():
        repeated.setdefault(row.key, []).append(row.table)
    assert {k: v for k, v in repeated.items() if len(v) > 1} == {
        ("cifar100", "googlenet", "baseline", ""): ["T5", "T9"]
    }  # every other combination has one row, so its lookup is exact


def googlenet(mode: str, seed: int, accuracy: float, protocol: str = "paper", **kw: Any):
    values = {"experiment": mode, "sweep": mode, "config_hash": f"{mode}-{protocol}",
              "rank": "1", "dataset": "cifar100", "model": "googlenet", "mode": mode,
              "teacher": "", "epochs": 200, "seed": seed, "test_accuracy": accuracy,
              "test_ece": 2.0, "protocol": protocol, **kw}  # fmt: skip
    return results.Reproduction(**values)


def test_report_compares_with_the_paper_like_for_like_and_its_own_baseline():
    frame = results.results_table(
        [
            googlenet("tfkd_reg", 0, 79.0),
            googlenet("tfkd_reg", 1, 79.6),
            googlenet("tfkd_reg", 0, 78.4, "holdout"),
            googlenet("tfkd_reg", 1, 78.6, "holdout"),
            googlenet("baseline", 0, 78.0),
        ]
    )
    rows = {(r["mode"], r["protocol"]): r for r in frame.to_dict("records")}
    paper_row, holdout_row = rows["tfkd_reg", "paper"], rows["tfkd_reg", "holdout"]
    assert paper_row["paper_acc"] == 79.22 and paper_row["paper_baseline"] == 78.15  # both T9
    assert paper_row["diff_vs_paper"] == pytest.approx(79.3 - 79.22)
    assert holdout_row["paper_acc"] == 79.22 and math.isnan(holdout_row["diff_vs_paper"])
    assert paper_row["diff_vs_holdout"] == pytest.approx(79.3 - 78.5)  # what the protocol makes
    assert math.isnan(holdout_row["diff_vs_holdout"])
    baseline = rows["baseline", "paper"]  # in two tables: no single number, both named
    assert math.isnan(baseline["paper_acc"]) and baseline["paper_table"] == "T5/T9"
    text = results.markdown(frame)
    assert "| 79.22 (T9, +1.07 vs 78.15) | +0.08 |" in text and "several: T5/T9" in text


def test_vs_baseline_pairs_only_the_same_dataset_model_schedule_and_protocol():
    frame = results.results_table(
        [
            googlenet("baseline", 0, 78.0, epochs=20, config_hash="b20"),
            googlenet("baseline", 1, 78.2, epochs=20, config_hash="b20"),
            googlenet("lsr", 0, 79.0, epochs=200, config_hash="l200"),  # no 200-epoch baseline
            googlenet("lsr", 0, 79.0, epochs=20, protocol="holdout", config_hash="lh"),
            googlenet("lsr", 0, 78.5, epochs=20, config_hash="l20"),
            googlenet("lsr", 1, 78.7, epochs=20, config_hash="l20"),
        ]
    )
    rows = {(r["epochs"], r["protocol"]): r for r in frame.to_dict("records") if r["mode"] == "lsr"}
    assert rows[20, "paper"]["vs_baseline"] == pytest.approx(78.6 - 78.1)
    assert math.isnan(rows[200, "paper"]["vs_baseline"])  # another schedule: not paired
    assert math.isnan(rows[20, "holdout"]["vs_baseline"])  # another protocol: not paired


def test_analysis_keeps_its_own_paper_table_with_comments():
    text = paper.PAPER_CSV.read_text()
    assert text.startswith("#") and "dataset,model,mode,teacher,accuracy,std,table" in text
    # the Tf-KD paper 92, cskd/zipf_ls 3, dkd 11, logit std. 28, PS-KD's table 5 (pskd 3, cskd 2)
    assert len(paper.load()) == 139
    pskd = {row.model: row.accuracy for row in paper.load() if row.table == "PSKD-README"
            and row.mode == "pskd"}  # fmt: skip
    errors = {"PreActResNet18": 20.82, "densenet121": 18.73, "resnext29": 17.28}  # top-1 error
    assert pskd == pytest.approx({model: 100 - e for model, e in errors.items()})


def test_results_table_compares_with_the_paper():
    def repro(mode: str, teacher: str, seed: int, accuracy: float) -> results.Reproduction:
        return results.Reproduction(
            experiment=mode, sweep=mode, config_hash=mode, rank="1", dataset="cifar100",
            model="mobilenet_v2", mode=mode, teacher=teacher, epochs=200, seed=seed,
            test_accuracy=accuracy, test_ece=2.0, protocol="paper",
        )  # fmt: skip

    frame = results.results_table(
        [
            repro("dekd", "resnet18@epoch-1", 0, 70.0),
            repro("dekd", "resnet18@epoch-1", 1, 72.0),
            repro("lsr", "", 0, 60.0),
        ]
    )
    dekd, lsr = frame.to_dict("records")
    assert (dekd["seeds"], dekd["test_acc_mean"], dekd["paper_acc"]) == (2, 71.0, 70.65)
    assert dekd["diff_vs_paper"] == pytest.approx(0.35) and dekd["paper_table"] == "T4"
    assert lsr["paper_acc"] == 69.32 and lsr["test_acc_std"] != lsr["test_acc_std"]  # NaN
    assert "| cifar100 | mobilenet_v2 | dekd | resnet18@epoch-1 |" in results.markdown(frame)
    low, high = scipy_stats.t.interval(0.95, 1, loc=71.0, scale=statistics.stdev([70, 72]) / 2**0.5)
    assert f"71.00 [{low:.2f}, {high:.2f}]" in results.markdown(frame)
    assert "+0.35" in results.markdown(frame)


def test_config_hash_ignores_seed_and_place_not_hyperparameters():
    a = config(seed=0, data_dir="/a")
    assert config_hash(a) == config_hash(config(seed=5, data_dir="/b"))
    assert config_hash(a) != config_hash(config(lr=0.2))
    assert config_hash(a) == config_hash({k: str(v) for k, v in a.items()})  # MLflow params


# ---------------------------------------------------------------- best configs


def test_best_configs_excludes_early_stopped_trials(tmp_path):
    uri, client, parent = make_sweep(tmp_path)
    experiment = client.get_experiment_by_name("hand-made").experiment_id
    full = add_trial(client, experiment, parent, "full", [20, 30, 40, 50], stopped_early="false")
    add_trial(client, experiment, parent, "asha", [60, 90], stopped_early="true", lr=0.2)
    add_trial(client, experiment, parent, "killed", [70, 80], status="KILLED", lr=0.3)
    add_trial(client, experiment, parent, "failed", [1, 2, 3, 95], status="FAILED", lr=0.4)
    second = add_trial(client, experiment, parent, "ok", [10, 20, 30, 45], lr=0.05)
    out = tmp_path / "best.yaml"
    code = best_configs_command.main(
        ["--experiment", "hand-made", "--top", "5", "--mlflow-uri", uri, "--out", str(out)]
    )
    assert code == 0
    document = yaml.safe_load(out.read_text())
    assert [(d["rank"], d["run_id"], d["trial_id"]) for d in document] == [
        (1, full, "full"),
        (2, second, "ok"),
    ]
    assert document[0]["val_accuracy"] == 50 and document[0]["epoch"] == 4
    assert document[0]["metric"] == "val_accuracy" and document[0]["score"] == 50
    assert document[0]["config"] == config()
    assert document[1]["config"]["lr"] == 0.05


def test_a_config_searched_in_loss_weights_is_the_one_chosen_and_reproduced(tmp_path):
    """A KD-type trial logs the searched ce_weight and kl_weight, not the alpha and multiplier
    they set: best_configs and reproduce must train that loss, not the mode's defaults."""
    uri, client, parent = make_sweep(tmp_path, mode="tfkd_reg")
    experiment = client.get_experiment_by_name("hand-made").experiment_id
    searched = {"temperature": 1.1, "ce_weight": 0.33, "kl_weight": 99.0}
    given = {"mode": "tfkd_reg", "model": "resnet8", "dataset": "digits", "epochs": 4, **searched}
    add_trial(client, experiment, parent, "w", [10, 20, 30, 40], params=given)
    out = tmp_path / "best.yaml"
    assert (
        best_configs_command.main(
            ["--experiment", "hand-made", "--mlflow-uri", uri, "--out", str(out)]
        )
        == 0
    )
    (chosen,) = yaml.safe_load(out.read_text())
    sweep = sweeps.load("hand-made", uri, str(tmp_path / "ray_results"))
    (job, *_) = reproduce.plan_jobs(
        sweep.trials, seeds=[1000, 1001], epochs=4, data_dir=None, protocol="holdout"
    )
    for trained in (chosen["config"], job.config):
        assert trained["temperature"] == 1.1
        assert 1 - trained["alpha"] == pytest.approx(0.33)  # the CE's weight
        assert trained["alpha"] * trained["multiplier"] == pytest.approx(99.0)  # the KL's


def write_ray_trial(
    folder: Path, trial_id: str, curve: list[float], metric: str = "val_accuracy", **values: Any
) -> None:
    """A trial folder as Ray Tune writes it: params.json and result.json (JSON lines)."""
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(config(**values)))
    lines = [
        json.dumps({"trial_id": trial_id, "epoch": e, metric: v})
        for e, v in enumerate(curve, start=1)
    ]
    (folder / "result.json").write_text("\n".join(lines) + "\n")


def test_best_configs_falls_back_to_the_ray_folder(tmp_path):
    sweep = tmp_path / "ray_results" / "from-ray"
    write_ray_trial(sweep / "trial_a", "a", [10, 20, 30, 40])
    write_ray_trial(sweep / "trial_b", "b", [50, 99], lr=0.2)  # stopped early by ASHA
    write_ray_trial(sweep / "trial_c", "c", [10, 20, 30, 44], lr=0.3)
    code = best_configs_command.main(
        [
            "--experiment",
            "from-ray",
            "--top",
            "3",
            "--mlflow-uri",
            sqlite_uri(tmp_path),
            "--storage",
            str(tmp_path / "ray_results"),
        ]
    )
    assert code == 0
    document = yaml.safe_load((sweep / "best_configs.yaml").read_text())
    assert [d["trial_id"] for d in document] == ["c", "a"]
    assert not (tmp_path / "mlflow.db").exists()  # reading never creates a store


PAPER = {"protocol": "paper", "val_fraction": 0.0}  # a --protocol paper trial's config keys
# per-epoch test accuracy of a paper sweep's trials; "asha" was stopped after 2 epochs
PAPER_TEST_CURVES = {
    "steady": [30, 41, 52, 60],
    "peaked": [35, 71, 50, 55],  # its maximum, not its last epoch, is its paper_test_accuracy
    "late": [10, 20, 40, 66],
    "asha": [50, 90],
}


def running_max(curve: list[float]) -> list[float]:
    """paper_test_accuracy per epoch: the test accuracy's maximum so far."""
    return list(itertools.accumulate(curve, max))


def expected_paper_ranking(epochs: int = 4) -> list[tuple[str, float]]:
    """(trial id, max test accuracy) of the trials that ran the full schedule, best first."""
    full = {t: max(c) for t, c in PAPER_TEST_CURVES.items() if len(c) == epochs}
    return sorted(full.items(), key=lambda item: -item[1])


def paper_sweep_in_mlflow(tmp_path: Path, **tags: str) -> tuple[str, Any, str, dict[str, str]]:
    """A finished paper-protocol sweep as tune_main logs it: (uri, client, parent, {trial: run})."""
    uri, client, parent = make_sweep(tmp_path, **tags)
    experiment = client.get_experiment_by_name("hand-made").experiment_id
    runs = {}
    for i, (trial, curve) in enumerate(PAPER_TEST_CURVES.items()):
        stopped = "true" if len(curve) < 4 else "false"
        runs[trial] = add_trial(
            client, experiment, parent, trial, running_max(curve), stopped_early=stopped,
            metric="paper_test_accuracy", lr=0.01 * (i + 1), **PAPER,
        )  # fmt: skip
        client.log_metric(runs[trial], "test_accuracy", curve[-1], step=len(curve))
    return uri, client, parent, runs


def test_best_configs_of_a_paper_sweep_ranks_on_its_test_maximum(tmp_path, capsys):
    uri, _, _, runs = paper_sweep_in_mlflow(
        tmp_path, protocol="paper", metric="paper_test_accuracy"
    )
    out = tmp_path / "best.yaml"
    argv = ["--experiment", "hand-made", "--top", "5", "--mlflow-uri", uri, "--out", str(out)]
    assert best_configs_command.main(argv) == 0
    document = yaml.safe_load(out.read_text())
    expected = expected_paper_ranking()
    assert [(d["trial_id"], d["score"]) for d in document] == expected
    assert [d["run_id"] for d in document] == [runs[t] for t, _ in expected]
    assert {d["metric"] for d in document} == {"paper_test_accuracy"}
    assert document[0]["val_accuracy"] is None  # no validation split
    assert document[0]["test_accuracy"] == PAPER_TEST_CURVES[expected[0][0]][-1]
    assert document[0]["config"]["protocol"] == "paper"
    said = capsys.readouterr().out
    assert "ranked on paper_test_accuracy (it selects on the test set" in said
    assert f"#1 trial {expected[0][0]}: paper_test_accuracy {expected[0][1]:.2f}%" in said


def test_a_paper_sweep_without_a_metric_tag_ranks_on_its_protocols_metric(tmp_path):
    """An older sweep run (no `metric` tag): its trials' configs say protocol paper."""
    uri, client, parent, _ = paper_sweep_in_mlflow(tmp_path)
    sweep = sweeps.sweep_from_run(client, client.get_run(parent))
    assert sweep.metric == "paper_test_accuracy" and sweep.selects_on_test
    assert [(t.trial_id, t.score) for t in sweeps.ranked(sweep, 5)] == expected_paper_ranking()


def test_a_paper_sweeps_history_is_its_ranking_metric_per_epoch(tmp_path):
    uri, client, parent, _ = paper_sweep_in_mlflow(tmp_path, metric="paper_test_accuracy")
    sweep = sweeps.sweep_from_run(client, client.get_run(parent), with_history=True)
    for trial in sweep.trials:
        curve = running_max(PAPER_TEST_CURVES[trial.trial_id])
        assert trial.history == dict(enumerate(curve, start=1))


def test_best_configs_of_a_paper_sweep_in_the_ray_folder(tmp_path):
    """The Ray folder keeps no sweep tags: the trials' configs say protocol paper."""
    folder = tmp_path / "ray_results" / "paper-ray"
    for trial, curve in PAPER_TEST_CURVES.items():
        write_ray_trial(
            folder / f"trial_{trial}", trial, running_max(curve), "paper_test_accuracy", **PAPER
        )
    store = ["--mlflow-uri", sqlite_uri(tmp_path), "--storage", str(tmp_path / "ray_results")]
    assert best_configs_command.main(["--experiment", "paper-ray", "--top", "5", *store]) == 0
    document = yaml.safe_load((folder / "best_configs.yaml").read_text())
    assert [(d["trial_id"], d["score"]) for d in document] == expected_paper_ranking()
    assert {d["metric"] for d in document} == {"paper_test_accuracy"}


def test_a_holdout_sweep_ranks_on_val_accuracy_not_test_accuracy(tmp_path, capsys):
    uri, client, parent = make_sweep(tmp_path, protocol="holdout", metric="val_accuracy")
    experiment = client.get_experiment_by_name("hand-made").experiment_id
    val, test = {"a": 60, "b": 50}, {"a": 40, "b": 90}
    for trial in val:
        run_id = add_trial(client, experiment, parent, trial, [10, 20, 30, val[trial]])
        client.log_metric(run_id, "test_accuracy", test[trial], step=4)
    out = tmp_path / "best.yaml"
    argv = ["--experiment", "hand-made", "--top", "2", "--mlflow-uri", uri, "--out", str(out)]
    assert best_configs_command.main(argv) == 0
    document = yaml.safe_load(out.read_text())
    by_val = sorted(val, key=lambda t: -val[t])
    assert [(d["trial_id"], d["metric"], d["score"]) for d in document] == [
        (t, "val_accuracy", val[t]) for t in by_val
    ]
    said = capsys.readouterr().out
    assert "ranked on val_accuracy" in said and "test set" not in said


def test_reproduce_says_when_it_changes_a_sweeps_protocol():
    paper_trial = sweeps.Trial("a", "", config(**PAPER), 4, 4.0)
    sweep = sweeps.Sweep("s", "s", "", 4, {}, (paper_trial,), "test", metric="paper_test_accuracy")
    assert reproduce.protocol_change(sweep, paper_trial, "paper") is None
    note = reproduce.protocol_change(sweep, paper_trial, "holdout")
    assert "searched under protocol paper (ranked on paper_test_accuracy)" in note
    assert "no validation split" in note


# ---------------------------------------------------------------- importances

SPACE = """
mode: baseline
params:
  lr: {distribution: loguniform, low: 0.01, high: 0.4}
  weight_decay: {distribution: loguniform, low: 1.0e-05, high: 0.002}
  semantics: {distribution: choice, values: [reference, paper]}
"""


def hand_sweep(
    curves: dict[str, list[float]],
    stopped: set[str] = frozenset(),
    metric: str = "val_accuracy",
) -> sweeps.Sweep:
    """A sweep of 4 epochs whose trials differ in lr (weight_decay and semantics fixed), scored
    on `metric` (`curves`: its values per epoch)."""
    trials = tuple(
        sweeps.Trial(
            trial_id=name,
            run_id="",
            config=config(lr=0.01 * (i + 1)),
            epoch=len(curve),
            score=curve[-1],
            val_accuracy=curve[-1] if metric == "val_accuracy" else None,
            stopped_early=name in stopped,
            history=dict(enumerate(curve, start=1)),
        )
        for i, (name, curve) in enumerate(curves.items())
    )
    tags = {"search_space": SPACE, "mode": "baseline", "metric": metric}
    return sweeps.Sweep("hand", "hand", "", 4, tags, trials, "test", metric=metric)


def test_importance_scores_full_schedule_trials_when_enough_ran_it():
    curves = {f"t{i}": [1, 2, 3, 40 + i] for i in range(8)}
    sweep = hand_sweep({**curves, "d": [9, 99]})
    points = importance.sweep_points(sweep)
    assert sorted(p.value for p in points.points) == [40 + i for i in range(8)]
    assert list(points.distributions) == ["lr"]  # only lr varies
    assert "epoch 4" in points.label
    assert set(importance.importances(points)) == {"lr"}


def test_no_importance_from_fewer_trials_than_fanova_supports():
    sweep = hand_sweep({f"t{i}": [1, 2, 3, 40 + i] for i in range(7)})
    with pytest.raises(importance.NotEnoughTrials, match="7 scored trials; .* at least 8"):
        importance.importances(importance.sweep_points(sweep))


def test_importance_scores_at_the_last_common_epoch_otherwise():
    sweep = hand_sweep({"a": [1, 2, 3, 40], "b": [5, 20], "c": [7, 30]}, stopped={"b", "c"})
    points = importance.sweep_points(sweep)
    assert sorted((p.trial_id, p.value, p.full_schedule) for p in points.points) == [
        ("a", 2, True),
        ("b", 20, False),
        ("c", 30, False),
    ]
    assert "epoch 2" in points.label


def test_importance_and_curves_of_a_paper_sweep_score_its_test_maximum():
    curves = {t: running_max(c) for t, c in PAPER_TEST_CURVES.items()}
    sweep = hand_sweep(curves, stopped={"asha"}, metric="paper_test_accuracy")
    points = importance.sweep_points(sweep)  # 3 ran the full schedule: scored there
    expected = expected_paper_ranking()
    assert sorted(p.value for p in points.points) == sorted(score for _, score in expected)
    assert points.metric == "paper_test_accuracy" and "epoch 4" in points.label
    assert plots._curve_trial(sweep).trial_id == expected[0][0]
    assert plots.parallel_coordinates(points).startswith(PNG_SIGNATURE)


def test_learning_curves_keep_their_title_inside_and_mark_whole_epochs(monkeypatch):
    """One panel (one mode) of a 2-epoch sweep: the title, wider than a panel, is wrapped
    inside the figure, and the epoch axis is marked at 1 and 2 (not 1.2, 1.4, ...)."""
    import pandas as pd
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figures = []
    real_png = plots.png
    monkeypatch.setattr(plots, "png", lambda fig: figures.append(fig) or real_png(fig))
    sweep = hand_sweep({"a": [10.0, 20.0], "b": [5.0, 30.0]})
    row = {"mode": "baseline", "epochs": 2, "test_acc_mean": 25.0, "test_acc_std": 1.0}
    table = pd.DataFrame([{**row, "sweep": "hand", "rank": 1, "seeds": 3}])
    assert plots.learning_curves(table, [sweep]).startswith(PNG_SIGNATURE)
    (figure,) = figures
    FigureCanvasAgg(figure).draw()  # as it was saved, on a canvas that can measure text
    (title,) = figure.texts
    box = title.get_window_extent()
    assert 0 <= box.x0 and box.x1 <= figure.bbox.width and box.y1 <= figure.bbox.height
    (axes,) = figure.axes
    low, high = axes.get_xlim()
    assert [tick for tick in axes.get_xticks() if low <= tick <= high] == [1, 2]


def test_importance_places_trials_on_the_coordinates_a_sweep_searched():
    """tfkd_reg searches smoothing (and lr_factor); a trial's MLflow params hold the searched
    smoothing, the typed config the alpha and multiplier it set at the run's K: the points are
    placed on the searched values again, on 10 classes as on 100."""
    space = (Path(TUNE_MAIN).parent / "search_spaces" / "tfkd_reg.yaml").read_text()
    tags = {"search_space": space, "mode": "tfkd_reg"}  # the tag holds the space's YAML
    for dataset in ("digits", "cifar100"):
        searched = [(0.05, 0.5), (0.2, 1.0), (0.45, 3.0)]
        trials = tuple(
            sweeps.Trial(
                trial_id=f"t{i}",
                run_id="",
                config=config(mode="tfkd_reg", dataset=dataset, smoothing=eps, lr_factor=factor),
                epoch=4,
                score=80.0 + i,
            )
            for i, (eps, factor) in enumerate(searched)
        )
        assert "smoothing" not in trials[0].config  # the typed config holds alpha, multiplier
        points = importance.sweep_points(sweeps.Sweep("reg", "reg", "", 4, tags, trials, "test"))
        assert list(points.distributions) == ["smoothing", "lr_factor"]
        placed = [p.params[name] for p in points.points for name in ("smoothing", "lr_factor")]
        assert placed == pytest.approx([value for pair in searched for value in pair])


def test_importance_reads_the_loss_weights_of_an_older_sweep():
    """Older sweeps searched ce_weight and kl_weight: their tag's space and runs stay readable."""
    searched = [(0.3, 9.0), (0.6, 0.5), (0.9, 40.0)]
    trials = tuple(
        sweeps.Trial(
            trial_id=f"t{i}",
            run_id="",
            config=config(mode="tfkd_reg", temperature=4, ce_weight=ce, kl_weight=kl),
            epoch=4,
            score=80.0 + i,
        )
        for i, (ce, kl) in enumerate(searched)
    )
    old_space = (
        "mode: tfkd_reg\nparams:\n"
        "  temperature: {distribution: loguniform, low: 1, high: 40}\n"
        "  ce_weight: {distribution: loguniform, low: 0.05, high: 0.95}\n"
        "  kl_weight: {distribution: loguniform, low: 0.1, high: 100}\n"
        "defaults: {temperature: 20, alpha: 0.95, correct_prob: 0.99, multiplier: 1.0}\n"
    )
    tags = {"search_space": old_space, "mode": "tfkd_reg"}
    points = importance.sweep_points(sweeps.Sweep("reg", "reg", "", 4, tags, trials, "test"))
    assert list(points.distributions) == ["ce_weight", "kl_weight"]  # temperature did not vary
    placed = [p.params[name] for p in points.points for name in ("ce_weight", "kl_weight")]
    assert placed == pytest.approx([weight for pair in searched for weight in pair])


def test_sweep_plots_are_skipped_with_a_note_when_they_cannot_be_drawn():
    files, note = report.sweep_figures(hand_sweep({"a": [1, 1, 1, 5]}))
    assert files == {} and "hand: no importance / parallel-coordinates plot" in note
    files, note = report.sweep_figures(hand_sweep({"a": [1, 2, 3, 40], "b": [1, 2, 3, 50]}))
    assert sorted(files) == ["parallel_hand.png"] and "no importance plot: 2 scored" in note
    curves = {f"t{i}": [1, 2, 3, 40 + i] for i in range(8)}
    files, note = report.sweep_figures(hand_sweep(curves))
    assert note is None and sorted(files) == ["importance_hand.png", "parallel_hand.png"]
    assert all(data.startswith(PNG_SIGNATURE) for data in files.values())


# ---------------------------------------------------------------- bad input


def test_unknown_experiment_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "best.yaml"
    argv = ["--experiment", "nope", "--mlflow-uri", sqlite_uri(tmp_path)]
    code = best_configs_command.main([*argv, "--storage", str(tmp_path), "--out", str(out)])
    assert code == EXIT_USAGE
    assert_one_line(capsys.readouterr().err, "no sweep 'nope'")
    assert not out.exists()
    code = reproduce_command.main([*argv, "--storage", str(tmp_path)])
    assert code == EXIT_USAGE
    assert_one_line(capsys.readouterr().err, "no sweep 'nope'")
    assert list(tmp_path.iterdir()) == []


def test_sweep_without_finished_trials_exits_2_and_writes_nothing(tmp_path, capsys):
    uri, client, parent = make_sweep(tmp_path)
    experiment = client.get_experiment_by_name("hand-made").experiment_id
    add_trial(client, experiment, parent, "asha", [60, 90], stopped_early="true")
    out = tmp_path / "best.yaml"
    capsys.readouterr()  # MLflow's own log lines from creating the store
    code = best_configs_command.main(
        ["--experiment", "hand-made", "--mlflow-uri", uri, "--out", str(out)]
    )
    assert code == EXIT_USAGE
    assert_one_line(capsys.readouterr().err, "hand-made", "full schedule")
    assert not out.exists()


def test_report_without_reproductions_exits_2_and_writes_nothing(tmp_path, capsys):
    uri, _, _ = make_sweep(tmp_path)
    out = tmp_path / "reports"
    capsys.readouterr()  # MLflow's own log lines from creating the store
    code = report_command.main(["--mlflow-uri", uri, "--out", str(out)])
    assert code == EXIT_USAGE
    assert_one_line(capsys.readouterr().err, "no finished reproductions")
    code = report_command.main(["--mlflow-uri", uri, "--out", str(out), "--experiment", "other"])
    assert code == EXIT_USAGE
    assert_one_line(capsys.readouterr().err, "--experiment other")
    assert not out.exists()
    assert MlflowClient(tracking_uri=uri).get_experiment_by_name(report.REPORT_EXPERIMENT) is None


def test_resume_without_an_interrupted_reproduction_exits_2(tmp_path, capsys):
    uri, client, parent = make_sweep(tmp_path)
    experiment = client.get_experiment_by_name("hand-made").experiment_id
    add_trial(client, experiment, parent, "full", [20, 30, 40, 50])
    argv = ["--experiment", "hand-made", "--resume", "--storage", str(tmp_path / "ray")]
    capsys.readouterr()  # MLflow's own log lines from creating the store
    assert reproduce_command.main([*argv, "--mlflow-uri", uri]) == EXIT_USAGE
    assert_one_line(capsys.readouterr().err, "--resume", "reproduce-hand-made")
    assert client.search_runs([experiment], "tags.`tfkd.kind` = 'reproduction-set'") == []
    assert not (tmp_path / "ray").exists()


def test_reproduce_help_shows_experiment_as_required():
    usage = " ".join(reproduce_command.build_parser().format_usage().split())
    assert " --experiment NAME" in usage and "[--experiment" not in usage
    assert "[--sweep NAME]" in usage


def test_analysis_says_which_of_the_experiments_sweeps_it_reads(tmp_path, capsys):
    """Three sweeps share an experiment: the newest finished one is read unless --sweep says
    (they started a minute apart, in this order)."""
    uri = sqlite_uri(tmp_path)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("shared", artifact_location=(tmp_path / "a").as_uri())
    sweeps_made, first_start = {}, int(time.time() * 1000) - 3_600_000
    for minute, (name, curve, status) in enumerate(
        (
            ("oldest", [10, 20, 30, 50], "FINISHED"),
            ("older", [10, 20, 30, 40], "FINISHED"),
            ("newer", [10, 20, 30, 90], "KILLED"),  # interrupted
        )
    ):
        tags = {"tfkd.kind": "sweep", "epochs": "4", "mode": "baseline"}
        start = first_start + 60_000 * minute
        parent = client.create_run(experiment, run_name=name, tags=tags, start_time=start)
        sweeps_made[name] = add_trial(client, experiment, parent.info.run_id, name, curve)
        client.set_terminated(parent.info.run_id, status=status)
    capsys.readouterr()
    argv = ["--experiment", "shared", "--mlflow-uri", uri, "--out", str(tmp_path / "b.yaml")]
    assert best_configs_command.main(argv) == 0
    out = capsys.readouterr().out
    assert "reading sweep older (MLflow experiment 'shared'" in out and "FINISHED; 1 trial)" in out
    assert "2 other sweep(s): newer, oldest (pick one with --sweep NAME)" in out
    assert yaml.safe_load((tmp_path / "b.yaml").read_text())[0]["run_id"] == sweeps_made["older"]
    assert best_configs_command.main([*argv, "--sweep", "newer"]) == 0
    assert "reading sweep newer" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "b.yaml").read_text())[0]["run_id"] == sweeps_made["newer"]
    assert best_configs_command.main([*argv, "--sweep", "nope"]) == EXIT_USAGE
    assert_one_line(capsys.readouterr().err, "no sweep 'nope' in experiment 'shared'")


def test_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        reproduce_command.main(["--experiment", "x", "--seeds", "0"])
    assert exit_info.value.code == EXIT_USAGE
    assert_one_line(capsys.readouterr().err, "--seeds")


# ---------------------------------------------------------------- the paper suite


def test_paper_suite_dry_run_orders_and_skips(tmp_path, capsys):
    uri, client, parent = make_sweep(tmp_path, name="baseline-cifar100-resnet18")
    client.set_terminated(parent, status="FINISHED")
    argv = ["--dataset", "cifar100", "--models", "resnet18", "mobilenet_v2"]
    code = paper_suite_command.main(
        [*argv, "--modes", "dekd", "kd", "--mlflow-uri", uri, "--dry-run"]
    )
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if ". [" in line]
    baselines = [i for i, line in enumerate(lines) if "--mode baseline" in line]
    dekd = [line for line in lines if "--mode dekd" in line]
    reproductions = [i for i, line in enumerate(lines) if " -m tfkd reproduce " in line]
    assert baselines == list(range(len(baselines)))  # every teacher first...
    assert min(reproductions) == len(lines) - len(reproductions)  # ...reproductions last
    # De-KD teachers: one run each with the original's values (--fixed), the snapshots the rows
    # use registered together; the rows name that run. Baseline sweeps register no snapshots.
    teachers = [lines[i] for i in baselines if "--snapshot-epochs" in lines[i]]
    assert {re.search(r"--name (\S+)", line).group(1) for line in teachers} == {
        "teacher-cifar100-resnet18",
        "teacher-cifar100-resnet50",
        "teacher-cifar100-resnext29",
    }
    assert all("--fixed" in line for line in teachers)
    assert "--snapshot-epochs 1 " in [t for t in teachers if "resnet18" in t][0]
    assert "--snapshot-epochs 50 " in [t for t in teachers if "resnet50" in t][0]
    skipped = [line for line in lines if "[skip: done]" in line]
    assert len(skipped) == 1 and "--name baseline-cifar100-resnet18 " in skipped[0] + " "
    assert any("--teacher resnet18@epoch-1:teacher-cifar100-resnet18 " in line for line in dekd)
    assert any("--teacher resnet50@epoch-50:teacher-cifar100-resnet50 " in line for line in dekd)
    assert any("--name dekd-cifar100-mobilenet_v2-resnet18-epoch-1" in line for line in dekd)
    assert " -m tfkd tune " in lines[0]
    assert len(reproductions) == len([line for line in lines if "--mode kd" in line]) + len(dekd)


def test_paper_suite_plans_the_families_rows_and_names_those_it_cannot_train(tmp_path, capsys):
    """PS-KD, CS-KD and DKD rows from their authors: planned where tfkd has the architectures
    (DKD's resnet20 <- resnet56 and resnet32 <- resnet110, their teachers' baselines first),
    named in one line where it lacks them (wrn, vgg, PreAct ResNet-18)."""
    argv = ["--dataset", "cifar100", "--modes", "dkd", "pskd", "cskd", "--dry-run",
            "--mlflow-uri", sqlite_uri(tmp_path)]  # fmt: skip
    assert paper_suite_command.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    runs = [line for line in out if ". [run]" in line and " tune " in line]

    def flag(line: str, name: str) -> str:
        found = re.search(rf"--{name} (\S+)", line)
        return found.group(1) if found else ""

    named = {(flag(line, "mode"), flag(line, "model"), flag(line, "teacher")) for line in runs}
    assert named == {
        ("baseline", "resnet56", ""), ("baseline", "resnet110", ""),
        ("dkd", "resnet20", "resnet56"), ("dkd", "resnet32", "resnet110"),
        ("pskd", "densenet121", ""), ("pskd", "resnext29", ""),
        ("cskd", "resnet18", ""), ("cskd", "densenet121", ""), ("cskd", "resnext29", ""),
    }  # fmt: skip
    not_planned = [line for line in out if "not planned" in line]
    assert len(not_planned) == 1
    for row in ("dkd wrn_16_2<-wrn_40_2", "dkd vgg8<-vgg13", "pskd PreActResNet18"):
        assert row in not_planned[0]


def imagenet_plan_lines(capsys, uri: str, *extra: str) -> list[str]:
    argv = ["--dataset", "imagenet", "--mlflow-uri", uri, "--dry-run", *extra]
    assert paper_suite_command.main(argv) == 0
    return [line for line in capsys.readouterr().out.splitlines() if ". [run]" in line]


def paper_csv_value(model: str, mode: str) -> str:
    """The paper's ImageNet value as the CSV holds it, or what the plan says without one."""
    lines = paper.PAPER_CSV.read_text().splitlines()
    rows = csv.DictReader(line for line in lines if not line.startswith("#"))
    value = next(
        (r for r in rows if (r["dataset"], r["model"], r["mode"]) == ("imagenet", model, mode)),
        None,
    )
    return f"paper {float(value['accuracy']):.2f}%" if value else "no paper value"


def test_paper_suite_plans_the_seeds_imagenet_experiments_with_or_without_paper_rows(
    tmp_path, capsys, monkeypatch
):
    from tfkd.cli.parser import build_parser as tune_main_parser

    uri = sqlite_uri(tmp_path)
    resnext = {
        "baseline": "--mode baseline --model tv_resnext101_32x8d --dataset",
        "tfkd_self": "--mode tfkd_self --model tv_resnext101_32x8d "
        "--teacher resnext101_32x8d@torchvision --dataset",
        "tfkd_reg": "--mode tfkd_reg --model tv_resnext101_32x8d --dataset",
    }
    lines = imagenet_plan_lines(capsys, uri, "--workers-per-trial", "8")
    assert all("--workers-per-trial 8" in line for line in lines)  # sweeps and reproductions
    for mode, words in resnext.items():
        (line,) = [line for line in lines if words in line]
        assert paper_csv_value("resnext101_32x8d", mode) in line
    assert lines.index(next(x for x in lines if resnext["baseline"] in x)) < lines.index(
        next(x for x in lines if resnext["tfkd_self"] in x)
    )
    sweeps = [line.split(" [run] ")[1].split("  # ")[0] for line in lines if " tune " in line]
    for command in sweeps:  # every planned sweep is a command tfkd tune accepts
        words = shlex.split(command)
        assert words[1:4] == ["-m", "tfkd", "tune"]
        args = tune_main_parser().parse_args(words[4:])
        assert args.dataset == "imagenet" and args.model.startswith("tv_")
    assert len(lines) == 2 * len(sweeps)  # each sweep reproduced

    no_imagenet = tuple(r for r in paper.load() if r.dataset != "imagenet")
    monkeypatch.setattr(paper, "load", lambda path=paper.PAPER_CSV: no_imagenet)
    lines = imagenet_plan_lines(capsys, uri)
    for words in resnext.values():
        (line,) = [line for line in lines if words in line]
        assert line.endswith("# no paper value")
    assert all(line.endswith("# no paper value") for line in lines)


def test_paper_suite_refuses_a_schedule_shorter_than_a_de_kd_snapshot(capsys, tmp_path):
    argv = ["--dataset", "cifar100", "--models", "resnet18", "--modes", "dekd", "--epochs", "10"]
    assert paper_suite_command.main([*argv, "--mlflow-uri", sqlite_uri(tmp_path), "--dry-run"]) == 2
    assert_one_line(capsys.readouterr().err, "--epochs 10", "epoch-50 snapshot of res")


def test_paper_suite_bad_input(capsys, tmp_path):
    assert (
        paper_suite_command.main(["--dataset", "cifar100", "--models", "resnet9", "--dry-run"]) == 2
    )
    assert_one_line(capsys.readouterr().err, "resnet9")
    argv = ["--dataset", "cifar10", "--modes", "lsr", "--dry-run"]
    assert paper_suite_command.main([*argv, "--mlflow-uri", sqlite_uri(tmp_path)]) == 2
    assert_one_line(capsys.readouterr().err, "no cifar10 rows")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- end to end on digits


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[str, Any]:
    """sweep -> best_configs -> reproduce (holdout), an lsr sweep and its reproduction, the
    first sweep reproduced under the paper protocol -> a paper sweep -> report -> reproduce
    again, on real digits."""
    root = tmp_path_factory.mktemp("pipeline")
    uri, storage = sqlite_uri(root), str(root / "ray_results")
    store = ["--mlflow-uri", uri, "--storage", storage]
    sweep = run(
        str(TUNE_MAIN),
        *cli_args(
            "--mode baseline --dataset digits --model resnet8 --num-samples 4 --grace-period 1",
            epochs=SWEEP_EPOCHS,
            data_dir=root / "data",
            name=SWEEP,  # a fixed folder for best_configs.yaml (the default name is unique)
        ),
        *store,
    )
    assert_ok(sweep)
    best = run("-m", "tfkd", "best-configs", "--experiment", SWEEP, "--top", "2", *store)
    assert_ok(best)
    repro_args = ["--experiment", SWEEP, "--seeds", str(SEEDS), "--epochs", str(REPRO_EPOCHS)]
    first = run("-m", "tfkd", "reproduce", *repro_args, *store)
    assert_ok(first)
    lsr_sweep = run(
        str(TUNE_MAIN),
        *cli_args(
            "--mode lsr --dataset digits --model resnet8 --fixed",
            epochs=SWEEP_EPOCHS,
            data_dir=root / "data",
            name=LSR_SWEEP,
        ),
        *store,
    )
    assert_ok(lsr_sweep)
    lsr_args = ["--experiment", LSR_SWEEP, "--seeds", str(SEEDS), "--epochs", str(REPRO_EPOCHS)]
    assert_ok(run("-m", "tfkd", "reproduce", *lsr_args, *store))
    paper_args = ["--experiment", SWEEP, "--seeds", str(PAPER_SEEDS), "--epochs", str(REPRO_EPOCHS)]
    paper_repro = run("-m", "tfkd", "reproduce", *paper_args, "--protocol", "paper", *store)
    assert_ok(paper_repro)
    paper_sweep = run(
        str(TUNE_MAIN),
        *cli_args(
            "--mode baseline --dataset digits --model resnet8 --num-samples 2 --protocol paper",
            metric="paper_test_accuracy",
            epochs=SWEEP_EPOCHS,
            data_dir=root / "data",
            name=PAPER_SWEEP,
            experiment=PAPER_SWEEP,
        ),
        *store,
    )
    assert_ok(paper_sweep)
    out = root / "reports"
    made = run("-m", "tfkd", "report", "--mlflow-uri", uri, "--out", str(out))
    assert_ok(made)
    again = run("-m", "tfkd", "reproduce", *repro_args, *store)
    return {
        "root": root,
        "uri": uri,
        "storage": storage,
        "out": out,
        "best": best,
        "first": first,
        "paper_repro": paper_repro,
        "paper_sweep": paper_sweep,
        "report": made,
        "again": again,
        "client": MlflowClient(tracking_uri=uri),
    }


def runs_of_kind(client: MlflowClient, experiment: str, kind: str) -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], f"tags.`tfkd.kind` = '{kind}'")


@pytest.mark.slow
def test_best_configs_on_a_real_sweep(pipeline):
    client = pipeline["client"]
    trials = runs_of_kind(client, SWEEP, "trial")
    full = [
        r
        for r in trials
        if r.data.metrics.get("epoch") == SWEEP_EPOCHS and r.info.status == "FINISHED"
    ]
    document = yaml.safe_load((Path(pipeline["storage"]) / SWEEP / "best_configs.yaml").read_text())
    assert 1 <= len(document) <= 2
    assert document[0]["val_accuracy"] == max(r.data.metrics["val_accuracy"] for r in full)
    assert {d["run_id"] for d in document} <= {r.info.run_id for r in full}
    assert document[0]["config"]["epochs"] == SWEEP_EPOCHS
    assert f"reading sweep {SWEEP} (MLflow experiment {SWEEP!r}" in pipeline["best"].stdout
    assert document[0]["config"]["val_fraction"] == 0.1
    assert set(document[0]["config"]) == set(TrialConfig.__dataclass_fields__)


@pytest.mark.slow
def test_reproductions_are_logged_and_linked(pipeline):
    client = pipeline["client"]
    sweep_run = runs_of_kind(client, SWEEP, "sweep")[0]
    runs = runs_of_kind(client, SWEEP, "reproduction")
    holdout = [r for r in runs if r.data.tags["protocol"] == "holdout"]
    assert len(holdout) == SEEDS and len(runs) == SEEDS + PAPER_SEEDS
    fresh = reproduce.reproduction_seeds(reproduce.FIRST_SEED, SEEDS)
    assert sorted(int(r.data.params["seed"]) for r in holdout) == fresh
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.params["epochs"] == str(REPRO_EPOCHS)
        assert r.data.tags["sweep_run_id"] == sweep_run.info.run_id
        assert r.data.tags["config_rank"] == "1"
        assert r.data.tags["config_hash"] == config_hash(r.data.params)
        assert r.data.params["protocol"] == r.data.tags["protocol"]
        assert r.info.run_name == f"#1 seed {r.data.params['seed']}"
    for r in holdout:  # the sweep's validation split chooses the epoch that is tested
        assert r.data.params["val_fraction"] == "0.1"
        history = client.get_metric_history(r.info.run_id, "val_accuracy")
        best = max(history, key=lambda m: (m.value, -m.step))
        assert r.data.metrics["best_epoch_val_accuracy"] == best.value
        assert r.data.metrics["reported_epoch"] == best.step
        assert not {"best_val_accuracy", "best_epoch_train_accuracy"} & set(r.data.metrics)
    parents = {p.data.tags["protocol"]: p for p in runs_of_kind(client, SWEEP, "reproduction-set")}
    assert sorted(parents) == ["holdout", "paper"]
    assert parents["paper"].info.run_name == f"reproduce-{SWEEP}-paper"
    for protocol, parent in parents.items():
        assert parent.info.status == "FINISHED"
        children = {
            r.data.tags["mlflow.parentRunId"] for r in runs if r.data.tags["protocol"] == protocol
        }
        assert children == {parent.info.run_id}


def assert_reports_the_test_maximum(client: MlflowClient, run: Any, workdir: Path) -> None:
    """A paper-protocol run: paper_test_accuracy is the maximum of the test accuracies it
    logged per epoch, reported_epoch names that epoch, and best_checkpoint holds its weights."""
    assert run.data.tags["protocol"] == "paper" and run.data.params["val_fraction"] == "0.0"
    history = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert sorted(m.step for m in history) == list(range(1, int(run.data.params["epochs"]) + 1))
    best = max(history, key=lambda m: (m.value, -m.step))
    assert run.data.metrics["paper_test_accuracy"] == best.value
    assert run.data.metrics["reported_epoch"] == best.step
    assert "val_accuracy" not in run.data.metrics
    local = client.download_artifacts(run.info.run_id, "best_checkpoint", str(workdir))
    config = {k: v for k, v in run.data.params.items() if k in TrialConfig.__dataclass_fields__}
    weights = Path(local) / "model.pt"
    assert test_accuracy_of_weights(weights, config) == pytest.approx(best.value)


@pytest.mark.slow
def test_best_checkpoint_of_a_holdout_reproduction_is_the_model_it_tested(pipeline, tmp_path):
    client = pipeline["client"]
    run = next(
        r
        for r in runs_of_kind(client, SWEEP, "reproduction")
        if r.data.tags["protocol"] == "holdout"
    )
    local = client.download_artifacts(run.info.run_id, "best_checkpoint", str(tmp_path))
    config = {k: v for k, v in run.data.params.items() if k in TrialConfig.__dataclass_fields__}
    accuracy = test_accuracy_of_weights(Path(local) / "model.pt", config)
    assert accuracy == pytest.approx(run.data.metrics["test_accuracy"])


@pytest.mark.slow
def test_a_paper_reproduction_reports_the_test_maximum_of_its_epochs(pipeline, tmp_path):
    client = pipeline["client"]
    runs = [
        r for r in runs_of_kind(client, SWEEP, "reproduction") if r.data.tags["protocol"] == "paper"
    ]
    assert len(runs) == PAPER_SEEDS
    for run in runs:
        assert_reports_the_test_maximum(client, run, tmp_path / run.info.run_id)
    said = pipeline["paper_repro"].stdout
    assert "protocol paper: full training set, tested every epoch" in said
    headers = [line for line in said.splitlines() if line.strip().startswith("trial ")]
    assert headers and all("max test" in h and "val acc" not in h for h in headers)


@pytest.mark.slow
def test_a_paper_sweep_ranks_on_the_test_maximum_and_says_so_once(pipeline, tmp_path):
    client, done = pipeline["client"], pipeline["paper_sweep"]
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "selects configurations on the test set" in warnings[0]
    trials = runs_of_kind(client, PAPER_SWEEP, "trial")
    assert len(trials) == 2
    for run in trials:
        assert_reports_the_test_maximum(client, run, tmp_path / run.info.run_id)
    (sweep_run,) = runs_of_kind(client, PAPER_SWEEP, "sweep")
    assert sweep_run.data.tags["protocol"] == "paper"
    assert sweep_run.data.tags["metric"] == "paper_test_accuracy"
    best = max(trials, key=lambda r: r.data.metrics["paper_test_accuracy"])
    assert (
        sweep_run.data.metrics["best_paper_test_accuracy"]
        == (best.data.metrics["paper_test_accuracy"])
    )


def printed_interval(values: list[float]) -> str:
    """'mean [low, high]' with the 95% t interval, as the accuracy table prints it."""
    mean, se = statistics.fmean(values), statistics.stdev(values) / len(values) ** 0.5
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=mean, scale=se)
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]"


@pytest.mark.slow
def test_reproduce_ends_with_the_accuracy_table_of_what_it_ran(pipeline):
    client = pipeline["client"]
    runs = runs_of_kind(client, SWEEP, "reproduction")
    runs = [r for r in runs if r.data.tags["protocol"] == "holdout"]
    measured = {k: [r.data.metrics[k] for r in runs] for k in ("test_accuracy", "test_ece")}
    measured["test_nll"] = [r.data.metrics["test_nll"] for r in runs]
    val = statistics.fmean(r.data.metrics["best_epoch_val_accuracy"] for r in runs)
    lines = pipeline["first"].stdout.strip().splitlines()
    rows = [line for line in lines if line.startswith("| digits | resnet8 | baseline |")]
    assert len(rows) == 1
    cells = rows[0][2:-2].split(" | ")
    setting = ["digits", "resnet8", "baseline", "", "#1", str(REPRO_EPOCHS), "holdout", str(SEEDS)]
    test, ece, nll = (
        printed_interval(measured[k]) for k in ("test_accuracy", "test_ece", "test_nll")
    )
    # the baseline is no comparison (vs baseline, P(gain > 0), p, verdict, check), a holdout row
    # has no holdout to differ from, and the paper has no digits row
    assert cells[:12] == [*setting, test, f"{val:.2f}", ece, nll]
    assert cells[12:17] == [""] * 5 and cells[18:] == [""] * 3
    trials = runs_of_kind(client, SWEEP, "trial")
    trial_epochs = sum(int(r.data.metrics["epoch"]) for r in trials)  # the search's cost
    assert re.fullmatch(rf"{trial_epochs} ep, \d+\.\d{{3}} PFLOP, \d+\.\d\d h", cells[17])
    # the status table shows each run's measured validation accuracy (issue 20: only '-')
    first_seed = reproduce.FIRST_SEED
    assert re.search(
        rf"#1 seed {first_seed} +{REPRO_EPOCHS}/{REPRO_EPOCHS} +\d+\.\d\d% +DONE",
        "\n".join(lines),
    )
    assert lines.index(rows[0]) > max(i for i, line in enumerate(lines) if "[analysis]" in line)
    said = pipeline["first"].stdout + pipeline["first"].stderr
    for noise in ("Token authentication", "(trainable pid=", "Checkpoint successfully created"):
        assert noise not in said, noise  # Ray's own output stays in the logs
    assert "\x1b[" not in said  # no colour codes


@pytest.mark.slow
def test_report_files_and_artifacts(pipeline):
    out = pipeline["out"]
    everything = pq.read_table(out / "results.parquet").to_pylist()
    assert sorted((r["mode"], r["protocol"]) for r in everything) == [
        ("baseline", "holdout"),
        ("baseline", "paper"),
        ("lsr", "holdout"),
    ]
    table = [row for row in everything if row["mode"] == "baseline"]
    rows = {row["protocol"]: row for row in table}
    for row in table:
        assert (row["dataset"], row["model"], row["mode"], row["teacher"]) == (
            "digits",
            "resnet8",
            "baseline",
            "",
        )
        assert 0 <= row["test_acc_mean"] <= 100 and row["epochs"] == REPRO_EPOCHS
        assert row["paper_acc"] is None and row["diff_vs_paper"] is None  # the paper lacks digits
    assert rows["holdout"]["seeds"] == SEEDS and rows["paper"]["seeds"] == PAPER_SEEDS
    runs = runs_of_kind(pipeline["client"], SWEEP, "reproduction")
    maxima = [
        r.data.metrics["paper_test_accuracy"] for r in runs if r.data.tags["protocol"] == "paper"
    ]
    assert rows["paper"]["test_acc_mean"] == pytest.approx(statistics.fmean(maxima))
    # the difference the protocol makes, on the same config and schedule
    assert rows["paper"]["diff_vs_holdout"] == pytest.approx(
        rows["paper"]["test_acc_mean"] - rows["holdout"]["test_acc_mean"]
    )
    assert rows["holdout"]["diff_vs_holdout"] is None
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("dataset,model,mode,teacher") and len(csv_lines) == 4
    markdown = (out / "results.md").read_text()
    assert "| digits | resnet8 | baseline |" in markdown and "| test acc (%) [95% CI] |" in markdown
    assert markdown.splitlines()[0] in pipeline["report"].stdout  # printed to the terminal
    assert f"{SWEEP}: no importance plot: 4 scored trials" in pipeline["report"].stdout
    pngs = sorted(p.name for p in out.glob("*.png"))
    stem = SWEEP
    assert pngs == sorted(
        [
            "accuracy_vs_paper.png",
            "learning_curves.png",
            f"parallel_{stem}.png",  # no importance from the sweep's 4 trials: a note says so
        ]
    )
    for name in pngs:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, name
    client = pipeline["client"]
    (run,) = runs_of_kind(client, report.REPORT_EXPERIMENT, "report")
    assert run.info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert logged == {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.slow
def test_rerunning_reproduce_skips_what_is_done(pipeline):
    again = pipeline["again"]
    assert_ok(again)
    assert again.stdout.count("skip config #1") == SEEDS
    assert "nothing left to reproduce" in again.stdout
    assert len(runs_of_kind(pipeline["client"], SWEEP, "reproduction")) == SEEDS + PAPER_SEEDS
    assert "Ray" not in again.stdout + again.stderr  # nothing started


def trained_seeds(client: MlflowClient, experiment: str, kind: str, protocol: str) -> set[int]:
    return {
        int(r.data.params["seed"])
        for r in runs_of_kind(client, experiment, kind)
        if r.data.params["protocol"] == protocol
    }


@pytest.mark.slow
def test_reproductions_train_seeds_no_sweep_trained_and_the_same_for_every_mode(pipeline):
    client = pipeline["client"]
    reproduced = {}
    for experiment in (SWEEP, LSR_SWEEP):
        swept = trained_seeds(client, experiment, "trial", "holdout")
        reproduced[experiment] = trained_seeds(client, experiment, "reproduction", "holdout")
        assert swept and len(reproduced[experiment]) == SEEDS
        assert not swept & reproduced[experiment], experiment  # never the selected trial again
    assert reproduced[SWEEP] == reproduced[LSR_SWEEP]  # the modes pair seed by seed


def per_seed(client: MlflowClient, experiment: str, metric: str) -> dict[int, float]:
    """{seed: metric} of an experiment's holdout reproductions, straight from MLflow."""
    return {
        int(r.data.params["seed"]): r.data.metrics[metric]
        for r in runs_of_kind(client, experiment, "reproduction")
        if r.data.params["protocol"] == "holdout"
    }


@pytest.mark.slow
def test_report_parquet_verdict_columns_agree_with_scipy_on_the_runs_in_mlflow(pipeline):
    client = pipeline["client"]
    (lsr,) = [
        r
        for r in pq.read_table(pipeline["out"] / "results.parquet").to_pylist()
        if r["mode"] == "lsr"
    ]
    mine, base = (per_seed(client, e, "test_accuracy") for e in (LSR_SWEEP, SWEEP))
    seeds = sorted(mine.keys() & base.keys())
    a, b = [mine[s] for s in seeds], [base[s] for s in seeds]
    differences = [x - y for x, y in zip(a, b, strict=True)]
    n, mean = len(seeds), statistics.fmean(differences)
    se = statistics.stdev(differences) / n**0.5
    low, high = scipy_stats.t.interval(0.95, n - 1, loc=mean, scale=se)
    p = scipy_stats.ttest_rel(a, b).pvalue
    assert n == SEEDS and lsr["paired_seeds"] == n
    assert lsr["vs_baseline"] == pytest.approx(mean)
    assert (lsr["vs_baseline_ci_low"], lsr["vs_baseline_ci_high"]) == pytest.approx((low, high))
    assert lsr["p_value"] == pytest.approx(p)
    assert lsr["p_holm"] == pytest.approx(p)  # the report's only compared row
    assert lsr["p_gain"] == pytest.approx(1 - scipy_stats.t.cdf(-mean / se, n - 1))
    excludes_zero = low > 0 or high < 0
    word = ("gain" if low > 0 else "loss") if excludes_zero else "inconclusive"
    assert lsr["verdict"] == word
    for metric, column in (("test_ece", "ece"), ("test_nll", "nll")):
        values = list(per_seed(client, LSR_SWEEP, metric).values())
        spread = statistics.stdev(values) / len(values) ** 0.5
        bounds = scipy_stats.t.interval(0.95, len(values) - 1, statistics.fmean(values), spread)
        assert lsr[column] == pytest.approx(statistics.fmean(values))
        assert (lsr[f"{column}_ci_low"], lsr[f"{column}_ci_high"]) == pytest.approx(bounds)
    markdown = (pipeline["out"] / "results.md").read_text()
    (line,) = [x for x in markdown.splitlines() if x.startswith("| digits | resnet8 | lsr |")]
    assert f"| {mean:+.2f} [{low:+.2f}, {high:+.2f}] | {lsr['p_gain']:.3f} |" in line
    assert f"| {lsr['verdict']} |" in line


@pytest.mark.slow
def test_report_counts_each_rows_search_compute_and_flags_an_unequal_budget(pipeline):
    from tfkd.analysis import compute

    client = pipeline["client"]
    rows = {
        r["mode"]: r
        for r in pq.read_table(pipeline["out"] / "results.parquet").to_pylist()
        if r["protocol"] == "holdout"
    }
    flops = 3 * compute.forward_flops("resnet8")  # no teacher: forward and backward
    for mode, experiment in (("baseline", SWEEP), ("lsr", LSR_SWEEP)):
        trials = runs_of_kind(client, experiment, "trial")
        epochs = sum(int(r.data.metrics["epoch"]) for r in trials)
        images = [r.data.metrics["train_images"] for r in trials]
        hours = sum(r.info.end_time - r.info.start_time for r in trials) / 3.6e6
        pflop = sum(
            int(r.data.metrics["epoch"]) * n * flops / 1e15
            for r, n in zip(trials, images, strict=True)
        )
        row = rows[mode]
        assert row["search_trial_epochs"] == row["trial_epochs"] == epochs, mode
        assert row["teacher_epochs"] == 0
        assert row["trial_hours"] == pytest.approx(hours)
        assert row["compute_pflop"] == pytest.approx(pflop)
    searched = (rows["lsr"]["search_trial_epochs"], rows["baseline"]["search_trial_epochs"])
    assert searched[0] < searched[1]  # one fixed trial against a 4-trial sweep
    assert rows["lsr"]["sanity"] == (
        f"not an equal budget: searched with {searched[0]} trial-epochs, its baseline {searched[1]}"
    )
    assert rows["lsr"]["sanity"] in (pipeline["out"] / "results.md").read_text()
