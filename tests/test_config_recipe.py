"""Config validation and the paper's learning-rate schedule."""

import pytest
import torch

from tfkd.core import recipe
from tfkd.core.config import TrialConfig


def test_defaults_and_round_trip():
    cfg = TrialConfig.from_dict({"mode": "tfkd_reg", "model": "resnet8", "dataset": "digits"})
    assert cfg.temperature == 20.0 and cfg.semantics == "reference"
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(dataclasses_frozen_error()):
        cfg.alpha = 0.5  # type: ignore[misc]


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_values_from_yaml_ray_and_mlflow_are_coerced():
    cfg = TrialConfig.from_dict(
        {
            "mode": "kd",
            "epochs": 3.0,
            "alpha": 1,
            "amp": "false",
            "teacher_checkpoint": None,
            "temperature": "4",
        }
    )
    assert cfg.epochs == 3 and cfg.alpha == 1.0 and cfg.amp is False
    assert cfg.teacher_checkpoint == "" and cfg.temperature == 4.0


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"mode": "kd", "temprature": 3}, "temprature"),
        ({"mode": "nope"}, "mode"),
        ({"mode": "kd", "model": "vgg99"}, "model"),
        ({"mode": "kd", "dataset": "mnist"}, "dataset"),
        ({"mode": "kd", "alpha": 1.5}, "alpha"),
        ({"mode": "kd", "temperature": 0}, "temperature"),
        ({"mode": "kd", "correct_prob": 1.0}, "correct_prob"),
        ({"mode": "kd", "epochs": 0}, "epochs"),
        ({"mode": "kd", "epochs": 2.5}, "epochs"),
        ({"mode": "kd", "semantics": "mine"}, "semantics"),
        ({"mode": "kd", "val_fraction": 1.0}, "val_fraction"),
        ({"mode": "kd", "lr_milestones": "0.8,0.3"}, "lr_milestones"),
        ({"mode": "kd", "device": "tpu"}, "device"),
        ({"mode": "kd", "lr": float("nan")}, "lr"),
        ({"model": "resnet8"}, "mode"),
    ],
)
def test_bad_values_name_the_key(values, key):
    with pytest.raises(ValueError, match=f"'{key}'|{key}"):
        TrialConfig.from_dict(values)


def lrs_per_epoch(cfg, steps_per_epoch):
    model = torch.nn.Linear(2, 2)
    opt = recipe.build_optimizer(model, cfg)
    sched = recipe.build_scheduler(opt, cfg, steps_per_epoch)
    seen = []
    for _ in range(cfg.epochs):
        seen.append(opt.param_groups[0]["lr"])  # lr at the start of each epoch
        for _ in range(steps_per_epoch):
            opt.step()
            sched.step()
    return seen


def test_schedule_matches_the_paper():
    cfg = TrialConfig.from_dict({"mode": "baseline", "epochs": 200, "batch_size": 64})
    lrs = lrs_per_epoch(cfg, steps_per_epoch=2)
    base = 0.1 * 64 / 128
    assert lrs[0] == pytest.approx(base / 2)  # first warm-up step
    assert lrs[1] == pytest.approx(base)  # warm-up over after one epoch
    assert lrs[59] == pytest.approx(base)
    assert lrs[60] == pytest.approx(base * 0.2)
    assert lrs[119] == pytest.approx(base * 0.2)
    assert lrs[120] == pytest.approx(base * 0.04)
    assert lrs[160] == pytest.approx(base * 0.008)
    assert lrs[199] == pytest.approx(base * 0.008)
    assert recipe.milestone_epochs(cfg) == [60, 120, 160]


def test_warmup_is_linear_within_the_first_epoch():
    cfg = TrialConfig.from_dict({"mode": "baseline", "epochs": 10})
    model = torch.nn.Linear(2, 2)
    opt = recipe.build_optimizer(model, cfg)
    sched = recipe.build_scheduler(opt, cfg, steps_per_epoch=4)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    steps = [b - a for a, b in zip(seen, seen[1:], strict=False)]
    assert seen[0] == pytest.approx(0.1 / 4)  # starts at lr / warm-up steps
    assert steps == pytest.approx([steps[0]] * 4)  # equal increments: linear
    assert seen[4] == pytest.approx(0.1)  # full rate once the first epoch is over
