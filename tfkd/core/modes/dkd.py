"""dkd: decoupled knowledge distillation (Zhao, Cui, Song, Qiu and Liang, CVPR 2022).

KD's loss splits into a target-class part (TCKD: the binary KL of target vs. the rest) and a
non-target part (NCKD: the KL among the other classes), and KD weights NCKD by the teacher's
1 - p_t, which shrinks it exactly where the teacher is confident. DKD weights them freely:

    L = c CE(z, y) + w_e (alpha TCKD + beta NCKD),   w_e = min(e / warmup, 1)

(`tfkd.core.losses.dkd_terms`), with e the 1-based epoch, as the authors' mdistiller
(mdistiller/distillers/DKD.py: `min(kwargs["epoch"] / self.warmup, 1.0)`, epochs counted from 1
by mdistiller/engine/trainer.py). Their CIFAR-100 defaults (mdistiller/engine/cfg.py): CE weight c
= 1 (the field `dkd_ce`), alpha 1, beta 8, T 4, warm-up 20 epochs of 240. A search varies the
coordinates of `tfkd.core.coordinates`: kd_share lambda and nckd_ratio r = beta / alpha, with c =
1 - lambda, beta = lambda and alpha = lambda / r (the step's scale is set by CE and NCKD).
The warm-up weight is computed from the training's `Progress.epoch` on the device, so a captured
step stays live. The teacher is fixed, as kd's; `logit_standardize` (Sun et al., CVPR 2024)
z-scores both sides' logits first.
"""

from __future__ import annotations

from torch import Tensor

from tfkd.core import losses
from tfkd.core.config import TrialConfig
from tfkd.core.modes import Batch, Mode, Param, Progress, Terms, register
from tfkd.core.modes.distill import LOGIT_STANDARDIZE


def _non_negative(value: float) -> bool:
    """0 or more"""
    return value >= 0


@register
class DecoupledKD(Mode):
    """dkd_ce CE + min(epoch / dkd_warmup, 1) (dkd_alpha TCKD + dkd_beta NCKD) at `temperature`."""

    name = "dkd"
    description = (
        "decoupled KD (DKD): target-class and non-target-class KL from a fixed teacher, "
        "weighted alpha and beta, with a warm-up"
    )
    needs_teacher = True
    term_names = ("ce", "kl", "tckd", "nckd")
    params = (
        LOGIT_STANDARDIZE,
        Param("dkd_ce", float, 1.0, "weight of the cross-entropy with the labels", _non_negative),
        Param("dkd_alpha", float, 1.0, "weight of TCKD, the target-vs-rest KL", _non_negative),
        Param("dkd_beta", float, 8.0, "weight of NCKD, the KL among non-targets", _non_negative),
        Param(
            "dkd_warmup",
            int,
            20,
            "epochs over which the distillation weight rises to 1 (0: none)",
            _non_negative,
        ),
    )

    def terms(self, batch: Batch, progress: Progress) -> Terms:
        return self.decoupled(batch, self.cfg, self.warmup_weight(progress, self.cfg))

    @staticmethod
    def warmup_weight(progress: Progress, cfg: TrialConfig) -> Tensor | float:
        """min(epoch / dkd_warmup, 1) as a device tensor (1 without a warm-up)."""
        if cfg.dkd_warmup == 0:
            return 1.0
        return (progress.epoch / cfg.dkd_warmup).clamp(max=1.0)

    @staticmethod
    def decoupled(batch: Batch, cfg: TrialConfig, weight: Tensor | float) -> Terms:
        if batch.teacher_logits is None:
            raise ValueError("mode 'dkd' needs the teacher's logits")
        parts = losses.dkd_terms(
            batch.logits,
            batch.labels,
            batch.teacher_logits,
            temperature=cfg.temperature,
            standardize=cfg.logit_standardize,
        )
        kl = weight * (cfg.dkd_alpha * parts.tckd + cfg.dkd_beta * parts.nckd)
        named = {"ce": parts.ce, "kl": kl, "tckd": parts.tckd, "nckd": parts.nckd}
        return Terms(cfg.dkd_ce * parts.ce + kl, named)

    @classmethod
    def loss(
        cls, logits: Tensor, labels: Tensor, teacher_logits: Tensor | None, cfg: TrialConfig
    ) -> Terms:
        """The loss of one batch after the warm-up (no progress: the weight is 1)."""
        return cls.decoupled(Batch(logits, labels, teacher_logits, train=False), cfg, 1.0)
