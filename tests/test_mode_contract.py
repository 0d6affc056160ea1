"""The contract of a mode (tfkd.core.modes.base): what every mode provides, and that a new mode
is one module plus one search-space YAML, with memory, progress and its own config key."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_steps import StandInGraphs

from tfkd.core import checkpoint, coordinates, data, modes, steps
from tfkd.core.config import TrialConfig, core_keys
from tfkd.core.evaluate import Evaluator
from tfkd.core.train import run_trial
from tfkd.sweep import search_space

# A whole new mode, as a user would write it: per-sample memory of its own past predictions,
# a schedule on the training's progress, its own config key, named terms.
TOY_MODULE = '''
"""toy_memory: CE + w * fraction * KL(memory || p), the memory the model's last prediction."""

import torch
import torch.nn.functional as F

from tfkd.core.modes import Memory, Mode, Param, Terms, register


def _weight(value: float) -> bool:
    """between 0 and 5"""
    return 0 <= value <= 5


@register
class ToyMemory(Mode):
    name = "toy_memory"
    description = "a test mode: pulls each prediction towards its previous one"
    memories = {"past": Memory(width="classes", doc="last softmax of each training sample")}
    params = (Param("toy_weight", float, 1.0, "weight of the pull", _weight),)
    term_names = ("ce", "pull")

    def terms(self, batch, progress):
        ce = F.cross_entropy(batch.logits.float(), batch.labels)
        log_p = F.log_softmax(batch.logits.float(), dim=1)
        if not batch.train:
            return Terms.weighted(ce=ce, pull=torch.zeros_like(ce))
        past = self.past.index_select(0, batch.indices)
        seen = (past.sum(dim=1) > 0).float()
        kl = (F.kl_div(log_p, past, reduction="none").sum(dim=1) * seen).mean()
        with torch.no_grad():
            self.past.index_copy_(0, batch.indices, log_p.exp())
        return Terms.weighted(ce=ce, pull=self.cfg.toy_weight * progress.fraction * kl)
