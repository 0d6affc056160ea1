"""--resume refuses flags that differ from those the sweep started with, naming each."""

from __future__ import annotations

import argparse

import pytest

from tfkd.cli import saved_flags
from tfkd.core.errors import UserError

CONFIG = {"mode": "lsr", "dataset": "fake", "model": "resnet8", "data_dir": "/d", "fake_size": 64}
SPACE = "mode: lsr\nparams: {epsilon: {distribution: uniform, low: 0.01, high: 0.5}}\n"


def flags_of(config=CONFIG, space=SPACE, num_samples=8, epochs=4):
    args = argparse.Namespace(num_samples=num_samples, epochs=epochs, search_alg="optuna")
    return saved_flags.sweep_flags(args, {**config, "epochs": epochs}, space)


def test_resume_with_the_same_flags_is_accepted(tmp_path):
    saved_flags.check_or_save(str(tmp_path / "sweep"), False, flags_of())
    saved_flags.check_or_save(str(tmp_path / "sweep"), True, flags_of())


def test_resume_with_changed_data_and_search_flags_names_each(tmp_path):
    saved_flags.check_or_save(str(tmp_path / "sweep"), False, flags_of())
    changed = flags_of(
        config={**CONFIG, "fake_size": 128, "data_dir": "/other"},
        space=SPACE.replace("0.5", "0.4"),
        num_samples=16,
    )
    with pytest.raises(UserError) as refused:
        saved_flags.check_or_save(str(tmp_path / "sweep"), True, changed)
    message = str(refused.value)
    assert "\n" not in message
    for needle in (
        "--set fake_size was 64, now 128",
        "--data-dir was /d, now /other",
        "--num-samples was 8, now 16",
        "--search-space",
    ):
        assert needle in message, message
    assert "--epochs" not in message and "--model" not in message
