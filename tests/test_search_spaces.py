"""The shipped search spaces: coordinates that mean the same at any number of classes, and the
original's presets as their first points (converted) or, with --fixed on their dataset, as written.

Every expected loss here is computed independently of tfkd's losses and coordinate layer:
torch's cross-entropy and KL divergence on the equations the YAML headers state.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tfkd.core import modes
from tfkd.core.config import TrialConfig
from tfkd.sweep import search_space

KD_MODES = ("kd", "rekd", "dekd", "tfkd_self")
DATASET_OF = {10: "cifar10", 100: "cifar100"}  # a dataset with K classes (no data is read)
REFERENCE = Path(__file__).resolve().parent  # original_hparams.csv: a copy of reference/


def batch(k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 student logits (requiring grad), labels and teacher logits on k classes."""
    gen = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(32, k, generator=gen, dtype=torch.float64)).requires_grad_()
    teacher = 3 * torch.randn(32, k, generator=gen, dtype=torch.float64)
    return logits, torch.randint(0, k, (32,), generator=gen), teacher


def tfkd_loss_and_grad(config: dict, logits, labels, teacher):
    cfg = TrialConfig.from_dict(config)
    logits.grad = None
    loss = modes.get(cfg.mode).loss(logits, labels, teacher, cfg).total
    loss.backward()
    return loss.detach(), logits.grad.detach().clone()


def loss_and_grad(fn, logits):
    logits.grad = None
    loss = fn(logits)
    loss.backward()
    return loss.detach(), logits.grad.detach().clone()


def hinton(logits, labels, teacher, share: float, t: float):
    """(1 - lambda) CE + lambda T^2 KL(p_T^teacher || p_T^student), KL summed over classes and
    averaged over the batch."""
    kl = F.kl_div(F.log_softmax(logits / t, 1), F.softmax(teacher / t, 1), reduction="batchmean")
    return (1 - share) * F.cross_entropy(logits, labels) + share * t * t * kl


def design(labels, k: int, correct_prob: float) -> torch.Tensor:
    """The virtual teacher's p^d, built with one_hot (not tfkd's scatter)."""
    onehot = F.one_hot(labels, k).double()
    return onehot * correct_prob + (1 - onehot) * (1 - correct_prob) / (k - 1)


@pytest.mark.parametrize("k", [10, 100])
@pytest.mark.parametrize("semantics", ["reference", "paper"])
@pytest.mark.parametrize("mode", KD_MODES)
def test_kd_share_is_hintons_loss_at_10_and_100_classes(mode, semantics, k):
    """kd_share lambda sets alpha and multiplier so that the loss and its gradient are Hinton's
    per-sample form, whatever K and whatever the semantics."""
    logits, labels, teacher = batch(k)
    for share, t in [(0.0, 4.0), (0.3, 1.0), (0.7, 20.0), (1.0, 6.0)]:
        config = {"mode": mode, "dataset": DATASET_OF[k], "semantics": semantics,
                  "kd_share": share, "temperature": t}  # fmt: skip
        mine = tfkd_loss_and_grad(config, logits, labels, teacher)
        theirs = loss_and_grad(lambda z: hinton(z, labels, teacher, share, t), logits)  # noqa: B023
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("k", [10, 100])
def test_smoothing_is_label_smoothing_at_scale_one_at_10_and_100_classes(k):
    """The reference tfkd_reg at `smoothing` epsilon has the gradient of label smoothing with
    epsilon (1 - eps on the true class), whatever the temperature and correct_prob."""
    logits, labels, _ = batch(k, seed=1)
    for eps, t, p in [(0.0, 20.0, 0.99), (0.1, 1.0, 0.9), (0.3, 40.0, 0.99), (0.5, 5.0, 0.6)]:
        config = {"mode": "tfkd_reg", "dataset": DATASET_OF[k], "smoothing": eps,
                  "temperature": t, "correct_prob": p}  # fmt: skip
        _, mine = tfkd_loss_and_grad(config, logits, labels, None)
        smoothed = lambda z: F.cross_entropy(z, labels, label_smoothing=eps * k / (k - 1))  # noqa: E731, B023
        _, theirs = loss_and_grad(smoothed, logits)
        torch.testing.assert_close(mine, theirs, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("k", [10, 100])
def test_kd_share_of_the_papers_tfkd_reg_is_the_kl_weight_over_t_squared(k):
    """Paper form: (1 - lambda) CE + lambda T^2 KL_batchmean(softmax(p^d/T) || softmax(z/T))."""
    logits, labels, _ = batch(k, seed=2)
    for share, t in [(0.05, 20.0), (0.5, 4.0), (1.0, 1.0)]:
        config = {"mode": "tfkd_reg", "dataset": DATASET_OF[k], "semantics": "paper",
                  "kd_share": share, "temperature": t, "correct_prob": 0.99}  # fmt: skip
        mine = tfkd_loss_and_grad(config, logits, labels, None)
        target = design(labels, k, 0.99)  # as logits: softmax(p^d / T) is the teacher
        theirs = loss_and_grad(lambda z: hinton(z, labels, target, share, t), logits)  # noqa: B023
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-10)


