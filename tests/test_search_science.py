"""A search that searches: live axes, loss weights, schedule rungs, separate seeds, and a study
that models from its first trials and holds stopped trials as pruned."""

from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from tfkd.core import coordinates, modes, recipe, train
from tfkd.core.config import TrialConfig
from tfkd.sweep import rungs, search_space, tuner
from tfkd.sweep.search_space import SEARCH_SPACES_DIR

from conftest import assert_ok, tune_main

STEPS = 100  # a trajectory, not one step: where training goes, not only where it starts
# ...and how fast: a loss with a finite optimum (dkd's) reaches the same point at every
# learning rate within STEPS, so an axis is also live when it moves the weights after 10 steps
HORIZONS = (10, STEPS)
DEAD = 0.05  # an axis whose ends move the weights by less than this share changes nothing
REDUNDANT = 0.08  # the axes' unit effects' smallest singular value below this: one mixes others
DATASET_OF = {10: "cifar10", 100: "cifar100"}  # a dataset with K classes (no data is read)


# ---------------------------------------------------------------- every searched axis matters


def fixed_point(space: search_space.SearchSpace, k: int) -> dict:
    """The space's first point for a model without a preset, on a dataset with k classes, and
    the defaults it does not search (those the searched keys decide left out)."""
    fixed = {
        key: value
        for key, value in space.defaults.items()
        if not coordinates.decided_by(space.mode, key) & space.sets()
    }
    return {"mode": space.mode, "dataset": DATASET_OF[k], **fixed, **space.first_point("resnet8")}


def inputs(k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=gen)
    labels = torch.randint(0, k, (256,), generator=gen)
    return x, labels, 3 * torch.randn(256, k, generator=gen)


def trained_weights(cfg: TrialConfig, k: int, steps: int = STEPS) -> torch.Tensor:
    """A linear model after `steps` steps of the mode's loss and the recipe's SGD: how far it went.

    Fixed inputs, labels and teacher logits; only the config differs between calls.
    """
    x, labels, teacher = inputs(k)
    torch.manual_seed(0)
    model = torch.nn.Linear(16, k)
    start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    optimizer = recipe.build_optimizer(model, cfg)
    loss = modes.get(cfg.mode).loss
    for _ in range(steps):
        optimizer.zero_grad()
        loss(model(x), labels, teacher, cfg).total.backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()]) - start


def axis_effect(space: search_space.SearchSpace, name: str, k: int = 10) -> float:
    """How much the trained weights differ between the axis's two ends (others at the first
    point), relative to the longer of the two paths, at the horizon where they differ most."""
    param = space.params[name]
    point = fixed_point(space, k)
    configs = [TrialConfig.from_dict({**point, name: value}) for value in (param.low, param.high)]
    effects = []
    for steps in HORIZONS:
        ends = [trained_weights(cfg, k, steps) for cfg in configs]
        effects.append(float((ends[0] - ends[1]).norm() / max(e.norm() for e in ends)))
    return max(effects)


def step(config: dict, logits: torch.Tensor, labels, teacher) -> torch.Tensor:
    """What one SGD step does to the logits: -lr_factor x dL/dlogits (float64, flattened)."""
    cfg = TrialConfig.from_dict(config)
    z = logits.clone().requires_grad_()
    modes.get(cfg.mode).loss(z, labels, teacher, cfg).total.backward()
    return -cfg.lr_factor * z.grad.flatten()


def nudged(param: search_space.Param, value: float, sign: int) -> float:
    """A small move of `value` along the axis, in its own scale, kept inside the range."""
    if param.distribution.startswith("log"):
        moved = value * math.exp(sign * 0.05 * math.log(param.high / param.low))
    else:
        moved = value + sign * 0.05 * (param.high - param.low)
    return min(max(moved, param.low), param.high)


