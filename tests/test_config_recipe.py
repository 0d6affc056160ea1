"""Config validation and the paper's learning-rate schedule."""

import pytest
import torch

from tfkd.core import recipe
from tfkd.core.config import OPTIMIZER_NAMES, TrialConfig


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


@pytest.mark.parametrize(
    ("epochs", "first_decay", "decayed"),
    [(2, None, None), (3, 2, 0.1 * 0.2**3), (5, 2, 0.02), (6, 2, 0.02), (10, 3, 0.02)],
)
def test_a_short_schedule_trains_one_epoch_at_the_full_rate_before_the_first_decay(
    epochs, first_decay, decayed
):
    """Warm-up in epoch 1, then at least one whole epoch at lr before a decay (round(0.3 x 6) =
    2 used to decay as the warm-up ended: the full rate was never trained). With 3 epochs all
    three drops (30/60/80%) fall after epoch 2."""
    cfg = TrialConfig.from_dict({"mode": "baseline", "epochs": epochs})
    lrs = lrs_per_epoch(cfg, steps_per_epoch=2)  # the rate at the start of each epoch
    assert lrs[0] == pytest.approx(0.1 / 2) and lrs[1] == pytest.approx(0.1)
    if first_decay is None:
        assert lrs[1:] == pytest.approx([0.1] * (epochs - 1))
    else:
        assert lrs[1:first_decay] == pytest.approx([0.1] * (first_decay - 1))
        assert lrs[first_decay] == pytest.approx(decayed)


@pytest.mark.parametrize(("warmup", "epochs"), [(1, 1), (3, 3), (5, 2)])
def test_a_warmup_as_long_as_the_schedule_is_refused(warmup, epochs):
    with pytest.raises(ValueError, match="'warmup_epochs' = .* is not below epochs"):
        TrialConfig.from_dict({"mode": "baseline", "epochs": epochs, "warmup_epochs": warmup})
    assert TrialConfig.from_dict({"mode": "baseline", "epochs": epochs, "warmup_epochs": 0})


@pytest.mark.parametrize(
    ("mode", "teacher", "lr"), [("baseline", "", 0.1), ("kd", "resnet8", 1e-3)]
)
def test_the_cnn_trains_with_the_originals_adam(mode, teacher, lr):
    """main.py: optim.Adam(lr=learning_rate x batch_size / 128), no weight decay; learning_rate
    1e-1 in base_experiments/base_cnn/params.json, 1e-3 in kd_experiments/cnn_distill."""
    from tfkd.cli.parser import build_parser
    from tfkd.sweep.plan import make_plan

    words = f"--mode {mode} --dataset digits --model cnn --fixed --set batch_size=64"
    words += f" --teacher {teacher}" if teacher else ""
    config = make_plan(build_parser().parse_args(words.split())).first_trial()
    optimizer = recipe.build_optimizer(torch.nn.Linear(2, 2), TrialConfig.from_dict(config))
    assert type(optimizer) is torch.optim.Adam
    (group,) = optimizer.param_groups
    assert group["lr"] == pytest.approx(lr * 64 / 128) and group["weight_decay"] == 0
    assert group["betas"] == (0.9, 0.999)  # torch's defaults, as the original left them


def test_other_models_keep_sgd():
    cfg = TrialConfig.from_dict({"mode": "kd", "model": "resnet8"})
    optimizer = recipe.build_optimizer(torch.nn.Linear(2, 2), cfg)
    assert type(optimizer) is torch.optim.SGD and optimizer.param_groups[0]["momentum"] == 0.9
    assert set(recipe.OPTIMIZERS) == set(OPTIMIZER_NAMES)


@pytest.mark.parametrize(
    ("model", "mode", "kind"),
    [("resnet8", "kd", torch.optim.SGD), ("cnn", "baseline", torch.optim.Adam)],
)
def test_lr_factor_multiplies_the_recipes_rate_for_sgd_and_adam(model, mode, kind):
    """The searched learning rate is a factor on the recipe's (0.1 x batch / 128 here): the same
    meaning for every optimiser, model and dataset; 1 is the recipe."""
    for factor in (0.25, 1.0, 4.0):
        cfg = TrialConfig.from_dict(
            {"mode": mode, "model": model, "optimizer": kind.__name__.lower(), "batch_size": 64,
             "lr_factor": factor}
        )  # fmt: skip
        optimizer = recipe.build_optimizer(torch.nn.Linear(2, 2), cfg)
        assert type(optimizer) is kind
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * factor * 64 / 128)
    with pytest.raises(ValueError, match="'lr_factor'"):
        TrialConfig.from_dict({"mode": "kd", "lr_factor": 0})


def test_the_recipe_keys_cover_every_recipe():
    """A preset written for another dataset leaves these keys to the dataset's recipe."""
    from tfkd.core.config import RECIPE_KEYS

    for values in recipe.DATASET_RECIPES.values():
        assert set(values) <= set(RECIPE_KEYS)
    for pair in recipe.MODEL_RECIPES.values():
        assert all(set(values) <= set(RECIPE_KEYS) for values in pair)