'''
TOY_YAML = """
mode: toy_memory
description: 'a test mode'
params:
  toy_weight: {distribution: uniform, low: 0.0, high: 2.0}
defaults: {toy_weight: 1.0}
"""
CPU = torch.device("cpu")
DIGITS = {"dataset": "digits", "model": "resnet8", "batch_size": 64, "data_dir": "unused"}


def check_contract(cls: type[modes.Mode], yaml_path: Path) -> None:
    """Everything a mode must provide; each line names what is missing."""
    assert modes.get(cls.name) is cls, "registered under its name"
    assert cls.description.strip(), "a one-line description (--mode lists it)"
    assert isinstance(cls.needs_teacher, bool) and isinstance(cls.teacher_is_student, bool)
    assert cls.needs_teacher or not cls.teacher_is_student, "a self-teacher is a teacher"
    assert isinstance(cls.teacher_fixed, bool)
    assert all(isinstance(m, modes.Memory) for m in cls.memories.values()), "memories"
    assert cls.sampler in data.SAMPLERS, "a registered batch sampler"
    assert cls.term_names and all(isinstance(t, str) for t in cls.term_names), "term names"
    for param in cls.params:
        assert isinstance(param, modes.Param) and param.doc, f"{param.name}: documented"
        assert param.name not in core_keys(), f"{param.name}: shadows a core key"
        param.validate(param.default)
    space = search_space.load(yaml_path, cls.name)
    own = {p.name for p in cls.params}
    given = set(space.params) | set(space.defaults)
    decided = {f for key in given for f in coordinates.decided_by(cls.name, key)}
    assert own <= given | decided, "the YAML sets every own key (or a coordinate of it)"
    allowed = set(core_keys()) | set(coordinates.names()) | own
    assert set(space.params) | set(space.defaults) <= allowed, "only this mode's keys"


@pytest.mark.parametrize("name", modes.names())
def test_every_registered_mode_provides_the_contract(name):
    check_contract(modes.get(name), search_space.default_path(name))


@pytest.fixture
def toy_mode(tmp_path):
    """The toy mode's module imported from a temporary package folder (registers it)."""
    folder = tmp_path / "user_modes"
    folder.mkdir()
    (folder / "toy_memory.py").write_text(textwrap.dedent(TOY_MODULE))
    (tmp_path / "toy_memory.yaml").write_text(TOY_YAML)
    spec = importlib.util.spec_from_file_location("user_modes.toy_memory", folder / "toy_memory.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield modes.get("toy_memory"), tmp_path / "toy_memory.yaml"
    modes.unregister("toy_memory")
    sys.modules.pop(spec.name, None)


def test_a_new_mode_is_one_module_and_one_yaml_trains_and_resumes_its_memory(toy_mode, tmp_path):
    """Registered from its own module, it trains a digits trial above chance; its memory is in
    every checkpoint, and a trial resumed from epoch 2 ends with the same memory and weights."""
    cls, yaml_path = toy_mode
    check_contract(cls, yaml_path)
    config = {"mode": "toy_memory", **DIGITS, "epochs": 3, "toy_weight": 0.5}
    reports, saved = [], {}

    def keep(metrics, folder):
        target = tmp_path / f"epoch-{metrics['epoch']}"
        shutil.copytree(folder, target, dirs_exist_ok=True)
        saved[metrics["epoch"]] = target / checkpoint.CHECKPOINT_FILE
        reports.append(metrics)

    final = run_trial(config, keep)
    assert final["val_accuracy"] > 30.0, "learns (chance is 10%)"
    assert reports[0]["train_pull"] == 0.0  # nothing remembered during the first epoch
    assert reports[1]["train_pull"] > 0.0  # then the pull, scaled by the progress
    straight = checkpoint.load(saved[3])
    memory = straight["mode_state"]["past"]
    assert memory.shape == (len(data.load("digits", "unused").train), 10)
    assert torch.allclose(memory.sum(dim=1), torch.ones(memory.shape[0]))  # every sample seen

    run_trial(config, keep, resume_from=str(saved[2]))
    resumed = checkpoint.load(saved[3])
    assert torch.equal(memory, resumed["mode_state"]["past"])
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


def test_a_mode_key_is_validated_and_belongs_to_its_mode(toy_mode):
    assert TrialConfig.from_dict({"mode": "toy_memory"}).toy_weight == 1.0
    cfg = TrialConfig.from_dict({"mode": "toy_memory", "toy_weight": "2"})
    assert cfg.toy_weight == 2.0 and cfg.to_dict()["toy_weight"] == 2.0
    assert TrialConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"'toy_weight' = 9.0 is out of range .*between 0 and 5"):
        TrialConfig.from_dict({"mode": "toy_memory", "toy_weight": 9})
    with pytest.raises(ValueError, match=r"'toy_weight' \(mode toy_memory\) do not belong"):
        TrialConfig.from_dict({"mode": "kd", "toy_weight": 1.0})
    with pytest.raises(ValueError, match="is a core config key"):
        modes.register(
            type("Clash", (modes.Mode,), {"name": "clash", "description": "x",
                                          "params": (modes.Param("alpha", float, 0.5, "a"),)})
        )  # fmt: skip


def test_the_captured_step_undoes_the_warm_up_on_the_memory(toy_mode):
    """Eager and (stand-in) captured steps: same losses and the same memory after 12 steps."""
    cls = toy_mode[0]
    cfg = TrialConfig.from_dict({"mode": "toy_memory", "model": "resnet8", "epochs": 2})
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen),
         torch.randperm(40, generator=gen)[:8])
        for _ in range(12)
    ]  # fmt: skip
    results = []
    for build in (steps.EagerStep, lambda p: steps.GraphedStep(p, StandInGraphs())):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10))
        mode = cls(cfg, num_classes=10, train_size=40)
        progress = modes.Progress(CPU, 3, 6)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        meter = steps.Meter(torch.device("cpu"), mode.term_names)
        step = build(steps.StepParts(model, None, optimizer, mode, cfg, CPU, meter, progress))
        losses = []
        for number, (x, y, i) in enumerate(batches):
            progress.set(2 + number // 6, number % 6)  # a live pull from the first step
            step(x, y, i)
            losses.append(meter.last.clone())
        results.append((torch.stack(losses), mode.past.clone()))
    (eager_losses, eager_memory), (graph_losses, graph_memory) = results
    assert torch.equal(eager_losses, graph_losses) and torch.equal(eager_memory, graph_memory)
    assert eager_losses[0, 2] == 0 and eager_losses[6:, 2].abs().sum() > 0  # live once remembered


def test_a_step_of_a_memory_mode_refuses_a_batch_without_indices(toy_mode):
    cfg = TrialConfig.from_dict({"mode": "toy_memory"})
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    mode = toy_mode[0](cfg, num_classes=10, train_size=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    parts = steps.StepParts(model, None, optimizer, mode, cfg, CPU, steps.Meter(CPU))
    with pytest.raises(ValueError, match="need the samples' indices"):
        steps.EagerStep(parts)(torch.zeros(2, 3, 2, 2), torch.zeros(2, dtype=torch.long))


# ------------------------------------------------------------------ loaders: indices, samplers


@pytest.mark.parametrize("kind", ["device", "classic"])
def test_training_loaders_yield_each_samples_index_once_per_epoch(kind):
    split = data.load("digits", "unused").train
    loader = data.make_loader(
        kind, split, batch_size=100, train=True, seed=0, indices=True, augment="none"
    )
    seen = []
    for images, labels, indices in loader:
        assert torch.equal(labels, split.labels[indices])
        expected = split.images[indices].float() / 255
        mean = torch.tensor(split.mean).view(1, -1, 1, 1)
        std = torch.tensor(split.std).view(1, -1, 1, 1)
        torch.testing.assert_close(images, (expected - mean) / std, atol=1e-5, rtol=0)
        seen.append(indices)
    assert torch.equal(torch.cat(seen).sort().values, torch.arange(len(split)))


class EvensTwice:
    """A sampler for the test: the even-numbered samples, each twice, in order."""

    def order(self, labels, generator):
        evens = torch.arange(0, labels.shape[0], 2, device=labels.device)
        return evens.repeat_interleave(2)

    def length(self, n):
        return 2 * ((n + 1) // 2)


def test_the_device_loader_draws_its_order_from_the_sampler():
    split = data.load("digits", "unused").train
    loader = data.make_loader(
        "device", split, batch_size=64, train=True, indices=True, sampler=EvensTwice()
    )
    order = torch.cat([indices for _, _, indices in loader])
    assert len(loader) == -(-EvensTwice().length(len(split)) // 64)
    assert torch.equal(order, torch.arange(0, len(split), 2).repeat_interleave(2))
    with pytest.raises(ValueError, match="needs loader=device"):
        data.make_loader("classic", split, batch_size=64, train=True, sampler=EvensTwice())


def test_the_default_sampler_keeps_the_batches_of_before():
    """Indices on or off, the images and labels of an epoch are the same (resume, goldens)."""
    split = data.load("digits", "unused").train
    plain = data.make_loader("device", split, batch_size=64, train=True, seed=3)
    indexed = data.make_loader("device", split, batch_size=64, train=True, seed=3, indices=True)
    for (x, y), (x2, y2, _) in zip(plain, indexed, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)


# ------------------------------------------------------------------ teachers that change


class Teacherless(modes.LossMode):
    """kd's loss with a teacher that the test changes between evaluations."""

    name, description, needs_teacher = "changing", "test", True
    loss_of = staticmethod(modes.get("kd").loss_of)


@pytest.mark.parametrize("fixed", [True, False])
def test_teacher_logits_are_cached_on_the_host_only_when_the_mode_says_fixed(fixed):
    split = data.load("digits", "unused").val
    cfg = TrialConfig.from_dict({"mode": "kd", "device": "cpu", "eval_batch_size": 100})
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 10))
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 10)).eval()
    cls = type("Fixed" if fixed else "Changing", (Teacherless,), {"teacher_fixed": fixed})
    mode = cls(cfg, num_classes=10, train_size=0, teacher=teacher)
    evaluate = Evaluator(split, cfg, torch.device("cpu"), teacher, "val", mode=mode)
    first = evaluate(student, 1)["val_loss"]
    with torch.no_grad():
        teacher[1].weight.mul_(3.0)  # the teacher changes (e.g. an EMA of the student)
    second = evaluate(student, 2)["val_loss"]
    assert (first == second) == fixed
    if fixed:
        assert all(t.device.type == "cpu" for t in evaluate.cached)
    else:
        assert evaluate.cached is None
