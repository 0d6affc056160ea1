"""--resume refuses flags that differ from those the sweep started with, naming each."""

from __future__ import annotations

import argparse
import json

import pytest

from tfkd.cli import saved_flags
from tfkd.cli.parser import parse_args
from tfkd.core.errors import UserError
from tfkd.sweep.plan import make_plan

from conftest import cli_args

CONFIG = {"mode": "lsr", "dataset": "fake", "model": "resnet8", "data_dir": "/d", "fake_size": 64}
SPACE = "mode: lsr\nparams: {epsilon: {distribution: uniform, low: 0.01, high: 0.5}}\n"


def flags_of(config=CONFIG, space=SPACE, num_samples=8, epochs=4):
    args = argparse.Namespace(num_samples=num_samples, epochs=epochs, search_alg="optuna")
    return saved_flags.sweep_flags(args, {**config, "epochs": epochs}, space)


def command_flags(*words: str) -> dict:
    """The flags a tune_main command line saves (parsed and planned as tune_main does)."""
    args = parse_args(cli_args(*words))
    plan = make_plan(args)
    return saved_flags.sweep_flags(args, plan.config, plan.space.text)


def test_resume_with_the_same_flags_is_accepted(tmp_path):
    """The same command line, parsed afresh with --resume, is accepted against the flags the
    sweep saved (values that went through JSON: None, floats, an absolute --data-dir), and the
    saved flags stay the start's."""
    folder = tmp_path / "sweep"
    words = f"--mode lsr --dataset digits --model resnet8 --epochs 4 --data-dir {tmp_path}"
    started = command_flags(words, "--name sweep --num-samples 3 --set val_fraction=0.2")
    saved_flags.check_or_save(str(folder), False, started)
    saved = (folder / saved_flags.FLAGS_FILE).read_text()
    assert set(json.loads(saved)) >= set(saved_flags.FLAG_NAMES)  # every flag resume compares
    resumed = command_flags(words, "--name sweep --num-samples 3 --set val_fraction=0.2 --resume")
    saved_flags.check_or_save(str(folder), True, resumed)  # accepted: no UserError
    assert (folder / saved_flags.FLAGS_FILE).read_text() == saved
    with pytest.raises(UserError, match="--set val_fraction was 0.2, now 0.1"):
        saved_flags.check_or_save(str(folder), True, command_flags(words, "--name sweep --resume"))


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