def independence(space: search_space.SearchSpace, k: int) -> tuple[float, dict]:
    """The smallest singular value of the searched axes' unit effects on the step at the first
    point: near 0 when one axis does what another (or a mix of others) does. Also the effects'
    sizes (each axis's change of the step relative to the step)."""
    gen = torch.Generator().manual_seed(1)
    logits = 2 * torch.randn(64, k, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, k, (64,), generator=gen)
    teacher = 3 * torch.randn(64, k, generator=gen, dtype=torch.float64)
    point = fixed_point(space, k)
    base = step(point, logits, labels, teacher)
    columns, sizes = [], {}
    for name, param in space.params.items():
        ends = [{**point, name: nudged(param, point[name], sign)} for sign in (-1, 1)]
        change = step(ends[1], logits, labels, teacher) - step(ends[0], logits, labels, teacher)
        sizes[name] = float(change.norm() / base.norm())
        columns.append(change / change.norm())
    return float(torch.linalg.svdvals(torch.stack(columns, dim=1)).min()), sizes


SHIPPED = sorted(SEARCH_SPACES_DIR.glob("*.yaml"))


@pytest.mark.parametrize("k", [10, 100])
@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_axis_of_every_shipped_space_changes_training_at_10_and_100_classes(path, k):
    space = search_space.load(path)
    numeric = [n for n, p in space.params.items() if p.distribution != "choice"]
    assert numeric == list(space.params)  # no choice axes: each one is measured here
    assert "lr_factor" in space.params  # the learning rate, searched for every mode
    effects = {name: axis_effect(space, name, k) for name in numeric}
    assert all(e > DEAD for e in effects.values()), effects


REDUNDANCY_CASES = [
    pytest.param(path, k, id=f"{path.stem}-{k}") for path in SHIPPED for k in (10, 100)
]


@pytest.mark.parametrize(("path", "k"), REDUNDANCY_CASES)
def test_no_two_axes_of_a_shipped_space_move_the_loss_the_same_way(path, k):
    """Each axis changes the step (the learning-rate factor times the gradient on the logits)
    in a direction no other axis, nor a mix of them, gives: no axis rescales another."""
    smallest, sizes = independence(search_space.load(path), k)
    assert smallest > REDUNDANT, (smallest, sizes)
    assert all(size > 1e-3 for size in sizes.values()), sizes  # and each moves it


OLD_KD = """mode: kd
params:
  temperature: {distribution: loguniform, low: 1, high: 20}
  ce_weight: {distribution: loguniform, low: 0.05, high: 0.95}
  kl_weight: {distribution: loguniform, low: 0.1, high: 90}
  lr_factor: {distribution: loguniform, low: 0.25, high: 4}
defaults: {temperature: 20, alpha: 0.95, multiplier: 1.0, semantics: reference}
"""
OLD_TFKD_REG = """mode: tfkd_reg
params:
  temperature: {distribution: loguniform, low: 1, high: 40}
  ce_weight: {distribution: loguniform, low: 0.05, high: 0.95}
  kl_weight: {distribution: loguniform, low: 0.1, high: 100}
defaults: {temperature: 20, alpha: 0.95, correct_prob: 0.99, multiplier: 1.0}
"""
OLD_PAPER = """mode: tfkd_reg
params:
  temperature: {distribution: loguniform, low: 1, high: 40}
  kl_weight: {distribution: loguniform, low: 0.01, high: 10}
  ce_weight: {distribution: loguniform, low: 0.05, high: 0.95}
defaults: {temperature: 20, alpha: 0.95, correct_prob: 0.99, multiplier: 1.0, semantics: paper}
"""


@pytest.mark.parametrize("k", [10, 100])
@pytest.mark.parametrize(
    "text",
    [OLD_TFKD_REG, OLD_PAPER, OLD_KD],
    ids=["old tfkd_reg: T in the span of ce/kl", "old paper form: T vs kl_weight",
         "old kd + lr_factor: the weights' scale is the learning rate"],
)  # fmt: skip
def test_the_measure_finds_the_confounded_axes_of_the_old_spaces(text, k):
    smallest, sizes = independence(search_space.loads(text), k)
    assert smallest < REDUNDANT / 2, (smallest, sizes)  # 5e-14, 0.022 and 3e-15 at K = 10