def test_a_coordinate_of_another_form_or_mode_is_one_clear_error():
    with pytest.raises(ValueError, match="'smoothing' is not a coordinate of mode 'tfkd_reg' un"):
        TrialConfig.from_dict({"mode": "tfkd_reg", "semantics": "paper", "smoothing": 0.1})
    with pytest.raises(ValueError, match="'kd_share' is not a coordinate of mode 'baseline'"):
        TrialConfig.from_dict({"mode": "baseline", "kd_share": 0.1})
    with pytest.raises(ValueError, match="'alpha' = 0.5 disagrees"):
        TrialConfig.from_dict({"mode": "kd", "kd_share": 0.2, "alpha": 0.5})
    with pytest.raises(ValueError, match="moves at most"):  # u's off-true mass on 2 classes
        TrialConfig.from_dict({"mode": "tfkd_reg", "dataset": "cifar10", "smoothing": 0.95})


def original_rows(mode: str) -> list[dict[str, str]]:
    lines = (REFERENCE / "original_hparams.csv").read_text().splitlines()
    rows = csv.DictReader(line for line in lines if not line.startswith("#"))
    return [r for r in rows if r["mode"] == mode]


def original_config(mode: str, row: dict[str, str]) -> dict:
    return {
        "mode": mode,
        "dataset": "cifar100",
        "temperature": float(row["temperature"]),
        "alpha": float(row["alpha"]),
        "multiplier": float(row["multiplier"] or 1.0),
        "semantics": "reference",
        **({"correct_prob": float(row["correct_prob"])} if row["correct_prob"] else {}),
    }


def original_scale(mode: str, config: dict) -> float:
    """The original's loss scale at K = 100: the CE's weight plus the KL's per-sample weight
    (reference KL = batchmean / K)."""
    return (1 - config["alpha"]) + config["alpha"] * config["multiplier"] / 100


@pytest.mark.parametrize("mode", ("kd", "rekd", "dekd", "tfkd_self", "tfkd_reg"))
def test_the_original_presets_are_first_points_converted_and_fixed_points_as_written(mode):
    """Each original row's first point (searched coordinates, lr_factor 1) is the original's
    loss over its loss scale at CIFAR-100's 100 classes (the scale is what the conversion drops:
    the gradients are parallel); `original_point` (--fixed on cifar100) is the original's loss."""
    space = search_space.load(search_space.default_path(mode), mode)
    logits, labels, teacher = batch(100, seed=3)
    rows = original_rows(mode)
    assert rows
    for row in rows:
        teacher_name = row["teacher"] if mode != "tfkd_self" else ""
        point = space.first_point(row["model"], teacher_name, "cifar100")
        assert all(space.params[k].contains(v) for k, v in point.items())
        assert point["lr_factor"] == 1.0
        fixed = {k: v for k, v in space.defaults.items() if k not in space.params}
        fixed = {k: v for k, v in fixed.items() if k not in ("kd_share", "smoothing")}
        fixed.update({k: float(row[k]) for k in ("temperature", "correct_prob") if row[k]})
        original = original_config(mode, row)
        theirs = tfkd_loss_and_grad(original, logits, labels, teacher)
        searched = {"mode": mode, "dataset": "cifar100", **fixed, **point}
        mine = tfkd_loss_and_grad(searched, logits, labels, teacher)
        scale = original_scale(mode, original)
        torch.testing.assert_close(mine[1] * scale, theirs[1], rtol=1e-6, atol=1e-12)
        written = space.original_point(row["model"], teacher_name, "cifar100")
        assert written["alpha"] == original["alpha"] and written["lr_factor"] == 1.0
        as_written = {"mode": mode, "dataset": "cifar100", **fixed, **written}
        torch.testing.assert_close(tfkd_loss_and_grad(as_written, logits, labels, teacher), theirs)


