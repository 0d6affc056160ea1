"""run_trial: every mode trains, the per-epoch report, exact resume, and a NaN guard."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tfkd.core import checkpoint, modes
from tfkd.core.config import TrialConfig
from tfkd.core.train import NonFiniteLossError, load_teacher, run_trial

from conftest import test_accuracy_of_weights

REPORTED = {
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_ece",
    "val_nll",
    "lr",
    "epoch_seconds",
    "images_per_second",
}
TESTED = {"test_accuracy", "test_ece", "test_nll"}
DATASETS = {"fake": {"dataset": "fake", "fake_size": 256}, "digits": {"dataset": "digits"}}


def base(dataset: str, **extra) -> dict:
    return {
        "model": "resnet8",
        "epochs": 2,
        "batch_size": 64,
        "data_dir": "unused",
        **DATASETS[dataset],
        **extra,
    }


class Recorder:
    """A `report` callback that keeps the metrics and copies the checkpoints it is given."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.metrics = folder, []

    def __call__(self, metrics: dict, checkpoint_dir: str | None) -> None:
        self.metrics.append(dict(metrics))
        shutil.copytree(checkpoint_dir, self.folder / f"epoch-{metrics['epoch']}")

    def checkpoint(self, epoch: int) -> Path:
        return self.folder / f"epoch-{epoch}" / checkpoint.CHECKPOINT_FILE