def test_the_measure_finds_the_dead_axis_of_the_old_tfkd_reg_space(tmp_path):
    """correct_prob over 0.5-0.999 in the reference form: the axis this issue removed."""
    space = search_space.loads(
        "mode: tfkd_reg\nparams:\n"
        "  correct_prob: {distribution: uniform, low: 0.5, high: 0.999}\n"
        "  temperature: {distribution: loguniform, low: 1, high: 40}\n"
        "defaults: {temperature: 20, alpha: 0.95, multiplier: 1.0, correct_prob: 0.99}\n"
    )
    assert axis_effect(space, "correct_prob") < DEAD / 10
    assert axis_effect(space, "temperature") > DEAD


# ---------------------------------------------------------------- the loss weights


def test_the_weights_set_alpha_and_multiplier_and_give_the_same_loss():
    cfg = TrialConfig.from_dict({"mode": "tfkd_self", "ce_weight": 0.1, "kl_weight": 45.0})
    assert cfg.alpha == pytest.approx(0.9) and cfg.multiplier == pytest.approx(50.0)
    original = TrialConfig.from_dict({"mode": "tfkd_self", "alpha": 0.9, "multiplier": 50.0})
    gen = torch.Generator().manual_seed(1)
    logits, teacher = torch.randn(32, 10, generator=gen), torch.randn(32, 10, generator=gen)
    labels = torch.randint(0, 10, (32,), generator=gen)
    loss = modes.get("tfkd_self").loss
    torch.testing.assert_close(
        loss(logits, labels, teacher, cfg).total, loss(logits, labels, teacher, original).total
    )


@pytest.mark.parametrize(
    "values, needle",
    [
        ({"ce_weight": 0.5}, "needs 'kl_weight'"),
        ({"ce_weight": 1.0, "kl_weight": 1.0}, "below 1"),
        ({"ce_weight": 0.5, "kl_weight": 1.0, "alpha": 0.9}, "disagrees"),
    ],
)
def test_bad_weights_name_the_problem(values, needle):
    with pytest.raises(ValueError, match=needle):
        TrialConfig.from_dict({"mode": "kd", **values})


# ---------------------------------------------------------------- rungs on the schedule


def lr_drops(epochs: int) -> list[int]:
    """The epochs after which the learning rate the recipe's scheduler gives falls."""
    cfg = TrialConfig.from_dict({"mode": "baseline", "epochs": epochs})
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.scaled_lr)
    scheduler = recipe.build_scheduler(optimizer, cfg, steps_per_epoch=2)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        for _ in range(2):
            optimizer.step()
            scheduler.step()
    return [e for e in range(1, epochs) if rates[e] < rates[e - 1] * 0.5]


@pytest.mark.parametrize("epochs", [200, 30])
def test_default_rung_judges_just_after_the_second_drop(epochs):
    drops = lr_drops(epochs)
    judged = rungs.epochs_of(rungs.DEFAULT_RUNGS, {"mode": "baseline", "epochs": epochs})
    assert judged == (drops[1] + 1,)
    if epochs == 200:
        assert drops == [60, 120, 160]


def test_a_rung_the_schedule_lacks_is_one_clear_line(workdir, capsys):
    from tfkd.cli import tune as cli

    code = cli.main("--mode lsr --dataset fake --model resnet8 --epochs 20 --rungs after7".split())
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "after7" in err and "after3" in err


# ---------------------------------------------------------------- seeds that separate


def initial_student(config: dict) -> dict[str, torch.Tensor]:
    """The student run_trial builds, as built (before any step)."""
    built: list[dict[str, torch.Tensor]] = []
    real = train.build_student

    def recording(*args, **kwargs):
        model = real(*args, **kwargs)
        built.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return model

    train.build_student = recording
    try:
        train.run_trial({**config, "epochs": 1, "warmup_epochs": 0, "lr": 1e-6}, None)
    finally:
        train.build_student = real
    return built[0]


