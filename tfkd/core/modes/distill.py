"""Distillation from a trained teacher: kd, rekd, dekd and tfkd_self share one loss.

They differ only in the teacher the user gives them (a stronger model, a weaker one, an early
snapshot, a trained copy of the student), so each is a subclass that names and describes itself.
Every mode with a teacher (these and dkd) shares the option `logit_standardize`, declared here
once: it z-scores the student's and the teacher's logits before the temperature.
"""

from __future__ import annotations

from torch import Tensor

from tfkd.core import losses
from tfkd.core.config import TrialConfig
from tfkd.core.modes import LossMode, Param, register

LOGIT_STANDARDIZE = Param(
    "logit_standardize",
    bool,
    False,
    "z-score the student's and the teacher's logits per sample before the temperature "
    "(Sun et al., CVPR 2024; tfkd.core.losses.standardize_logits)",
)


class Distillation(LossMode):
    """Hinton's KD (`losses.kd_loss`): (1-a) CE(z, y) + a m T^2 KL(softmax(t/T) || softmax(z/T))."""

    needs_teacher = True
    params = (LOGIT_STANDARDIZE,)

    @staticmethod
    def loss_of(
        logits: Tensor, labels: Tensor, teacher_logits: Tensor | None, cfg: TrialConfig
    ) -> losses.LossTerms:
        if teacher_logits is None:
            raise ValueError("a distillation mode needs the teacher's logits")
        return losses.kd_loss(
            logits,
            labels,
            teacher_logits,
            temperature=cfg.temperature,
            alpha=cfg.alpha,
            multiplier=cfg.multiplier,
            semantics=cfg.semantics,
            standardize=cfg.logit_standardize,
        )


@register
class KD(Distillation):
    name = "kd"
    description = "knowledge distillation from a stronger teacher"


@register
class ReKD(Distillation):
    name = "rekd"
    description = "reversed KD: a weaker model teaches a stronger one"


@register
class DeKD(Distillation):
    name = "dekd"
    description = "defective KD: a poorly trained teacher (e.g. an epoch-1 snapshot)"


@register
class TfKDSelf(Distillation):
    name = "tfkd_self"
    description = "Tf-KD self-training: a trained copy of the student teaches it"
    teacher_is_student = True
