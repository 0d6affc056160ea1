"""What a report may claim: t intervals, paired differences, Holm's correction and verdicts
(analysis.stats) checked against scipy and hand computations from the definitions; the rows of
analysis.results built from them; the checks that a row is what its mode says; each row's
compute with its teacher's (analysis.compute, on a hand-made MLflow store); fresh seeds.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from scipy import stats as scipy_stats

from tfkd.analysis import compute, reproduce, results, stats, sweeps
from tfkd.cli.commands import reproduce as reproduce_command
from tfkd.cli.flags import EXIT_USAGE
from tfkd.core.config import TrialConfig
from tfkd.core.errors import UserError

from conftest import assert_one_line, sqlite_uri

# fixed per-seed test accuracies of two modes (seed 1004 only in the row: not paired)
ROW = {1000: 97.1, 1001: 96.4, 1002: 97.9, 1003: 96.8, 1004: 99.9}
BASE = {1000: 96.5, 1001: 96.3, 1002: 97.0, 1003: 96.9, 1005: 90.0}
PAIRED = (1000, 1001, 1002, 1003)


# ---------------------------------------------------------------- statistics against scipy


def test_t_interval_is_scipys():
    values = [97.1, 96.4, 97.9, 96.8]
    interval = stats.t_interval(values)
    low, high = scipy_stats.t.interval(0.95, 3, loc=sum(values) / 4, scale=scipy_stats.sem(values))
    assert (interval.mean, interval.low, interval.high, interval.n) == pytest.approx(
        (sum(values) / 4, low, high, 4)
    )
    one = stats.t_interval([97.0])
    assert one.mean == 97.0 and math.isnan(one.low) and math.isnan(one.high)


def test_paired_difference_is_scipys_paired_t_test_over_the_seeds_both_rows_have():
    difference = stats.paired_difference(ROW, BASE)
    a, b = [ROW[s] for s in PAIRED], [BASE[s] for s in PAIRED]
    d = [x - y for x, y in zip(a, b, strict=True)]  # 0.6, 0.1, 0.9, -0.1
    mean, se = sum(d) / 4, scipy_stats.sem(d)
    test = scipy_stats.ttest_rel(a, b)
    assert difference.seeds == PAIRED
    assert difference.interval.mean == pytest.approx(0.375)
    half = scipy_stats.t.ppf(0.975, 3) * se
    assert (difference.interval.low, difference.interval.high) == pytest.approx(
        (mean - half, mean + half)
    )
    assert difference.p_value == pytest.approx(test.pvalue)
    # P(gain > 0) under the paired t model: 1 - T_{n-1}(-mean/se), i.e. 1 minus the one-sided
    # p-value of the alternative "row > baseline"
    assert difference.p_gain == pytest.approx(1 - scipy_stats.t.cdf(-mean / se, 3))
    greater = scipy_stats.ttest_rel(a, b, alternative="greater").pvalue
    assert difference.p_gain == pytest.approx(1 - greater)


def test_identical_differences_are_certain_and_fewer_than_two_seeds_have_no_interval():
    same = stats.paired_difference({1: 2.0, 2: 3.0}, {1: 1.0, 2: 2.0})
    assert (same.interval.low, same.interval.high, same.p_value, same.p_gain) == (
        1.0,
        1.0,
        0.0,
        1.0,
    )
    one = stats.paired_difference({1: 2.0, 2: 3.0}, {2: 2.0})
    assert one.interval.n == 1 and math.isnan(one.p_value) and math.isnan(one.interval.low)
    assert stats.verdict(one, math.nan) == "1 paired seed: no CI"
    none = stats.paired_difference({1: 2.0}, {2: 2.0})
    assert stats.verdict(none, math.nan) == "no seed in common with the baseline"


def test_holm_from_its_definition():
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> 0.06)
    p = [0.01, 0.04, math.nan, 0.03, 0.005]
    adjusted = stats.holm(p)
    assert adjusted[:2] == pytest.approx([0.03, 0.06])
    assert math.isnan(adjusted[2])  # not a comparison: not counted in m
    assert adjusted[3:] == pytest.approx([0.06, 0.02])
    assert stats.holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])  # capped at 1


def interval(low: float, high: float, n: int = 5) -> stats.PairedDifference:
    return stats.PairedDifference(stats.Interval((low + high) / 2, low, high, n), 0.01, 0.9, ())


@pytest.mark.parametrize(
    ("low", "high", "p_holm", "word"),
    [
        (0.2, 1.0, 0.01, "gain"),
        (-1.0, -0.2, 0.01, "loss"),
        (0.2, 1.0, 0.08, "gain, not after Holm"),
        (-1.0, -0.2, 0.2, "loss, not after Holm"),
        (-0.2, 1.0, 0.01, "inconclusive"),
    ],
)
def test_verdict(low, high, p_holm, word):
    assert stats.verdict(interval(low, high), p_holm) == word


# ---------------------------------------------------------------- rows


def repro(mode: str, seed: int, accuracy: float, **kw: Any) -> results.Reproduction:
    values = {"experiment": mode, "sweep": mode, "config_hash": mode, "rank": "1",
              "dataset": "digits", "model": "resnet8", "mode": mode, "teacher": "",
              "epochs": 20, "seed": seed, "test_accuracy": accuracy, "test_ece": 1.0 + seed % 7,
              "test_nll": 0.1 * (seed % 5), "val_accuracy": accuracy - 1, **kw}  # fmt: skip
    return results.Reproduction(**values)


def test_rows_pair_with_the_baseline_by_seed_and_holm_runs_across_the_report():
    gains = {"lsr": 0.8, "kd": 0.5}  # kd's noise is larger: its p is the larger
    noise = {"lsr": [0.1, -0.1, 0.05, -0.05], "kd": [0.6, -0.5, 0.4, -0.6]}
    runs = [repro("baseline", s, a) for s, a in BASE.items()]
    for mode, gain in gains.items():
        runs += [
            repro(mode, s, BASE[s] + gain + e) for s, e in zip(PAIRED, noise[mode], strict=True)
        ]
    rows = {r["mode"]: r for r in results.results_table(runs).to_dict("records")}
    p = {}
    for mode in gains:
        mine = [r.test_accuracy for r in runs if r.mode == mode]
        p[mode] = scipy_stats.ttest_rel(mine, [BASE[s] for s in PAIRED]).pvalue
        assert rows[mode]["vs_baseline"] == pytest.approx(gains[mode] + sum(noise[mode]) / 4)
        assert rows[mode]["paired_seeds"] == 4 and rows[mode]["p_value"] == pytest.approx(p[mode])
    small, large = sorted(p.values())
    assert rows["lsr"]["p_holm"] == pytest.approx(2 * small)  # definition, m = 2
    assert rows["kd"]["p_holm"] == pytest.approx(max(2 * small, large))
    assert rows["lsr"]["verdict"] == "gain"
    baseline = rows["baseline"]
    assert math.isnan(baseline["vs_baseline"]) and baseline["verdict"] == ""
    assert baseline["seed_list"] == "1000,1001,1002,1003,1005"
    ece = [1.0 + s % 7 for s in BASE]
    low, high = scipy_stats.t.interval(0.95, 4, sum(ece) / 5, scipy_stats.sem(ece))
    assert (baseline["ece"], baseline["ece_ci_low"], baseline["ece_ci_high"]) == pytest.approx(
        (sum(ece) / 5, low, high)
    )
    text = results.markdown(results.results_table(runs))
    (line,) = [x for x in text.splitlines() if "| lsr |" in x]
    lsr = rows["lsr"]
    shown = f"{lsr['vs_baseline']:+.2f} [{lsr['vs_baseline_ci_low']:+.2f}, "
    assert shown in line and f"| {lsr['p_gain']:.3f} |" in line and "| gain |" in line
    assert "posterior probability" in text and "Holm" in text


def with_facts(teacher_acc: float, classes: int | None = None, epochs: int = 80):
    return compute.SweepFacts(
        compute.Cost(epochs), teacher_accuracy=teacher_acc, num_classes=classes
    )


def flagged(mode: str, facts: compute.SweepFacts, base_epochs: int = 80) -> str:
    runs = [repro("baseline", s, 95.0 + s % 3, sweep_run_id="b") for s in PAIRED]
    runs += [repro(mode, s, 96.0 + s % 2, teacher="t", sweep_run_id="m") for s in PAIRED]
    facts_of = {"b": compute.SweepFacts(compute.Cost(base_epochs)), "m": facts}
    frame = results.results_table(runs, facts_of)
    (row,) = [r for r in frame.to_dict("records") if r["mode"] == mode]
    if row["sanity"]:
        assert row["sanity"] in results.markdown(frame)  # as a note naming the row
        assert "flagged: see notes" in results.markdown(frame)
    return row["sanity"]


def test_the_teacher_cell_carries_its_validation_accuracy_where_measured():
    runs = [repro("baseline", s, 95.0, sweep_run_id="b") for s in PAIRED]
    runs += [repro("rekd", s, 96.0, teacher="resnet8@best", sweep_run_id="m") for s in PAIRED]
    runs += [repro("kd", s, 96.0, teacher="resnet20@best", sweep_run_id="k") for s in PAIRED]
    facts_of = {
        "b": compute.SweepFacts(compute.Cost(80)),
        "m": with_facts(83.448),
        "k": with_facts(math.nan),  # a sweep from before the teacher's accuracy was logged
    }
    table = results.markdown(results.results_table(runs, facts_of))
    assert "| rekd | resnet8@best (83.45% val) |" in table
    assert "| kd | resnet20@best |" in table and "| baseline |  |" in table


def test_a_reversed_kd_row_whose_teacher_is_not_weaker_is_flagged():
    # the baseline's val accuracy: mean of 94 + s % 3 over the paired seeds
    student = sum(94.0 + s % 3 for s in PAIRED) / 4
    assert "ordinary KD" in flagged("rekd", with_facts(99.3))
    assert "ordinary KD" in flagged("rekd", with_facts(student))
    assert flagged("rekd", with_facts(student - 0.01)) == ""


def test_a_defective_kd_row_whose_teacher_is_at_chance_is_flagged():
    assert "at chance" in flagged("dekd", with_facts(12.0, classes=10))
    assert flagged("dekd", with_facts(41.0, classes=10)) == ""
    assert "at chance" in flagged("dekd", with_facts(3.0, classes=100))
    assert flagged("dekd", with_facts(12.0, classes=None)) == ""  # unknown: no claim
    assert flagged("kd", with_facts(12.0, classes=10)) == ""  # only dekd's rule


def test_a_row_searched_with_another_budget_than_its_baseline_is_flagged():
    assert flagged("lsr", with_facts(math.nan, epochs=80)) == ""
    assert flagged("lsr", with_facts(math.nan, epochs=20)) == (
        "not an equal budget: searched with 20 trial-epochs, its baseline 80"
    )


# ---------------------------------------------------------------- compute, from MLflow


def config(**values: Any) -> dict[str, Any]:
    base = {"mode": "baseline", "model": "resnet8", "dataset": "digits", "epochs": 4}
    return TrialConfig.from_dict({**base, **values}).to_dict()


def finished_run(
    client: MlflowClient, experiment: str, hours: float, epochs: int, images: int, **kw: Any
) -> str:
    """A run that ran `hours`, `epochs` epochs of `images` training images."""
    tags, params, metrics = kw.pop("tags", {}), kw.pop("params", {}), kw.pop("metrics", {})
    start = int(time.time() * 1000)
    run = client.create_run(experiment, start_time=start, tags=tags, **kw)
    now = int(time.time() * 1000)
    values = {"epoch": epochs, "train_images": images, **metrics}
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, float(v), now, epochs) for k, v in values.items()],
        params=[Param(k, str(v)) for k, v in params.items()],
    )
    client.set_terminated(run.info.run_id, end_time=start + int(hours * 3.6e6))
    return run.info.run_id


def test_a_rows_compute_adds_its_teachers_training_to_its_sweeps(tmp_path):
    uri = sqlite_uri(tmp_path)
    client = MlflowClient(tracking_uri=uri)
    teachers = client.create_experiment("teachers", artifact_location=(tmp_path / "a").as_uri())
    students = client.create_experiment("kd", artifact_location=(tmp_path / "b").as_uri())
    teacher = finished_run(client, teachers, 2.0, 30, 1000, params=config(model="resnet20"))
    sweep_tags = {"tfkd.kind": "sweep", "teacher": "resnet20@best", "teacher_run_id": teacher}
    sweep = finished_run(client, students, 0.0, 0, 0, tags=sweep_tags)
    client.log_metric(sweep, "teacher_val_accuracy", 97.5)
    trial_tags = {"tfkd.kind": "trial", "mlflow.parentRunId": sweep}
    shapes = [(0.5, 20, 900), (0.25, 10, 900)]  # (hours, epochs, images per epoch)
    for hours, epochs, images in shapes:
        finished_run(client, students, hours, epochs, images, tags=trial_tags, params=config())
    facts = compute.facts_of(uri, client, {sweep: False, "": False, "gone": False})
    assert list(facts) == [sweep]
    student, teacher_forward = compute.forward_flops("resnet8"), compute.forward_flops("resnet20")
    search = sum(e * n * (3 * student + teacher_forward) for _, e, n in shapes)
    columns = facts[sweep].columns()
    assert columns["search_trial_epochs"] == 30 and columns["teacher_epochs"] == 30
    assert columns["trial_epochs"] == 60
    assert columns["trial_hours"] == pytest.approx(0.5 + 0.25 + 2.0)
    teacher_training = 30 * 1000 * 3 * teacher_forward
    assert columns["compute_pflop"] == pytest.approx((search + teacher_training) / 1e15)
    assert columns["teacher_acc"] == 97.5
    assert math.isnan(columns["num_classes"])  # not asked for: no download


def test_a_defective_teachers_number_of_classes_comes_from_its_checkpoint(tmp_path):
    from tfkd.core import checkpoint

    weights = checkpoint.save_atomic({"model": {}, "meta": {"num_classes": 7}}, tmp_path / "t.pt")
    uri = sqlite_uri(tmp_path)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("dekd", artifact_location=(tmp_path / "a").as_uri())
    tags = {"tfkd.kind": "sweep", "teacher_location": str(weights)}
    sweep = finished_run(client, experiment, 0.0, 0, 0, tags=tags)
    assert compute.facts_of(uri, client, {sweep: True})[sweep].num_classes == 7
    assert compute.facts_of(uri, client, {sweep: False})[sweep].num_classes is None


def test_forward_flops_count_a_convolution_as_its_multiply_adds_twice():
    """resnet20 is resnet8 with 6 more basic blocks (2 per stage, 3 stages) at the same widths:
    each block at stage s is two 3x3 convs of 16*2^s channels on (32/2^s)^2 pixels."""
    block = sum(2 * (2 * 9 * (16 * 2**s) ** 2 * (32 // 2**s) ** 2) for s in range(3))
    extra = compute.forward_flops("resnet20") - compute.forward_flops("resnet8")
    assert extra == pytest.approx(2 * block, rel=0.01)  # batch norms and ReLUs aside


# ---------------------------------------------------------------- fresh seeds


def trial(seed: int) -> sweeps.Trial:
    return sweeps.Trial(f"t{seed}", "", config(seed=seed), 4, 50.0)


def test_reproduction_seeds_never_include_a_seed_the_sweep_trained():
    sweep = sweeps.Sweep("s", "s", "", 4, {}, (trial(0), trial(0), trial(3)), "test")
    seeds = reproduce.reproduction_seeds(reproduce.FIRST_SEED, reproduce.DEFAULT_SEEDS)
    assert len(seeds) >= 5 and not set(seeds) & {0, 3}
    reproduce.check_fresh(seeds, sweep)
    jobs = reproduce.plan_jobs(sweep.trials[:1], seeds, 4, None, "holdout")
    assert [job.config["seed"] for job in jobs] == seeds
    with pytest.raises(UserError, match="seed 3 was trained by sweep s"):
        reproduce.check_fresh(reproduce.reproduction_seeds(2, 5), sweep)


def test_reproduce_refuses_a_seed_its_sweep_trained_and_writes_nothing(tmp_path, capsys):
    uri = sqlite_uri(tmp_path)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("hand", artifact_location=(tmp_path / "a").as_uri())
    sweep_tags = {"tfkd.kind": "sweep", "epochs": "4", "mode": "baseline"}
    sweep = finished_run(client, experiment, 0.0, 0, 0, tags=sweep_tags, run_name="hand")
    trial_tags = {"tfkd.kind": "trial", "mlflow.parentRunId": sweep, "tfkd.ray_trial_id": "a"}
    finished_run(
        client, experiment, 0.1, 4, 100, tags=trial_tags, params=config(seed=0),
        metrics={"val_accuracy": 50.0},
    )  # fmt: skip
    argv = ["--experiment", "hand", "--mlflow-uri", uri, "--storage", str(tmp_path / "ray")]
    capsys.readouterr()
    assert reproduce_command.main([*argv, "--first-seed", "0"]) == EXIT_USAGE
    assert_one_line(capsys.readouterr().err, "seed 0 was trained by sweep hand", "--first-seed")
    assert client.search_runs([experiment], "tags.`tfkd.kind` = 'reproduction-set'") == []
    assert not (tmp_path / "ray").exists()
