"""zipf_ls: Zipf's label smoothing (Liang, Li, Zhou, Zhang and Wang, ECCV 2022).

The non-target classes of each sample are ranked by the model's own (detached) logits, and the
prediction over them is pulled towards Zipf's law, q_k proportional to rank_k^(-power):
L = (1 - s) CE(z, y) + s (1/N) sum_n KL(q_n || softmax(z_n without the target class))
(`losses.zipf_label_smoothing_loss`). The authors' loss is CE + lambda L_zipf
(megvii-research/zipfls pytorch_zipfls/train.py and losses.py: `zipf_loss`, `kl_loss`, the
`rank_zipf` distribution with ranks by scipy's rankdata(-logits, method="min") over all K
classes, the target then dropped); s = lambda / (1 + lambda) is the same loss over 1 + lambda.

The logit-rank form differs from the authors' dense-vote form (their `--dense`, used for their
published CIFAR-100 results): there each spatial position of the last feature map is classified
by the final linear layer, and the classes are ranked by how many positions vote for them
(arg-max counts; classes with the same count, e.g. the many with no vote, share the best rank
of the tie). Here the classes are ranked by the pooled logits the model outputs, which needs no
access to the feature map and no extra classifier pass, and gives every class a distinct rank
(ties only among equal logits); it is the authors' `dense=False` path. One forward, no memory.
"""

from __future__ import annotations

from torch import Tensor

from tfkd.core import losses
from tfkd.core.config import TrialConfig
from tfkd.core.modes import LossMode, Param, register


def _share(value: float) -> bool:
    """at least 0 and below 1"""
    return 0.0 <= value < 1.0


def _positive(value: float) -> bool:
    """above 0"""
    return value > 0.0


@register
class ZipfLabelSmoothing(LossMode):
    """`losses.zipf_label_smoothing_loss`: Zipf's law over the non-target classes by logit rank."""

    name = "zipf_ls"
    description = (
        "Zipf's label smoothing: the non-target prediction is pulled towards Zipf's law over "
        "the classes ranked by the model's own logits"
    )
    params = (
        Param(
            "zipf_share",
            float,
            0.1 / 1.1,
            "the Zipf KL's share of the loss, lambda / (1 + lambda)",
            _share,
        ),
        Param("zipf_power", float, 1.0, "Zipf's exponent: q_k ~ rank_k^(-power)", _positive),
    )

    @staticmethod
    def loss_of(
        logits: Tensor, labels: Tensor, teacher_logits: Tensor | None, cfg: TrialConfig
    ) -> losses.LossTerms:
        return losses.zipf_label_smoothing_loss(logits, labels, cfg.zipf_share, cfg.zipf_power)