PRESET_MODES = ("baseline", "kd", "rekd", "dekd", "tfkd_self", "tfkd_reg", "lsr")
VALUE_COLUMNS = (
    "temperature",
    "alpha",
    "multiplier",
    "correct_prob",
    "epsilon",
    "batch_size",
    "lr",
)


def as_reference_row(mode: str, row: dict) -> dict[str, str]:
    """A shipped preset row in the reference CSV's columns (tfkd_self's teacher is the model)."""
    teacher = row["model"] if mode == "tfkd_self" else row.get("teacher", "")
    values = {k: str(row[k]) if k in row else "" for k in VALUE_COLUMNS}
    return {"mode": mode, "model": row["model"], "teacher": teacher, **values,
            "provenance": row["provenance"], "source": row["source"]}  # fmt: skip


def reference_row(row: dict[str, str]) -> dict[str, str]:
    """A CSV row with its numbers as YAML writes them (128 for 128, 1.0 for 1.0)."""
    return {k: (str(yaml_number(v)) if k in VALUE_COLUMNS and v else v) for k, v in row.items()}


def yaml_number(text: str) -> int | float:
    return int(text) if text.isdigit() else float(text)


def test_every_shipped_preset_is_a_row_of_the_reference_with_its_provenance():
    """search_spaces/*.yaml and tests/original_hparams.csv hold the same rows, each saying
    whether it is the original's value (and from which params.json) or filled in (and why)."""
    shipped = [
        as_reference_row(mode, row)
        for mode in PRESET_MODES
        for row in search_space.load(search_space.default_path(mode), mode).presets
    ]
    reference = [reference_row(r) for mode in PRESET_MODES for r in original_rows(mode)]
    key = lambda r: (r["mode"], r["model"], r["teacher"])  # noqa: E731
    assert sorted(shipped, key=key) == sorted(reference, key=key)
    for row in shipped:
        assert row["provenance"] in ("original", "filled-in")
        if row["provenance"] == "original":
            assert row["source"].startswith("experiments/") and "params.json" in row["source"]


@pytest.mark.parametrize(
    ("mode", "model", "teacher"),
    [
        ("tfkd_self", "resnet50", "resnet50"),  # no multiplier in the original
        ("tfkd_reg", "densenet121", ""),
        ("tfkd_reg", "resnext29", ""),
        ("kd", "resnet18", "densenet121"),  # the original's config is broken
        ("rekd", "resnext29", "resnet18"),  # its only resnext29 config names mobilenet_v2
    ],
)
def test_the_issues_known_gaps_are_marked_filled_in(mode, model, teacher):
    space = search_space.load(search_space.default_path(mode), mode)
    assert space.filled_in(model, teacher).startswith("filled in, not the original's: ")


def test_a_teacher_without_its_own_row_and_a_model_without_one_say_so():
    kd = search_space.load(search_space.default_path("kd"), "kd")
    assert kd.filled_in("mobilenet_v2", "resnet18") == ""
    assert "with teacher resnet18" in kd.filled_in("mobilenet_v2", "shufflenet_v2")
    assert "no kd values for resnet8" in kd.filled_in("resnet8", "resnet18")


def test_dekd_presets_are_the_originals_kd_configs_of_the_pair():
    """Defective KD in the original is --pt_teacher on the pair's KD params.json: the resnet18
    rows alpha 0.6 at batch 64, the ResNeXt29-teacher rows batch 64 (resnet18_distill/
    resnet50_teacher and */resnext29_teacher)."""
    dekd = search_space.load(search_space.default_path("dekd"), "dekd")
    for teacher in ("resnet50", "resnext29"):
        assert dekd.preset_for("resnet18", teacher) == {
            "temperature": 20, "alpha": 0.6, "batch_size": 64, "lr": 0.1
        }  # fmt: skip
    assert dekd.preset_for("mobilenet_v2", "resnext29")["batch_size"] == 64
    assert dekd.preset_for("shufflenet_v2", "resnext29")["batch_size"] == 64
    assert dekd.preset_for("mobilenet_v2", "resnet18") == {
        "temperature": 20, "alpha": 0.95, "batch_size": 128, "lr": 0.1
    }  # fmt: skip


