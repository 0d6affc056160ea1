"""Evaluating a model on a split: the evaluation loader, logits in order, and the metrics.

Accuracies in percent (top-1 and top-5), ECE, NLL and the mode's loss, from logits computed
once per split. A fixed teacher's logits on a split (`Mode.teacher_fixed`) are computed once and
kept on the host, one batch at a time going to the device (an ImageNet holdout split's would be
~0.5 GB of device memory per trial); a teacher that changes is run again at every evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from tfkd.core import data, metrics, modes, steps
from tfkd.core.config import TrialConfig
from tfkd.core.modes import Batch, Mode, Progress
from tfkd.core.steps import NonFiniteLossError


def eval_loader(split: data.AnySplit, cfg: TrialConfig, device: torch.device) -> Any:
    """The one way to a loader that evaluates a split: in order, no augmentation."""
    return data.make_loader(
        cfg.loader,
        split,
        batch_size=cfg.eval_batch_size,
        train=False,
        device=device,
        seed=cfg.seed,
        augment="none",
        image_size=cfg.image_size,
        num_workers=cfg.num_workers,
    )


def channels_last_batches(
    loader: Any, cfg: TrialConfig, device: torch.device
) -> Iterator[tuple[Tensor, ...]]:
    to_channels_last = device.type == "cuda" and cfg.channels_last
    for images, *rest in loader:
        if to_channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        yield images, *rest


@torch.no_grad()
def predict(model: nn.Module, loader: Any, cfg: TrialConfig, device: torch.device) -> Tensor:
    """Logits (float32) for a whole split, in loader order."""
    was_training = model.training
    model.eval()
    outputs = []
    with steps.autocast(cfg, device):
        for images, *_ in channels_last_batches(loader, cfg, device):
            outputs.append(model(images).float())
    model.train(was_training)
    return torch.cat(outputs)


class Evaluator:
    """Evaluates a split with the trial's mode (its loss as an evaluation sees it: no memories).

    `mode` is the trial's Mode instance (default: the config's mode, built for evaluation) and
    `progress` the training's (default: the start of training). A teacher's logits are cached
    on the host only when the mode says its teacher is fixed.
    """

    def __init__(
        self,
        split: data.AnySplit,
        cfg: TrialConfig,
        device: torch.device,
        teacher: nn.Module | None,
        prefix: str,
        *,
        mode: Mode | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.cfg, self.device, self.prefix, self.teacher = cfg, device, prefix, teacher
        self.loader = eval_loader(split, cfg, device)
        self.labels = split.labels.to(device)
        self.mode = mode if mode is not None else _evaluation_mode(cfg, device)
        self.progress = progress if progress is not None else Progress(device, cfg.epochs, 1)
        self.cached: list[Tensor] | None = None  # a fixed teacher's logits, per batch, on the host

    @torch.no_grad()
    def __call__(self, model: nn.Module, epoch: int) -> dict[str, float]:
        outputs, loss_sum = [], torch.zeros((), dtype=torch.float64, device=self.device)
        was_training = model.training
        model.eval()
        batches = channels_last_batches(self.loader, self.cfg, self.device)
        for number, (images, labels) in enumerate(batches):
            with steps.autocast(self.cfg, self.device):
                logits = model(images).float()
            teacher_logits = self._teacher_logits(number, images)
            terms = self.mode.terms(
                Batch(logits, labels, teacher_logits, None, train=False), self.progress
            )
            loss_sum += terms.total.double() * labels.shape[0]
            outputs.append(logits)
        model.train(was_training)
        if self.teacher is not None and self.mode.teacher_fixed and self.cached is None:
            self.cached = self._filling
        logits = torch.cat(outputs)
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteLossError(
                f"non-finite outputs on the {self.prefix} split after epoch {epoch}: the weights "
                "diverged; lower the learning rate, temperature or multiplier"
            )
        p = self.prefix
        return {
            f"{p}_loss": float(loss_sum.item() / max(len(self.labels), 1)),
            f"{p}_accuracy": metrics.accuracy(logits, self.labels),
            f"{p}_top5_accuracy": metrics.top_k_accuracy(logits, self.labels, 5),
            f"{p}_ece": metrics.expected_calibration_error(logits, self.labels),
            f"{p}_nll": metrics.nll(logits, self.labels),
        }

    def _teacher_logits(self, number: int, images: Tensor) -> Tensor | None:
        """Batch `number`'s teacher logits: from the host cache, or a fresh forward pass."""
        if self.teacher is None:
            return None
        if self.cached is not None:
            return self.cached[number].to(self.device, non_blocking=True)
        if number == 0:
            self._filling: list[Tensor] = []
        with steps.autocast(self.cfg, self.device):
            logits = self.teacher(images).float()
        if self.mode.teacher_fixed:
            self._filling.append(logits.to("cpu"))
        return logits


def _evaluation_mode(cfg: TrialConfig, device: torch.device) -> Mode:
    """The config's mode built for evaluation alone (no training split: no memories)."""
    return modes.get(cfg.mode)(cfg, num_classes=0, train_size=0, device=device)