def test_a_students_initial_weights_do_not_depend_on_a_teacher(tmp_path):
    common = {"model": "resnet8", "dataset": "fake", "fake_size": 64, "device": "cpu"}
    teacher_dir = tmp_path / "teacher"

    def keep(metrics, checkpoint_dir):
        shutil.copytree(checkpoint_dir, teacher_dir, dirs_exist_ok=True)

    train.run_trial(
        {"mode": "baseline", **common, "epochs": 1, "warmup_epochs": 0, "seed": 7}, keep
    )
    for seed in (0, 3):
        alone = initial_student({"mode": "baseline", **common, "seed": seed})
        taught = initial_student(
            {"mode": "tfkd_self", **common, "seed": seed, "teacher_checkpoint": str(teacher_dir)}
        )
        assert alone.keys() == taught.keys()
        assert all(torch.equal(alone[k], taught[k]) for k in alone)
    other = initial_student({"mode": "baseline", **common, "seed": 1})
    assert any(not torch.equal(other[k], alone[k]) for k in alone)  # the seed does matter


# ---------------------------------------------------------------- the study a default sweep leaves


def searcher_study(experiment: Path):
    """The Optuna study in the searcher state Tune saved for the experiment."""
    (state_file,) = experiment.glob("searcher-state-*.pkl")
    state = pickle.loads(state_file.read_bytes())
    while "_ot_study" not in state:  # a wrapping searcher saves the inner one's state
        state = state.get("searcher", state).__dict__
    return state["_ot_study"]


@pytest.fixture(scope="module")
def default_sweep_dir(tmp_path_factory) -> Path:
    """A default-budget tfkd_reg sweep on digits, 4 epochs, default sampler and rungs, tracked
    in the working folder's mlflow.db: its results folder."""
    workdir = tmp_path_factory.mktemp("study")
    done = tune_main(
        "--mode tfkd_reg --dataset digits --model resnet8 --epochs 4 --name study",
        "--storage",
        str(workdir / "ray_results"),
        cwd=workdir,
    )
    assert_ok(done)
    return workdir / "ray_results" / "study"


@pytest.fixture(scope="module")
def default_sweep(default_sweep_dir):
    return searcher_study(default_sweep_dir)


def tune_results(experiment: Path) -> dict[str, list[dict]]:
    """Each trial's results as Tune wrote them (result.json, one line per report), by trial id."""
    found = {}
    for path in experiment.glob("*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if lines:
            found[lines[0]["trial_id"]] = lines
    return found


@pytest.mark.slow
def test_trials_share_processes_and_each_run_holds_its_own_epochs_once(default_sweep_dir):
    """Actors are reused between trials (no new process, imports and dataset per trial), and a
    reused actor's trial, after one ASHA stopped, logs exactly the epochs Tune saw it report."""
    from mlflow import MlflowClient

    results = tune_results(default_sweep_dir)
    assert len(results) == 8
    processes = {lines[0]["pid"] for lines in results.values()}
    assert len(processes) < len(results)
    client = MlflowClient(f"sqlite:///{default_sweep_dir.parent.parent / 'mlflow.db'}")
    runs = {
        run.data.tags["tfkd.ray_trial_id"]: run
        for experiment in client.search_experiments()
        for run in client.search_runs([experiment.experiment_id])
        if run.data.tags.get("tfkd.kind") == "trial"
    }
    assert set(runs) == set(results)
    for trial_id, lines in results.items():
        history = client.get_metric_history(runs[trial_id].info.run_id, "val_accuracy")
        assert sorted(m.step for m in history) == [line["epoch"] for line in lines], trial_id
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
            [line["val_accuracy"] for line in lines]
        )


