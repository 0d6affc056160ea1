"""Train one configuration: `run_trial(config, report) -> metrics`.

This module knows nothing of Ray or MLflow. It calls `report(metrics, checkpoint_dir)` once per
epoch; the caller decides what to do with the metrics and the checkpoint folder (which is deleted
after `report` returns).
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from tfkd.core import checkpoint, data, metrics, models, modes, protocol, recipe, steps
from tfkd.core.config import TrialConfig
from tfkd.core.errors import UserError
from tfkd.core.evaluate import Evaluator, channels_last_batches, eval_loader, predict  # noqa: F401
from tfkd.core.parallel import SINGLE, Parallel
from tfkd.core.steps import NonFiniteLossError, TrainingFailure

Report = Callable[[dict[str, Any], "str | None"], None]

# How many steps may pass between two checks for a non-finite loss (each check syncs a GPU).
FINITE_CHECK_INTERVAL = {"cpu": 1, "cuda": 25}

__all__ = [
    "DivergedError",
    "NonFiniteLossError",
    "TrainingFailure",
    "run_trial",
    "teacher_accuracy",
    "train_one_epoch",
]


class DivergedError(TrainingFailure):
    """The training loss grew far above the first epoch's (see `check_divergence`)."""


def check_divergence(loss: float, first_loss: float, cfg: TrialConfig, epoch: int) -> None:
    """An epoch's mean training loss above divergence_factor x the first epoch's has diverged.

    Training losses fall after the first epoch; one that rises a thousandfold (the default
    factor) is a run whose weights blew up (e.g. far too high a learning rate) and would only
    report meaningless, finite numbers.
    """
    bound = cfg.divergence_factor * abs(first_loss)
    if epoch > 1 and loss > bound:
        raise DivergedError(
            f"diverged: training loss {loss:.4g} at epoch {epoch} is above {bound:.4g} "
            f"(divergence_factor {cfg.divergence_factor:g} x the first epoch's {first_loss:.4g}); "
            "lower the learning rate, temperature or multiplier"
        )


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available; a CUDA request on a node without CUDA falls back to CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(
            f"device {name!r} requested but CUDA is not available here; using CPU", stacklevel=2
        )
        return torch.device("cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _prepare(module: nn.Module, cfg: TrialConfig, device: torch.device) -> nn.Module:
    module = module.to(device)
    if device.type == "cuda" and cfg.channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module


def build_student(cfg: TrialConfig, num_classes: int, device: torch.device) -> nn.Module:
    """The student, initialised from its own seed alone.

    Its weights depend only on (seed, model, classes), never on what was drawn before it (a
    teacher built first, a dataset split): a kd-vs-baseline difference at one seed is then the
    method's, not a different initialisation's. The global generator is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = models.build(cfg.model, num_classes)
    return _prepare(model, cfg, device)


def load_teacher(cfg: TrialConfig, num_classes: int, device: torch.device) -> nn.Module:
    """The teacher of kd/rekd/dekd/tfkd_self: frozen, in eval mode, never in the optimiser."""
    if not cfg.teacher_checkpoint:
        raise ValueError(f"mode {cfg.mode!r} needs a teacher: set config key 'teacher_checkpoint'")
    state = checkpoint.load(cfg.teacher_checkpoint)
    meta = state.get("meta", {})
    name = (
        meta.get("model")
        or cfg.teacher
        or (cfg.model if modes.get(cfg.mode).teacher_is_student else "")
    )
    if not name:
        raise ValueError(
            f"teacher checkpoint {cfg.teacher_checkpoint} does not say its model; set 'teacher'"
        )
    if cfg.teacher and cfg.teacher != name:
        raise ValueError(
            f"teacher checkpoint {cfg.teacher_checkpoint} holds a {name}, not a {cfg.teacher}"
        )
    if meta.get("num_classes", num_classes) != num_classes:
        raise ValueError(
            f"teacher checkpoint {cfg.teacher_checkpoint} has {meta['num_classes']} classes, "
            f"the dataset has {num_classes}"
        )
    teacher = models.build(name, num_classes)
    try:
        teacher.load_state_dict(state["model"])
    except RuntimeError as exc:
        detail = " ".join(str(exc).split("\n")[1:2]).strip()
        raise ValueError(
            f"teacher weights {cfg.teacher_checkpoint} do not fit a {name} with {num_classes} "
            f"classes ({detail}); torchvision's pretrained teachers have 1000"
        ) from None
    teacher.requires_grad_(False)
    return _prepare(teacher, cfg, device).eval()


def load_dataset(cfg: TrialConfig) -> data.Dataset:
    """The one way from a trial config to its dataset (split and cached as the config says)."""
    return data.load(
        cfg.dataset,
        cfg.data_dir,
        val_fraction=cfg.val_fraction,
        seed=cfg.split_seed,
        download=cfg.download,
        fake_size=cfg.fake_size,
    )


def dataset_of(config: Mapping[str, Any]) -> data.Dataset:
    """The dataset of a trial config, before a sweep starts: unreadable or missing data is a
    one-line UserError."""
    try:
        return load_dataset(TrialConfig.from_dict(config))
    except (OSError, ValueError) as exc:
        raise UserError(str(exc).splitlines()[0]) from None


def train_one_epoch(
    step: steps.Step,
    loader: Any,
    scheduler: Any,
    cfg: TrialConfig,
    device: torch.device,
    epoch: int,
    parallel: Parallel = SINGLE,
) -> dict[str, float]:
    """One pass over the training split: `step` trains on each batch, the rate moves per batch.

    Nothing here waits for the device except the non-finite-loss check, every
    FINITE_CHECK_INTERVAL steps, and the epoch's sums read at the end (summed over the
    workers of a data-parallel trial, so every worker reports the global batch's figures).
    """
    step.meter.reset()
    check_every = FINITE_CHECK_INTERVAL.get(device.type, 1)
    progress = step.parts.progress
    assert progress is not None  # StepParts fills it in
    count = 0
    for count, (images, labels, *indices) in enumerate(
        channels_last_batches(loader, cfg, device), start=1
    ):
        progress.set(epoch, count - 1)
        step(images, labels, *indices)
        scheduler.step()
        step.meter.seen += labels.shape[0]
        if count % check_every == 0:
            step.meter.check(epoch)
    if count % check_every:
        step.meter.check(epoch)
    seen = parallel.sum_(torch.tensor([float(step.meter.seen)], device=device))
    parallel.sum_(step.meter.sums)
    step.meter.seen = int(seen.item())
    return step.meter.summary()


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _checkpoint_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    cfg: TrialConfig,
    epoch: int,
    num_classes: int,
    epoch_metrics: Mapping[str, float],
    first_loss: float,
    selection: protocol.Selection,
    mode: modes.Mode,
) -> dict[str, Any]:
    return {
        **_mode_state(mode),
        "first_train_loss": first_loss,
        "selection": selection.state(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(),
        "epoch": epoch,
        "meta": {
            "model": cfg.model,
            "num_classes": num_classes,
            "dataset": cfg.dataset,
            "mode": cfg.mode,
            "epoch": epoch,
            "val_accuracy": float(epoch_metrics.get("val_accuracy", float("nan"))),
        },
    }


def _mode_state(mode: modes.Mode) -> dict[str, Any]:
    """The mode's buffers (its memories), and its teacher's weights when the teacher changes."""
    state: dict[str, Any] = {"mode_state": mode.state_dict()}
    if mode.teacher is not None and not mode.teacher_fixed:
        state["mode_teacher"] = mode.teacher.state_dict()
    return state


def _restore_mode(state: Mapping[str, Any], mode: modes.Mode, path: str) -> None:
    """Put a checkpoint's mode state back in place (a captured step keeps these tensors)."""
    saved = state.get("mode_state", {})
    if saved.keys() != mode.state_dict().keys():
        raise ValueError(
            f"checkpoint {path} holds mode state {sorted(saved)}, mode {mode.name!r} keeps "
            f"{sorted(mode.state_dict())}: it was written by another mode or dataset"
        )
    with torch.no_grad():
        for key, value in mode.state_dict().items():
            value.copy_(saved[key])
    if "mode_teacher" in state and mode.teacher is not None:
        mode.teacher.load_state_dict(state["mode_teacher"])


def _report_epoch(
    report: Report, epoch_metrics: dict[str, Any], state: dict[str, Any], parallel: Parallel
) -> None:
    """Write the epoch's checkpoint to a fresh folder, hand both to `report`, then clean up.

    Only rank 0 of a data-parallel trial writes one; the other workers report the metrics alone.
    """
    if not parallel.main:
        report(epoch_metrics, None)
        return
    with checkpoint.scratch_folder(checkpoint.state_bytes(state)) as folder:
        checkpoint.save_atomic(state, folder / checkpoint.CHECKPOINT_FILE)
        report(epoch_metrics, str(folder))


def _resume(
    path: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    cfg: TrialConfig,
    selection: protocol.Selection,
    mode: modes.Mode,
) -> tuple[int, float | None]:
    """Restore the training state and the selection; returns (its epoch, the first epoch's
    training loss)."""
    state = checkpoint.load(path)
    saved_model = state.get("meta", {}).get("model", cfg.model)
    if saved_model != cfg.model:
        raise ValueError(f"checkpoint {path} holds a {saved_model}, the trial trains a {cfg.model}")
    model.load_state_dict(state["model"])
    kinds: list[dict[str, Any]] = [
        {k: g[k] for k in ("fused", "foreach") if k in g} for g in optimizer.param_groups
    ]
    optimizer.load_state_dict(state["optimizer"])
    for group, kept in zip(optimizer.param_groups, kinds, strict=True):
        group.update(kept)  # this device's SGD implementation, not the one that wrote the file
    scheduler.load_state_dict(state["scheduler"])
    _restore_rng(state["rng"])
    if "selection" in state:
        selection.restore(state["selection"])
    _restore_mode(state, mode, path)
    return int(state["epoch"]), state.get("first_train_loss")


def _log_epoch(cfg: TrialConfig, m: Mapping[str, Any]) -> None:
    val = f" val_acc {m['val_accuracy']:.2f}%" if "val_accuracy" in m else ""
    test = f" test_acc {m['test_accuracy']:.2f}%" if "test_accuracy" in m else ""
    print(
        f"[tfkd] {cfg.mode} {cfg.model} epoch {m['epoch']}/{cfg.epochs} "
        f"loss {m['train_loss']:.4f} train_acc {m['train_accuracy']:.2f}%{val}{test} "
        f"lr {m['lr']:.4g} {m['epoch_seconds']:.1f}s {m['images_per_second']:.0f} img/s",
        flush=True,
    )


def run_trial(
    config: Mapping[str, Any],
    report: Report | None = None,
    *,
    dataset: data.Dataset | None = None,
    resume_from: str | None = None,
) -> dict[str, Any]:
    """Train one configuration and return the final epoch's metrics (with the test metrics).

    `dataset` lets a caller share an already loaded dataset (the search loads it once per node);
    `resume_from` is a checkpoint written by an earlier call (a file or its folder). Inside a
    data-parallel trial (torch.distributed initialised) each worker trains its shard of every
    global batch (tfkd.core.parallel) and does not capture its step.
    """
    cfg = TrialConfig.from_dict(config)
    parallel = Parallel.current()
    mode_class = modes.get(cfg.mode)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    if dataset is None:
        dataset = load_dataset(cfg)
    if parallel.world > 1 and mode_class.needs_indices():
        raise ValueError(
            f"mode {cfg.mode!r} keeps per-sample memory, which a data-parallel trial does not "
            "share between its workers yet; train it on one device per trial"
        )
    teacher = load_teacher(cfg, dataset.num_classes, device) if mode_class.needs_teacher else None
    mode = mode_class(
        cfg,
        num_classes=dataset.num_classes,
        train_size=len(dataset.train),
        device=device,
        teacher=teacher,
    )
    model = parallel.global_batch_norm(build_student(cfg, dataset.num_classes, device), device)
    train_model = parallel.data_parallel(model, device)
    train_model = steps.compile_module(train_model) if cfg.compile else train_model
    step_kind = steps.kind_for(cfg, device, len(dataset.train)) if parallel.world == 1 else "eager"
    train_loader = data.make_loader(
        cfg.loader,
        dataset.train,
        batch_size=cfg.batch_size,
        train=True,
        device=device,
        seed=cfg.seed,
        augment=cfg.augment,
        num_workers=cfg.num_workers,
        drop_last=steps.STEPS[step_kind].drop_last or parallel.world > 1,
        image_size=cfg.image_size,
        shard=parallel.shard,
        indices=mode_class.needs_indices(),
        sampler=mode_class.sampler,
    )
    optimizer = recipe.build_optimizer(model, cfg)
    scheduler = recipe.build_scheduler(optimizer, cfg, steps_per_epoch=len(train_loader))
    rule = protocol.get(cfg.protocol)
    selection = protocol.Selection(rule)
    start_epoch, first_loss = (
        _resume(resume_from, model, optimizer, scheduler, cfg, selection, mode)
        if resume_from
        else (0, None)
    )
    progress = modes.Progress(device, cfg.epochs, len(train_loader))
    # Built after the resume: a captured step keeps pointing at the restored tensors.
    parts = steps.StepParts(
        train_model,
        teacher,
        optimizer,
        mode,
        cfg,
        device,
        steps.Meter(device, mode.term_names),
        progress,
    )
    train_step = steps.build(step_kind, parts)
    evaluators = [
        Evaluator(split, cfg, device, teacher, prefix, mode=mode, progress=progress)
        for split, prefix in ((dataset.val, "val"), (dataset.test, "test"))
        if len(split)
    ]
    validate = [e for e in evaluators if e.prefix == "val"]
    test = [e for e in evaluators if e.prefix == "test"]

    epoch_metrics: dict[str, Any] = {}
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        train_loader.set_epoch(epoch)
        mode.start_epoch(epoch)
        _sync(device)
        started = time.perf_counter()
        train_stats = train_one_epoch(
            train_step, train_loader, scheduler, cfg, device, epoch, parallel
        )
        _sync(device)
        train_seconds = time.perf_counter() - started
        first_loss = train_stats["train_loss"] if first_loss is None else first_loss
        check_divergence(train_stats["train_loss"], first_loss, cfg, epoch)
        epoch_metrics = {"epoch": epoch, "lr": lr, **train_stats}
        for evaluate in validate + (test if rule.tests_every_epoch else []):
            epoch_metrics.update(evaluate(model, epoch))
        chosen = selection.update(epoch, epoch_metrics)
        epoch_metrics.update(selection.metrics())
        if not rule.tests_every_epoch:
            epoch_metrics.update(_test_chosen(model, selection, test, epoch, chosen, cfg.epochs))
        epoch_metrics["epoch_seconds"] = time.perf_counter() - started
        epoch_metrics["images_per_second"] = train_stats["train_images"] / train_seconds
        _log_epoch(cfg, epoch_metrics)
        if report is not None:
            _report_epoch(
                report,
                epoch_metrics,
                _checkpoint_state(
                    model,
                    optimizer,
                    scheduler,
                    cfg,
                    epoch,
                    dataset.num_classes,
                    epoch_metrics,
                    first_loss,
                    selection,
                    mode,
                ),
                parallel,
            )
    return epoch_metrics


def _test_chosen(
    model: nn.Module,
    selection: protocol.Selection,
    test: list[Evaluator],
    epoch: int,
    chosen: bool,
    epochs: int,
) -> dict[str, float]:
    """Under a protocol that tests once: the chosen epoch's test metrics, reported at the end.

    An epoch chosen by a validation split is tested as it is chosen (its weights are the
    model's now), and its metrics are kept with the selection; an epoch chosen for want of a
    split (the final one takes over) is tested only when it is the last.
    """
    chosen_by_split = selection.score > float("-inf")
    if chosen and (chosen_by_split or epoch == epochs):
        selection.chosen_test = {k: v for e in test for k, v in e(model, epoch).items()}
    return dict(selection.chosen_test or {}) if epoch == epochs else {}


def teacher_accuracy(config: Mapping[str, Any], dataset: data.Dataset) -> float:
    """The teacher's accuracy (%) on the validation split (the test split if there is none)."""
    cfg = TrialConfig.from_dict(config)
    device = resolve_device(cfg.device)
    teacher = load_teacher(cfg, dataset.num_classes, device)
    split = dataset.val if len(dataset.val) else dataset.test
    logits = predict(teacher, eval_loader(split, cfg, device), cfg, device)
    return metrics.accuracy(logits, split.labels.to(device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
