"""The shipped search spaces put their mass where Tf-KD trains.

For the KD losses the KL term pulls on the logits about kl_weight / K times as hard as the CE
(reference form; kl_weight in the paper's form; kl_weight = alpha * m). A search that spends
most of its samples at weights of several times the CE's is mostly training failures; these
tests sample each space and check where its mass lies, and that the original's presets are
still the original's losses.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from tfkd.core import modes
from tfkd.core.config import TrialConfig
from tfkd.sweep import search_space

KD_MODES = ("kd", "rekd", "dekd", "tfkd_self")
NUM_CLASSES = 10  # digits, CIFAR-10; CIFAR-100's K = 100 only lowers the weights
REFERENCE = Path(__file__).resolve().parent  # original_hparams.csv: a copy of reference/


def sample(param: search_space.Param, rng: np.random.Generator, n: int) -> np.ndarray:
    if param.distribution == "choice":
        return rng.choice(np.array(param.values, dtype=object), n)
    if param.distribution == "loguniform":
        return np.exp(rng.uniform(np.log(param.low), np.log(param.high), n))
    assert param.distribution == "uniform", param
    return rng.uniform(param.low, param.high, n)


def per_sample_kl_weight(points: dict[str, np.ndarray]) -> np.ndarray:
    """The KL's weight beside the CE's: kl_weight / K in the reference form."""
    return points["kl_weight"] / NUM_CLASSES


@pytest.mark.parametrize("mode", KD_MODES)
def test_kd_spaces_put_most_samples_at_a_moderate_kl_weight(mode):
    space = search_space.load(search_space.default_path(mode), mode)
    assert "semantics" not in space.params  # paper = reference with m / K: a redundant axis
    assert space.defaults["semantics"] == "reference"
    rng = np.random.default_rng(0)
    points = {name: sample(p, rng, 20_000) for name, p in space.params.items()}
    weight = per_sample_kl_weight(points)
    assert np.mean(weight <= 1.0) >= 0.6  # 0.68
    assert np.mean(weight > 5.0) <= 0.1  # 0.09


def original_rows(mode: str) -> list[dict[str, str]]:
    lines = (REFERENCE / "original_hparams.csv").read_text().splitlines()
    rows = csv.DictReader(line for line in lines if not line.startswith("#"))
    return [r for r in rows if r["mode"] == mode]


def loss_of(config: dict, logits, labels, teacher):
    cfg = TrialConfig.from_dict(config)
    return modes.get(cfg.mode).loss(logits, labels, teacher, cfg).total


@pytest.mark.parametrize("mode", ("kd", "rekd", "dekd", "tfkd_self", "tfkd_reg"))
def test_the_original_presets_stay_first_points_with_the_originals_loss(mode):
    """Each original row's first point, in the space's coordinates, is the original's loss."""
    space = search_space.load(search_space.default_path(mode), mode)
    gen = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(64, 10, generator=gen), 3 * torch.randn(64, 10, generator=gen)
    labels = torch.randint(0, 10, (64,), generator=gen)
    rows = original_rows(mode)
    assert rows
    for row in rows:
        point = space.first_point(row["model"], row["teacher"])
        assert all(space.params[k].contains(v) for k, v in point.items())
        fixed = {k: v for k, v in space.defaults.items() if k not in space.sets()}
        original = {
            "mode": mode,
            "temperature": float(row["temperature"]),
            "alpha": float(row["alpha"]),
            "multiplier": float(row["multiplier"] or 1.0),
            "semantics": "reference",
            **({"correct_prob": float(row["correct_prob"])} if row["correct_prob"] else {}),
        }
        mine = loss_of({"mode": mode, **fixed, **point}, logits, labels, teacher)
        theirs = loss_of(original, logits, labels, teacher)
        torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=0)


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
