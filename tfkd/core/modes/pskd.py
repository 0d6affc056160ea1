"""pskd: progressive self-knowledge distillation (Kim, Ji, Yoon and Hwang, ICCV 2021).

The target of each training sample mixes its label with the model's own prediction for that
sample at the previous epoch: q_t = (1 - alpha_t) onehot(y) + alpha_t p_{t-1}(x), with
alpha_t = alpha_T t / T (t the 1-based epoch, T the schedule's epochs), as the authors' main.py
computes it (`alpha_T * (epoch + 1) / end_epoch` with a 0-based epoch). In the first epoch there
is no past prediction and the authors' target is the label; here a sample never seen yet (its
memory row still zero) has the label as its past prediction, which is the same.

Memory: one row of K probabilities per training sample, kept in float16 on the trial's device
(CIFAR-100: 45,000 x 100 x 2 B = 9 MB; ImageNet: 1.28 M x 1,000 x 2 B = 2.6 GB, half of the
authors' float32 copy). It is checkpointed with the trial and restored on resume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tfkd.core import losses
from tfkd.core.config import TrialConfig
from tfkd.core.modes import Batch, Memory, Mode, Param, Progress, Terms, register


def _unit_interval(value: float) -> bool:
    """between 0 and 1"""
    return 0.0 <= value <= 1.0


@register
class ProgressiveSelfKD(Mode):
    """Per-sample memory of the previous epoch's softmax; alpha_t on the training's progress."""

    name = "pskd"
    description = (
        "progressive self-KD (PS-KD): targets mix the label with the model's own "
        "prediction from the previous epoch"
    )
    past: Tensor  # the "past" memory's buffer
    memories = {
        "past": Memory(
            width="classes",
            dtype=torch.float16,
            doc="each training sample's softmax at its latest visit (the previous epoch)",
        )
    }
    params = (
        Param(
            "pskd_alpha",
            float,
            0.8,
            "alpha_T: the past prediction's share of the target at the last epoch",
            _unit_interval,
        ),
    )

    def terms(self, batch: Batch, progress: Progress) -> Terms:
        if batch.train and batch.indices is not None:
            past = self._remembered(batch, batch.indices)
            alpha = self.cfg.pskd_alpha * progress.epoch / progress.epochs
            terms = losses.progressive_self_kd_loss(batch.logits, batch.labels, past, alpha)
            self._remember(batch, batch.indices)
            return Terms.of(terms)
        return Terms.of(self.loss_without_memory(batch, self.cfg))

    def _remembered(self, batch: Batch, indices: Tensor) -> Tensor:
        """Each sample's previous prediction; the label for a sample not seen yet."""
        past = self.past.index_select(0, indices).float()
        onehot = F.one_hot(batch.labels, self.num_classes).float()
        seen = past.sum(dim=1, keepdim=True) > 0
        return torch.where(seen, past, onehot)

    @torch.no_grad()
    def _remember(self, batch: Batch, indices: Tensor) -> None:
        probs = F.softmax(batch.logits.detach().float(), dim=1)
        self.past.index_copy_(0, indices, probs.to(self.past.dtype))

    @staticmethod
    def loss_without_memory(batch: Batch, cfg: TrialConfig) -> losses.LossTerms:
        """Evaluation (no past prediction: the target is the label, the loss plain CE), or a
        past prediction given as logits in `teacher_logits`, mixed in at alpha_T."""
        if batch.teacher_logits is None:
            past = F.one_hot(batch.labels, batch.logits.shape[1]).float()
        else:
            past = F.softmax(batch.teacher_logits.detach().float(), dim=1)
        return losses.progressive_self_kd_loss(batch.logits, batch.labels, past, cfg.pskd_alpha)

    @classmethod
    def loss(
        cls, logits: Tensor, labels: Tensor, teacher_logits: Tensor | None, cfg: TrialConfig
    ) -> losses.LossTerms:
        """The loss of one batch whose past predictions are `teacher_logits`, at alpha_T."""
        return cls.loss_without_memory(Batch(logits, labels, teacher_logits), cfg)
