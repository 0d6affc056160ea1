"""tfkd_reg: Tf-KD with a manually designed virtual teacher (Yuan et al., CVPR 2020)."""

from __future__ import annotations

from torch import Tensor

from tfkd.core import losses
from tfkd.core.config import TrialConfig
from tfkd.core.modes import LossMode, register


@register
class VirtualTeacher(LossMode):
    """`losses.virtual_teacher_loss`: KL to softmax(p^d / T), p^d = correct_prob on the label."""

    name = "tfkd_reg"
    description = "Tf-KD with a manually designed virtual teacher"

    @staticmethod
    def loss_of(
        logits: Tensor, labels: Tensor, teacher_logits: Tensor | None, cfg: TrialConfig
    ) -> losses.LossTerms:
        return losses.virtual_teacher_loss(
            logits,
            labels,
            temperature=cfg.temperature,
            alpha=cfg.alpha,
            correct_prob=cfg.correct_prob,
            multiplier=cfg.multiplier,
            semantics=cfg.semantics,
        )