# Two epochs on digits that learn: batch 32 (lr 0.4 x 32/128 = 0.1), no warm-up; the modes
# with a KL term to a teacher (or tfkd_reg's virtual one) at Hinton's T = 4 and an even split of
# CE and KL (their defaults, T = 20 and 95% KL, learn little in two epochs)
LEARNS = {"batch_size": 32, "lr": 0.4, "warmup_epochs": 0}
DISTILLS = {"temperature": 4.0, "alpha": 0.5}
CHANCE = 10.0  # digits: 10 classes


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A checkpoint written by a baseline trial on digits (well above chance)."""
    recorder = Recorder(tmp_path_factory.mktemp("teacher-digits"))
    run_trial({"mode": "baseline", **base("digits", **LEARNS)}, recorder)
    return recorder.checkpoint(2)


@pytest.mark.parametrize("mode", modes.names())
def test_every_mode_trains_two_epochs(mode, teacher, tmp_path):
    """Each mode learns: its second epoch trains better than its first, and its model is far
    above chance on the validation and test splits; it reports every metric and checkpoints."""
    needs_teacher = modes.get(mode).needs_teacher
    distills = needs_teacher or mode == "tfkd_reg"  # a KL term to a (virtual) teacher
    extra = {"teacher_checkpoint": str(teacher)} if needs_teacher else {}
    extra |= DISTILLS if distills else {}
    recorder = Recorder(tmp_path)
    final = run_trial({"mode": mode, **base("digits", **LEARNS, **extra)}, recorder)
    first, second = recorder.metrics
    assert [first["epoch"], second["epoch"]] == [1, 2]
    assert REPORTED <= set(first) and not TESTED & set(first)
    assert REPORTED | TESTED <= set(final)
    assert second["train_accuracy"] > first["train_accuracy"]
    assert final["val_accuracy"] > 3 * CHANCE and final["test_accuracy"] > 3 * CHANCE
    if distills:
        assert final["train_kl"] != 0.0
    assert recorder.checkpoint(2).is_file()


def test_teacher_is_frozen_and_in_eval_mode(teacher):
    cfg = TrialConfig.from_dict({"mode": "kd", **base("fake", teacher_checkpoint=str(teacher))})
    model = load_teacher(cfg, 10, torch.device("cpu"))
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_resumed_trial_ends_with_the_same_weights(tmp_path):
    config = {"mode": "tfkd_reg", **base("fake", epochs=3)}
    straight = Recorder(tmp_path / "straight")
    run_trial(config, straight)
    resumed = Recorder(tmp_path / "resumed")
    run_trial(config, resumed, resume_from=str(straight.checkpoint(2)))
    assert [m["epoch"] for m in resumed.metrics] == [3]
    a = torch.load(straight.checkpoint(3), weights_only=True)
    b = torch.load(resumed.checkpoint(3), weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert resumed.metrics[0]["val_accuracy"] == straight.metrics[2]["val_accuracy"]
    # the epoch the validation split chose (and its weights, tested at the end) survive too
    assert resumed.metrics[0]["reported_epoch"] == straight.metrics[2]["reported_epoch"]
    assert resumed.metrics[0]["test_accuracy"] == straight.metrics[2]["test_accuracy"]


def test_paper_protocol_reports_the_test_maximum_over_epochs_and_its_epoch(tmp_path):
    config = {"mode": "baseline", **base("fake", epochs=3, protocol="paper", val_fraction=0.0)}
    recorder = Recorder(tmp_path)
    final = run_trial(config, recorder)
    tests = [m["test_accuracy"] for m in recorder.metrics]
    assert len(tests) == 3 and not any("val_accuracy" in m for m in recorder.metrics)
    for epoch, m in enumerate(recorder.metrics, start=1):
        assert m["paper_test_accuracy"] == max(tests[:epoch])
        assert m["reported_epoch"] == tests.index(max(tests[:epoch])) + 1
    assert final["test_accuracy"] == tests[-1]  # the final epoch's, next to the maximum
    chosen = recorder.checkpoint(final["reported_epoch"])
    assert test_accuracy_of_weights(chosen, config) == pytest.approx(final["paper_test_accuracy"])


def test_holdout_tests_the_weights_of_the_epoch_the_validation_split_chose(tmp_path):
    config = {"mode": "baseline", **base("fake", epochs=3)}
    recorder = Recorder(tmp_path)
    final = run_trial(config, recorder)
    vals = [m["val_accuracy"] for m in recorder.metrics]
    assert final["reported_epoch"] == vals.index(max(vals)) + 1
    assert all("test_accuracy" not in m for m in recorder.metrics[:-1])  # tested once, at the end
    chosen = recorder.checkpoint(final["reported_epoch"])
    assert test_accuracy_of_weights(chosen, config) == pytest.approx(final["test_accuracy"])
    for epoch in range(1, 4):  # one copy of the weights per checkpoint: the selection is numbers
        saved = torch.load(recorder.checkpoint(epoch), weights_only=True)["selection"]
        assert set(saved) == {"epoch", "score", "chosen_test"}, set(saved)
        numbers = [saved["epoch"], saved["score"], *(saved["chosen_test"] or {}).values()]
        assert all(isinstance(v, (int, float)) for v in numbers), saved


def test_paper_protocol_has_no_validation_split():
    with pytest.raises(ValueError, match="val_fraction.*protocol 'paper'.*val_fraction=0"):
        TrialConfig.from_dict({"mode": "baseline", "protocol": "paper", "val_fraction": 0.1})


def test_non_finite_loss_stops_the_trial_naming_epoch_and_step():
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step \d+"):
        run_trial({"mode": "baseline", **base("fake", lr=1e12, warmup_epochs=0)})


class Payload:
    """An arbitrary object: loading a checkpoint must never unpickle one."""


def test_checkpoints_never_unpickle_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Payload()}, path)
    with pytest.raises(ValueError, match="not a weights-only checkpoint.*torch.save"):
        checkpoint.load(path)


def test_checkpoint_writes_are_atomic(tmp_path):
    target = checkpoint.save_atomic({"model": {"w": torch.ones(2)}}, tmp_path / "c.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert torch.equal(checkpoint.load(target)["model"]["w"], torch.ones(2))


def test_teacher_with_other_classes_is_rejected(teacher, tmp_path):
    with pytest.raises(ValueError, match="10 classes"):
        run_trial(
            {
                "mode": "kd",
                "model": "resnet8",
                "dataset": "fake",
                "fake_size": 64,
                "epochs": 1,
                "warmup_epochs": 0,
                "teacher_checkpoint": str(teacher),
            },
            dataset=_hundred_class_dataset(),
        )


def _hundred_class_dataset():
    from tfkd.core import data

    fake = data.load("fake", "unused", fake_size=256)

    def relabel(split: data.Split) -> data.Split:
        return data.Split(
            images=split.images,
            labels=split.labels * 10,
            mean=split.mean,
            std=split.std,
            augment=split.augment,
        )

    return data.Dataset(
        name="fake100",
        num_classes=100,
        train=relabel(fake.train),
        val=relabel(fake.val),
        test=relabel(fake.test),
    )


@pytest.mark.slow
def test_digits_resnet8_reaches_97_percent_on_cpu():
    """Real data (scikit-learn's digits), measured: ~1.5 minutes on 2 CPU cores."""
    final = run_trial(
        {
            "mode": "baseline",
            "model": "resnet8",
            "dataset": "digits",
            "epochs": 30,
            "batch_size": 64,
            "data_dir": "unused",
        }
    )
    assert final["test_accuracy"] >= 97.0, final