@pytest.mark.slow
def test_a_default_sweep_proposes_most_trials_from_its_model(default_sweep):
    from optuna.trial import TrialState

    trials = sorted(default_sweep.trials, key=lambda t: t.number)
    assert len(trials) == 8
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    startup = tuner.startup_trials(8)

    def modelled(trial) -> bool:
        """Proposed when the sampler had its start-up count of finished trials to model."""
        seen = [t for t in finished if t.datetime_complete <= trial.datetime_start]
        return trial.number > 0 and len(seen) >= startup

    assert sum(map(modelled, trials)) > len(trials) / 2


@pytest.mark.slow
def test_trials_asha_stopped_are_pruned_with_their_intermediate_values(default_sweep):
    from optuna.trial import TrialState

    judged = set(rungs.epochs_of(rungs.DEFAULT_RUNGS, {"mode": "baseline", "epochs": 4}))
    pruned = [t for t in default_sweep.trials if t.state == TrialState.PRUNED]
    complete = [t for t in default_sweep.trials if t.state == TrialState.COMPLETE]
    assert pruned, "ASHA stopped no trial"
    for trial in pruned:  # Optuna gives a pruned trial its last intermediate value
        assert max(trial.intermediate_values) in judged  # stopped at a rung, before the end
        assert trial.value == trial.intermediate_values[max(trial.intermediate_values)]
        assert sorted(trial.intermediate_values) == list(
            range(1, len(trial.intermediate_values) + 1)
        )
    for trial in complete:
        assert max(trial.intermediate_values) == 4
        assert trial.value == trial.intermediate_values[4]


def plan_of(*words: str):
    from tfkd.cli.parser import build_parser
    from tfkd.sweep.plan import make_plan

    base = "--mode tfkd_reg --dataset fake --model resnet18 --epochs 30".split()
    return make_plan(build_parser().parse_args([*base, *words]))


def test_setting_both_weights_fixes_them_and_the_originals_keys_follow():
    """Older sweeps' coordinates still set alpha and multiplier, and drop the smoothing axis."""
    plan = plan_of("--set", "ce_weight=0.5", "--set", "kl_weight=2")
    assert list(plan.space.params) == ["lr_factor"]
    trial = TrialConfig.from_dict(plan.first_trial())
    assert (trial.alpha, trial.multiplier) == (0.5, 4.0)


def test_the_default_sweep_judges_on_the_schedule_and_grace_period_is_geometric():
    assert plan_of().rungs == (lr_drops(30)[1] + 1,)
    assert plan_of("--grace-period", "2").rungs == ()


def asha_of(num_samples: int, *words: str):
    """The scheduler a sweep of `num_samples` trials gets (no Ray cluster: only built)."""
    from tfkd.sweep.spec import SweepSpec

    plan = plan_of(*words)
    spec = SweepSpec(
        name="asha",
        base_config=plan.config,
        space=plan.space,
        num_samples=num_samples,
        grace_period=int(words[1]) if words[:1] == ("--grace-period",) else None,
        rungs=plan.rungs,
    )
    scheduler = tuner.scheduler(spec)
    scheduler.set_search_properties("val_accuracy", "max")
    return scheduler


def reduction_at_each_rung(scheduler) -> set[float]:
    return {bracket.rf for bracket in scheduler._brackets}


def test_a_large_sweep_keeps_the_top_quarter_at_the_default_rung_and_others_the_top_half():
    assert reduction_at_each_rung(asha_of(8)) == {2}
    assert reduction_at_each_rung(asha_of(31)) == {2}
    assert reduction_at_each_rung(asha_of(32)) == {4}
    assert reduction_at_each_rung(asha_of(256)) == {4}
    assert reduction_at_each_rung(asha_of(32, "--rungs", "after2")) == {4}  # the same rung
    # another rung, several rungs (the factors would compound), geometric rungs: the top half
    assert reduction_at_each_rung(asha_of(32, "--rungs", "after3")) == {2}
    assert reduction_at_each_rung(asha_of(32, "--rungs", "after1,after2")) == {2}
    assert reduction_at_each_rung(asha_of(32, "--grace-period", "2")) == {2}


