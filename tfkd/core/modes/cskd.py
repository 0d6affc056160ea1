"""cskd: class-wise self-knowledge distillation (Yun, Park, Lee and Shin, CVPR 2020).

Each training sample (the anchor) is paired with another sample of its class; the anchor's
softened prediction is pulled towards its partner's, held constant:
L = (1 - s) CE(z, y) + s T^2 (1/N) sum_n KL(softmax(z'_n / T) || softmax(z_n / T)), with CE
and KL over the N anchors only (`losses.class_wise_self_kd_loss`). The authors' loss is
CE + lambda L_cls (alinlab/cs-kd train.py: `KDLoss`, KLDivLoss(sum) x T^2 / N, the partner's
forward under `torch.no_grad()`); s = lambda / (1 + lambda) is the same loss over 1 + lambda.

Batches: the `class_pairs` sampler orders an epoch as [anchor, partner, anchor, partner, ...],
every sample once as an anchor, so a batch of B holds B/2 anchors and their B/2 partners and an
epoch has 2n/B steps. Cost: one forward and backward of the whole batch; the B/2 partners'
logits are detached, so half of each batch carries no gradient of its own (CS-KD trains on half
the unique samples per forward). The authors feed 128 anchors plus 128 partners (partners in a
second forward without gradient); here the partners share the anchors' forward, so they also
share the batch-norm statistics (the authors' anchors are normalised among anchors only). The
batch size must be even: a pair is never split across batches. No memory, no teacher.
"""

from __future__ import annotations

from torch import Tensor

from tfkd.core import losses
from tfkd.core.config import TrialConfig
from tfkd.core.modes import Batch, Mode, Param, Progress, Terms, register


def _share(value: float) -> bool:
    """at least 0 and below 1"""
    return 0.0 <= value < 1.0


def _positive(value: float) -> bool:
    """above 0"""
    return value > 0.0


@register
class ClassWiseSelfKD(Mode):
    """Anchors at even batch positions, their same-class partners at odd ones (`class_pairs`)."""

    name = "cskd"
    description = (
        "class-wise self-KD (CS-KD): each sample's prediction is pulled towards that of another "
        "sample of its class in the batch"
    )
    sampler = "class_pairs"
    params = (
        Param(
            "cskd_share",
            float,
            0.5,
            "the class-wise KL's share of the loss, lambda / (1 + lambda)",
            _share,
        ),
        Param("cskd_temperature", float, 4.0, "the softmax temperature of the KL", _positive),
    )

    def __init__(self, cfg: TrialConfig, **kwargs) -> None:  # noqa: ANN003
        if cfg.batch_size % 2:
            raise ValueError(
                f"mode cskd trains on pairs: batch_size must be even, got {cfg.batch_size}"
            )
        super().__init__(cfg, **kwargs)

    def terms(self, batch: Batch, progress: Progress) -> Terms:
        if not batch.train:
            return Terms.of(losses.cross_entropy_loss(batch.logits, batch.labels))
        pairs = batch.logits.shape[0] // 2 * 2  # static shape: capturable
        anchors, partners = batch.logits[0:pairs:2], batch.logits[1:pairs:2]
        return Terms.of(self.loss_of(anchors, batch.labels[0:pairs:2], partners, self.cfg))

    @staticmethod
    def loss_of(
        logits: Tensor, labels: Tensor, partner_logits: Tensor, cfg: TrialConfig
    ) -> losses.LossTerms:
        return losses.class_wise_self_kd_loss(
            logits, labels, partner_logits, cfg.cskd_share, cfg.cskd_temperature
        )

    @classmethod
    def loss(
        cls, logits: Tensor, labels: Tensor, teacher_logits: Tensor | None, cfg: TrialConfig
    ) -> losses.LossTerms:
        """The loss of anchors `logits` whose partners' logits are `teacher_logits` (plain CE
        without them, as an evaluation sees it)."""
        if teacher_logits is None:
            return losses.cross_entropy_loss(logits, labels)
        return cls.loss_of(logits, labels, teacher_logits, cfg)
