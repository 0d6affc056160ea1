"""baseline: plain cross-entropy; also trains the teachers of the other modes."""

from __future__ import annotations

from torch import Tensor

from tfkd.core import losses
from tfkd.core.config import TrialConfig
from tfkd.core.modes import LossMode, register


@register
class Baseline(LossMode):
    """L = CE(z, y); the logged `kl` part is zero."""

    name = "baseline"
    description = "plain cross-entropy; also trains teachers"

    @staticmethod
    def loss_of(
        logits: Tensor, labels: Tensor, teacher_logits: Tensor | None, cfg: TrialConfig
    ) -> losses.LossTerms:
        return losses.cross_entropy_loss(logits, labels)
