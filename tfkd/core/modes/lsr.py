"""lsr: label smoothing regularisation (Szegedy et al., CVPR 2016)."""

from __future__ import annotations

from torch import Tensor

from tfkd.core import losses
from tfkd.core.config import TrialConfig
from tfkd.core.modes import LossMode, register


@register
class LabelSmoothing(LossMode):
    """`losses.label_smoothing_loss`: 1-eps on the label, eps/(K-1) on every other class."""

    name = "lsr"
    description = "label smoothing regularisation"

    @staticmethod
    def loss_of(
        logits: Tensor, labels: Tensor, teacher_logits: Tensor | None, cfg: TrialConfig
    ) -> losses.LossTerms:
        return losses.label_smoothing_loss(logits, labels, epsilon=cfg.epsilon)