# ---------------------------------------------------------------- presets keyed by dataset


def plan_of(words: str):
    from tfkd.cli.parser import build_parser
    from tfkd.sweep.plan import make_plan

    return make_plan(build_parser().parse_args(words.split()))


def trial_of(plan) -> TrialConfig:
    return TrialConfig.from_dict(plan.first_trial())


def test_fixed_on_cifar100_trains_the_original_row_as_written():
    """dekd resnet18 <- resnet50: the original's alpha 0.6, T 20 at batch 64, lr 0.1 x 64/128."""
    plan = plan_of("--mode dekd --dataset cifar100 --model resnet18 --teacher resnet50 --fixed")
    trial = trial_of(plan)
    assert (trial.alpha, trial.multiplier, trial.temperature) == (0.6, 1.0, 20.0)
    assert trial.batch_size == 64 and trial.scaled_lr == pytest.approx(0.1 * 64 / 128)
    assert plan.preset_provenance == "original"


@pytest.mark.parametrize(
    ("dataset", "batch", "rate"),
    [("cifar10", 128, 0.1), ("digits", 128, 0.1), ("imagenet", 512, 0.1 * 512 / 256)],
)
def test_on_another_dataset_a_cifar100_row_gives_its_converted_loss_and_that_datasets_recipe(
    dataset, batch, rate
):
    """Not 'original': the row's batch 64 and lr stay on cifar100 (on imagenet they met its
    lr_batch 256 in a rate neither recipe uses); its loss serves converted (kd_share 0.0148 =
    the original's alpha 0.6 at K = 100), so the per-sample KL weight is the same at this K."""
    words = f"--mode dekd --dataset {dataset} --model resnet18 --teacher resnet50@epoch-50"
    plan = plan_of(f"{words} --fixed")
    trial = trial_of(plan)
    assert trial.batch_size == batch and trial.scaled_lr == pytest.approx(rate)
    k = {"cifar10": 10, "digits": 10, "imagenet": 1000}[dataset]
    # per-sample KL weight over the CE's: alpha m / K / (1 - alpha), as in the original at K = 100
    assert trial.alpha * trial.multiplier / k / (1 - trial.alpha) == pytest.approx(0.6 / 100 / 0.4)
    assert not plan.preset_provenance.startswith("original")
    assert "written for cifar100, not " + dataset in plan.preset_provenance
    assert f"{dataset}'s recipe" in plan.preset_provenance


def test_a_search_on_cifar100_starts_at_the_converted_row_and_says_what_was_dropped():
    plan = plan_of("--mode tfkd_self --dataset cifar100 --model resnet18")
    assert plan.first_point == {
        "temperature": 6, "kd_share": pytest.approx(0.475 / 0.525), "lr_factor": 1.0
    }  # fmt: skip
    assert plan.preset_provenance.startswith("original; its loss converted at cifar100")
    assert "loss scale 0.525 is dropped" in plan.preset_provenance


def test_a_row_written_for_the_dataset_wins_over_a_cifar100_row(tmp_path):
    """A user's file may hold rows for several datasets; each applies whole on its own."""
    path = tmp_path / "kd.yaml"
    path.write_text(
        "mode: kd\nparams:\n  kd_share: {distribution: uniform, low: 0, high: 1}\n"
        "defaults: {temperature: 4, kd_share: 0.5}\npresets:\n"
        "  - {dataset: cifar100, model: resnet8, alpha: 0.9, batch_size: 64}\n"
        "  - {dataset: cifar10, model: resnet8, kd_share: 0.3, batch_size: 32}\n"
    )
    base = f"--mode kd --model resnet8 --teacher resnet18 --search-space {path} --fixed"
    ten = plan_of(f"{base} --dataset cifar10")
    assert trial_of(ten).batch_size == 32 and trial_of(ten).alpha == pytest.approx(0.3)
    hundred = plan_of(f"{base} --dataset cifar100")
    assert trial_of(hundred).batch_size == 64 and trial_of(hundred).alpha == 0.9
    digits = plan_of(f"{base} --dataset digits")  # no digits row: the first, converted
    assert trial_of(digits).batch_size == 128  # digits' recipe
    assert digits.first_point["kd_share"] == pytest.approx(0.009 / 0.109)