def test_a_trial_in_the_top_half_but_not_the_top_quarter_stops_only_in_a_large_sweep():
    """31 trials reach the default rung, each better than all before it (none stops); the 32nd
    ranks 12th of 32 there: an 8-trial sweep keeps it, a 32-trial sweep (resumed half-way)
    stops it."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    def decisions(scheduler, scores, first=0):
        rung = scheduler._brackets[0]._rungs[0][0]
        out = []
        for n, score in enumerate(scores, start=first):
            trial = SimpleNamespace(trial_id=f"t{n}")
            scheduler.on_trial_add(None, trial)
            out.append(
                scheduler.on_trial_result(None, trial, {"epoch": rung, "val_accuracy": score})
            )
        return out

    earlier, newcomer = [float(n) for n in range(1, 32)], 20.0
    assert sorted([*earlier, newcomer], reverse=True).index(newcomer) + 1 == 12  # of 32
    small, large = asha_of(8), asha_of(32)
    assert (
        set(decisions(small, earlier))
        == set(decisions(large, earlier))
        == {TrialScheduler.CONTINUE}
    )
    resumed = pickle.loads(pickle.dumps(large))  # Tune's saved Tuner holds the scheduler
    resumed.load(large.state())
    assert decisions(small, [newcomer], first=31) == [TrialScheduler.CONTINUE]
    assert decisions(resumed, [newcomer], first=31) == [TrialScheduler.STOP]


# ---------------------------------------------------------------- the GP sampler (--search-alg gp)


def gp_study(search_seed: int):
    """Eight trials told to the `--search-alg gp` searcher one after the other, as Tune tells
    them; the third stopped at epoch 1 (as ASHA stops one). Returns the study and the configs."""
    from tfkd.sweep.spec import METRIC, MODE, SweepSpec, param_space

    plan = plan_of("--search-alg", "gp")
    spec = SweepSpec(
        name="gp",
        base_config=plan.config,
        space=plan.space,
        search_alg="gp",
        num_samples=8,
        search_seed=search_seed,
        first_point=plan.first_point,
    )
    searcher = tuner.searcher(spec)
    searcher.set_search_properties(METRIC, MODE, param_space(spec))
    configs = []
    for number in range(8):
        config = searcher.suggest(f"t{number}")
        configs.append({k: config[k] for k in plan.space.params})
        # any smooth score with an optimum inside the space
        smoothing, factor = config["smoothing"], config["lr_factor"]
        score = 90 - (math.log(factor) - 0.5) ** 2 - (smoothing - 0.2) ** 2 * 9
        epoch = 1 if number == 2 else spec.epochs
        searcher.on_trial_complete(f"t{number}", {METRIC: score, "epoch": epoch})
    return searcher._ot_study, configs


def test_the_gp_sampler_proposes_from_its_model_after_its_start_up_trials_seeded():
    import optuna
    from optuna.trial import TrialState

    study, configs = gp_study(search_seed=3)
    assert isinstance(study.sampler.model, optuna.samplers.GPSampler)
    trials = sorted(study.trials, key=lambda t: t.number)
    startup = tuner.startup_trials(8)
    from_model = [t.number for t in trials if "gp:relative_params:0" in t.system_attrs]
    assert from_model == list(range(startup, 8))  # the preset and start-up draws are not
    assert configs[0] == plan_of().first_point  # the preset is the first point
    assert [t.state for t in trials].count(TrialState.PRUNED) == 1
    assert trials[2].state == TrialState.PRUNED and list(trials[2].intermediate_values) == [1]
    assert gp_study(search_seed=3)[1] == configs  # --search-seed makes it repeatable
    assert gp_study(search_seed=4)[1][startup:] != configs[startup:]


def test_every_search_alg_the_command_line_offers_has_a_searcher():
    from tfkd.cli.parser import build_parser

    (action,) = [a for a in build_parser()._actions if a.dest == "search_alg"]
    assert set(action.choices) == set(tuner.SEARCHERS)
