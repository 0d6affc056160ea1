"""Teacher modes: which loss a trial optimises and whether it needs a trained teacher.

A mode is a small registered object. Adding one is one decorated function here plus its
search-space YAML in search_spaces/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from tfkd.core import losses
from tfkd.core.registry import Registry

if TYPE_CHECKING:
    from tfkd.core.config import TrialConfig

LossFn = Callable[[Tensor, Tensor, "Tensor | None", "TrialConfig"], losses.LossTerms]


@dataclass(frozen=True)
class Mode:
    name: str
    loss: LossFn
    needs_teacher: bool
    description: str
    teacher_is_student: bool = False  # tfkd_self: the teacher is a trained copy of the student


MODES: Registry[Mode] = Registry("mode")
get = MODES.get
names = MODES.names


def register(
    *mode_names: str,
    needs_teacher: bool = False,
    teacher_is_student: bool = False,
    descriptions: dict[str, str],
) -> Callable[[LossFn], LossFn]:
    """Register one loss function under one or more mode names."""

    def decorate(fn: LossFn) -> LossFn:
        for name in mode_names:
            MODES.add(
                name,
                Mode(
                    name=name,
                    loss=fn,
                    needs_teacher=needs_teacher,
                    description=descriptions[name],
                    teacher_is_student=teacher_is_student,
                ),
            )
        return fn

    return decorate


@register("baseline", descriptions={"baseline": "plain cross-entropy; also trains teachers"})
def _cross_entropy(logits: Tensor, labels: Tensor, teacher: Tensor | None, cfg: TrialConfig):
    return losses.cross_entropy_loss(logits, labels)


@register(
    "kd",
    "rekd",
    "dekd",
    needs_teacher=True,
    descriptions={
        "kd": "knowledge distillation from a stronger teacher",
        "rekd": "reversed KD: a weaker model teaches a stronger one",
        "dekd": "defective KD: a poorly trained teacher (e.g. an epoch-1 snapshot)",
    },
)
def _distillation(logits: Tensor, labels: Tensor, teacher: Tensor | None, cfg: TrialConfig):
    return losses.kd_loss(
        logits,
        labels,
        teacher,
        temperature=cfg.temperature,
        alpha=cfg.alpha,
        multiplier=cfg.multiplier,
        semantics=cfg.semantics,
    )


register(
    "tfkd_self",
    needs_teacher=True,
    teacher_is_student=True,
    descriptions={"tfkd_self": "Tf-KD self-training: a trained copy of the student teaches it"},
)(_distillation)


@register("tfkd_reg", descriptions={"tfkd_reg": "Tf-KD with a manually designed virtual teacher"})
def _virtual_teacher(logits: Tensor, labels: Tensor, teacher: Tensor | None, cfg: TrialConfig):
    return losses.virtual_teacher_loss(
        logits,
        labels,
        temperature=cfg.temperature,
        alpha=cfg.alpha,
        correct_prob=cfg.correct_prob,
        multiplier=cfg.multiplier,
        semantics=cfg.semantics,
    )


@register("lsr", descriptions={"lsr": "label smoothing regularisation"})
def _label_smoothing(logits: Tensor, labels: Tensor, teacher: Tensor | None, cfg: TrialConfig):
    return losses.label_smoothing_loss(logits, labels, epsilon=cfg.epsilon)
