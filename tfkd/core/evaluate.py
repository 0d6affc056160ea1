"""Evaluating a model on a split: the evaluation loader, logits in order, and the metrics.

Accuracies in percent (top-1 and top-5), ECE, NLL and the mode's loss, from logits computed
once per split; the teacher's logits on a split never change and are computed once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from tfkd.core import data, metrics, modes, steps
from tfkd.core.config import TrialConfig
from tfkd.core.steps import NonFiniteLossError


def eval_loader(split: data.Split, cfg: TrialConfig, device: torch.device) -> Any:
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
) -> Iterator[tuple[Tensor, Tensor]]:
    to_channels_last = device.type == "cuda" and cfg.channels_last
    for images, labels in loader:
        if to_channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        yield images, labels


@torch.no_grad()
def predict(model: nn.Module, loader: Any, cfg: TrialConfig, device: torch.device) -> Tensor:
    """Logits (float32) for a whole split, in loader order."""
    was_training = model.training
    model.eval()
    outputs = []
    with steps.autocast(cfg, device):
        for images, _ in channels_last_batches(loader, cfg, device):
            outputs.append(model(images).float())
    model.train(was_training)
    return torch.cat(outputs)


class Evaluator:
    """Evaluates a split; the teacher's logits on it are computed once (they never change)."""

    def __init__(
        self,
        split: data.Split,
        cfg: TrialConfig,
        device: torch.device,
        teacher: nn.Module | None,
        prefix: str,
    ) -> None:
        self.cfg, self.device, self.prefix = cfg, device, prefix
        self.loader = eval_loader(split, cfg, device)
        self.labels = split.labels.to(device)
        self.teacher_logits = predict(teacher, self.loader, cfg, device) if teacher else None

    @torch.no_grad()
    def __call__(self, model: nn.Module, epoch: int) -> dict[str, float]:
        logits = predict(model, self.loader, self.cfg, self.device)
        if not bool(torch.isfinite(logits).all()):
            raise NonFiniteLossError(
                f"non-finite outputs on the {self.prefix} split after epoch {epoch}: the weights "
                "diverged; lower the learning rate, temperature or multiplier"
            )
        terms = modes.get(self.cfg.mode).loss(logits, self.labels, self.teacher_logits, self.cfg)
        p = self.prefix
        return {
            f"{p}_loss": terms.total.item(),
            f"{p}_accuracy": metrics.accuracy(logits, self.labels),
            f"{p}_top5_accuracy": metrics.top_k_accuracy(logits, self.labels, 5),
            f"{p}_ece": metrics.expected_calibration_error(logits, self.labels),
            f"{p}_nll": metrics.nll(logits, self.labels),
        }
