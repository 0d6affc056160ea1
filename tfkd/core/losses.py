"""Losses of every teacher mode, as pure, vectorised functions of tensors.

Notation: z = student logits (N x K), y = labels, T = temperature, a = alpha, m = multiplier,
CE = cross-entropy with the hard labels, KL(p || q) = sum_k p_k (log p_k - log q_k).

Two semantics (see docs/losses.md):

* ``semantics="reference"`` reproduces the original Tf-KD implementation, which produced the
  paper's tables. Its KL term is PyTorch's ``KLDivLoss(reduction="mean")``: the element-wise mean
  over batch x classes, i.e. the per-sample KL divided by N*K (not by N).

  - KD (kd, rekd, dekd, tfkd_self):
    L = (1-a) CE(z, y) + a * m * T^2 * mean_{n,k}[ p^t_T (log p^t_T - log softmax(z/T)) ]
  - virtual teacher (tfkd_reg): the teacher is u = softmax(p^d / T) where p^d puts correct_prob on
    the true class and (1-correct_prob)/(K-1) elsewhere; the student side has *no* temperature and
    there is no T^2:
    L = (1-a) CE(z, y) + a * m * mean_{n,k}[ u (log u - log softmax(z)) ]

* ``semantics="paper"`` follows the paper's equations: the KL is summed over classes and averaged
  over the batch (``reduction="batchmean"``).

  - KD:    L = (1-a) CE(z, y) + a * m * T^2 * (1/N) sum_n KL(p^t_T || softmax(z/T))     (Hinton)
  - Tf-KD_reg (paper, Eq. 9): L = (1-a) CE(z, y) + a * m * (1/N) sum_n KL(p^d_T || softmax(z/T)),
    with the temperature on both sides, p^d_T = softmax(p^d / T).

Because "mean" divides by K as well, the reference KL is K times smaller than the paper's; that is
why the original needed multipliers such as 50 or 100 for some models.

Label smoothing (lsr) is the same in both: q = 1-eps on the true class, eps/(K-1) elsewhere,
L = -(1/N) sum_n sum_k q_k log softmax(z)_k.

One function per loss; each returns `LossTerms(total, ce, kl)`: `total` is what is optimised,
`ce` and `kl` its parts (logged separately; `kl` already carries alpha's partner factors m and T^2,
so total = (1-a) ce + a kl).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from tfkd.core.registry import Registry


class LossTerms(NamedTuple):
    """A loss and its named parts, so they can be logged separately."""

    total: Tensor
    ce: Tensor
    kl: Tensor


def _kl_reference(student_log_probs: Tensor, teacher_probs: Tensor) -> Tensor:
    """KLDivLoss(reduction='mean') of PyTorch 1.x: element-wise mean over batch x classes.

    Written as sum / numel because PyTorch has announced that 'mean' will become 'batchmean'.
    """
    return F.kl_div(student_log_probs, teacher_probs, reduction="sum") / student_log_probs.numel()


def _kl_paper(student_log_probs: Tensor, teacher_probs: Tensor) -> Tensor:
    """KL summed over classes, averaged over the batch."""
    return F.kl_div(student_log_probs, teacher_probs, reduction="batchmean")


@dataclass(frozen=True)
class Semantics:
    """One loss semantics: its KL reduction, and whether the virtual teacher's KL divides the
    student's logits by T as well (the paper's Eq. 9) or not (the original code)."""

    kl: Callable[[Tensor, Tensor], Tensor]
    tempered_student: bool


KL_REDUCTIONS: Registry[Semantics] = Registry("semantics")
KL_REDUCTIONS.add("reference", Semantics(_kl_reference, tempered_student=False))
KL_REDUCTIONS.add("paper", Semantics(_kl_paper, tempered_student=True))


def _kl(semantics: str) -> Callable[[Tensor, Tensor], Tensor]:
    return KL_REDUCTIONS.get(semantics).kl


def _full_precision(x: Tensor) -> Tensor:
    """Losses are computed in at least float32, also under bf16 autocast."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _combine(ce: Tensor, kl: Tensor, alpha: float) -> LossTerms:
    return LossTerms(total=(1.0 - alpha) * ce + alpha * kl, ce=ce, kl=kl)


def kd_loss(
    student_logits: Tensor,
    labels: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float,
    alpha: float,
    multiplier: float = 1.0,
    semantics: str = "reference",
    standardize: bool = False,
) -> LossTerms:
    """Knowledge distillation (Hinton et al. 2015) as used by kd, rekd, dekd and tfkd_self.

    L = (1-alpha) CE(z, y) + alpha * multiplier * T^2 * KL(softmax(t/T) || softmax(z/T)),
    with the KL reduced per `semantics` (module docstring). The returned ``kl`` part already
    includes T^2 and the multiplier. With `standardize`, the KL sees the z-scored logits
    (`standardize_logits`, Sun et al. 2024); the CE keeps the raw ones.
    """
    t = temperature
    soft_student, soft_teacher = _distilled(student_logits, teacher_logits, standardize)
    teacher_probs = F.softmax(soft_teacher / t, dim=1)
    student_log_probs = F.log_softmax(soft_student / t, dim=1)
    kl = _kl(semantics)(student_log_probs, teacher_probs) * (t * t * multiplier)
    ce = F.cross_entropy(_full_precision(student_logits), labels)
    return _combine(ce, kl, alpha)


def virtual_teacher_distribution(
    labels: Tensor, num_classes: int, correct_prob: float, dtype: torch.dtype = torch.float32
) -> Tensor:
    """p^d: correct_prob on the true class, (1-correct_prob)/(K-1) on every other class."""
    off = (1.0 - correct_prob) / (num_classes - 1)
    dist = torch.full((labels.shape[0], num_classes), off, device=labels.device, dtype=dtype)
    return dist.scatter_(1, labels.unsqueeze(1), correct_prob)


def virtual_teacher_loss(
    student_logits: Tensor,
    labels: Tensor,
    *,
    temperature: float,
    alpha: float,
    correct_prob: float = 0.99,
    multiplier: float = 1.0,
    semantics: str = "reference",
) -> LossTerms:
    """Tf-KD_reg: distillation from a manually designed "virtual teacher" (Yuan et al. 2020).

    The teacher is softmax(p^d / T) with p^d from `virtual_teacher_distribution`.
    reference: L = (1-a) CE + a * m * KL_mean(softmax(p^d/T) || softmax(z))  (no T on the student)
    paper:     L = (1-a) CE + a * m * KL_batchmean(softmax(p^d/T) || softmax(z/T))
    """
    logits = _full_precision(student_logits)
    num_classes = logits.shape[1]
    design = virtual_teacher_distribution(labels, num_classes, correct_prob, logits.dtype)
    teacher_probs = F.softmax(design / temperature, dim=1)
    student_temperature = temperature if KL_REDUCTIONS.get(semantics).tempered_student else 1.0
    student_log_probs = F.log_softmax(logits / student_temperature, dim=1)
    kl = _kl(semantics)(student_log_probs, teacher_probs) * multiplier
    ce = F.cross_entropy(logits, labels)
    return _combine(ce, kl, alpha)


def label_smoothing_loss(
    student_logits: Tensor, labels: Tensor, *, epsilon: float = 0.1
) -> LossTerms:
    """LSR (Szegedy et al. 2016) with eps/(K-1) on each wrong class and 1-eps on the true one.

    L = -(1/N) sum_n sum_k q_k log softmax(z)_k. This equals
    ``F.cross_entropy(z, y, label_smoothing=eps * K / (K-1))``. The ``ce`` part is the plain
    hard-label cross-entropy and ``kl`` what smoothing adds to it (L - CE).
    """
    num_classes = student_logits.shape[1]
    log_probs = F.log_softmax(_full_precision(student_logits), dim=1)
    targets = torch.full_like(log_probs, epsilon / (num_classes - 1))
    targets.scatter_(1, labels.unsqueeze(1), 1.0 - epsilon)
    total = -(targets * log_probs).sum(dim=1).mean()
    ce = F.nll_loss(log_probs, labels)
    return LossTerms(total=total, ce=ce, kl=total - ce)


def cross_entropy_loss(student_logits: Tensor, labels: Tensor) -> LossTerms:
    """Plain cross-entropy (baseline); the KL part is zero."""
    ce = F.cross_entropy(_full_precision(student_logits), labels)
    return LossTerms(total=ce, ce=ce, kl=torch.zeros_like(ce))


def progressive_self_kd_loss(
    student_logits: Tensor, labels: Tensor, past_probs: Tensor, alpha: float | Tensor
) -> LossTerms:
    """PS-KD (Kim et al., ICCV 2021, Eq. 3-4): cross-entropy with progressively softened targets.

    q = (1 - alpha_t) onehot(y) + alpha_t p_{t-1}, L = -(1/N) sum_n sum_k q_k log softmax(z)_k,
    where p_{t-1} is the model's own prediction for the sample at the previous epoch and
    alpha_t = alpha_T t / T grows with the epoch t (a float or a device tensor). The ``ce`` part
    is the hard-label cross-entropy and ``kl`` what the soft target adds to it (L - CE).
    """
    log_probs = F.log_softmax(_full_precision(student_logits), dim=1)
    onehot = F.one_hot(labels, log_probs.shape[1]).to(log_probs.dtype)
    targets = (1.0 - alpha) * onehot + alpha * past_probs.to(log_probs.dtype).detach()
    total = -(targets * log_probs).sum(dim=1).mean()
    ce = F.nll_loss(log_probs, labels)
    return LossTerms(total=total, ce=ce, kl=total - ce)


def class_wise_self_kd_loss(
    anchor_logits: Tensor,
    anchor_labels: Tensor,
    partner_logits: Tensor,
    share: float,
    temperature: float,
) -> LossTerms:
    """CS-KD (Yun et al., CVPR 2020, Eq. 2-3): pull a sample's prediction towards another
    sample's of the same class.

    L_cls = T^2 (1/N) sum_n KL(softmax(z'_n / T) || softmax(z_n / T)), where z'_n are the logits
    of a sample of z_n's class, held constant (no gradient, as the authors' `torch.no_grad()`
    forward), N the number of anchors; CE is over the anchors only. The authors optimise
    CE + lambda L_cls; here the share s = lambda / (1 + lambda) weighs them,
    L = (1 - s) CE + s L_cls, i.e. the authors' loss over (1 + lambda).
    """
    z = _full_precision(anchor_logits)
    partner = F.softmax(_full_precision(partner_logits).detach() / temperature, dim=1)
    log_probs = F.log_softmax(z / temperature, dim=1)
    kl = F.kl_div(log_probs, partner, reduction="batchmean") * temperature**2
    return _combine(F.cross_entropy(z, anchor_labels), kl, share)


def logit_ranks(logits: Tensor) -> Tensor:
    """Each class's rank in its row by decreasing logit, 1 for the largest; tied logits share
    the smallest rank (scipy's rankdata(-z, method="min")): 1 + #{j : z_j > z_k}.

    Sort + searchsorted: O(N K log K) and no host sync (capturable).
    """
    ascending = logits.sort(dim=1).values.contiguous()
    at_most = torch.searchsorted(ascending, logits.contiguous(), right=True)
    return logits.shape[1] - at_most + 1


def zipf_non_target_distribution(logits: Tensor, labels: Tensor, power: float) -> Tensor:
    """Zipf's law over the non-target classes: q_k proportional to rank_k^(-power) for k != y,
    q_y = 0, with rank_k the class's rank by the (detached) logits among all K classes
    (`logit_ranks`). Rows sum to 1."""
    ranks = logit_ranks(logits.detach()).to(torch.float32)
    weights = ranks.pow(-power)
    weights = weights.scatter(1, labels.unsqueeze(1), 0.0)
    return weights / weights.sum(dim=1, keepdim=True)


def zipf_label_smoothing_loss(
    logits: Tensor, labels: Tensor, share: float, power: float
) -> LossTerms:
    """Zipf's label smoothing (Liang et al., ECCV 2022), the logit-rank form.

    L_zipf = (1/N) sum_n KL(q_n || softmax over the non-target classes of z_n), where q_n is
    `zipf_non_target_distribution` (ranks from the model's own detached logits) and the softmax
    runs over the K - 1 non-target logits only (the authors' `kl_loss`). The authors optimise
    CE + lambda L_zipf; here the share s = lambda / (1 + lambda) weighs them,
    L = (1 - s) CE + s L_zipf.
    """
    z = _full_precision(logits)
    target = F.one_hot(labels, z.shape[1]).bool()
    non_target_log_probs = z - z.masked_fill(target, float("-inf")).logsumexp(dim=1, keepdim=True)
    q = zipf_non_target_distribution(z, labels, power).to(z.dtype)
    pointwise = torch.xlogy(q, q) - q * non_target_log_probs.masked_fill(target, 0.0)
    kl = pointwise.sum(dim=1).mean()
    return _combine(F.cross_entropy(z, labels), kl, share)


STANDARDIZE_EPS = 1e-7  # the authors' epsilon (sunshangquan/logit-standardization-KD, KD.py)


def standardize_logits(logits: Tensor, eps: float = STANDARDIZE_EPS) -> Tensor:
    """Logit standardisation (Sun et al., CVPR 2024, "Logit Standardization in Knowledge
    Distillation").

    Z(z) = (z - mean_k z) / (eps + std_k z) per sample, over the K classes, with the sample
    standard deviation (Bessel's correction, torch.std's default, as the authors' `normalize`)
    and eps = 1e-7 added to it. The softmax of Z(z) / T then depends on the logits' relations,
    not their range: a student need not match the teacher's logit magnitude, only its shape.
    """
    logits = _full_precision(logits)
    mean = logits.mean(dim=1, keepdim=True)
    std = logits.std(dim=1, keepdim=True)
    return (logits - mean) / (eps + std)


def _distilled(
    student_logits: Tensor, teacher_logits: Tensor, standardize: bool
) -> tuple[Tensor, Tensor]:
    """The logits a distillation term compares, in full precision, the teacher's detached."""
    student, teacher = _full_precision(student_logits), _full_precision(teacher_logits.detach())
    if standardize:
        return standardize_logits(student), standardize_logits(teacher)
    return student, teacher


class DKDTerms(NamedTuple):
    """Decoupled KD's parts: the CE, and TCKD and NCKD (each already times T^2, unweighted)."""

    ce: Tensor
    tckd: Tensor
    nckd: Tensor


NON_TARGET_MASK = 1000.0  # what DKD subtracts from the target logit / T to leave it out


def dkd_terms(
    student_logits: Tensor,
    labels: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float,
    standardize: bool = False,
) -> DKDTerms:
    """Decoupled knowledge distillation (Zhao et al., CVPR 2022): KD's two parts.

    With p = softmax(z/T) and t the label, b = (p_t, 1 - p_t) is the binary target /
    non-target distribution and p^ = softmax over the non-target classes only:
      TCKD = T^2 (1/N) sum_n KL(b^teacher || b^student)
      NCKD = T^2 (1/N) sum_n KL(p^teacher || p^student)
    (KD = TCKD + (1 - p_t^teacher) NCKD; DKD weights them alpha and beta instead.) As in the
    authors' mdistiller/distillers/DKD.py, the non-target softmax subtracts 1000 from the
    target's z/T. With `standardize` both sides see `standardize_logits` first (Sun et al.).
    """
    t = temperature
    student, teacher = _distilled(student_logits, teacher_logits, standardize)
    target = F.one_hot(labels, student.shape[1]).to(student.dtype)
    batch = student.shape[0]
    binary_student = _target_vs_rest(F.softmax(student / t, dim=1), target)
    binary_teacher = _target_vs_rest(F.softmax(teacher / t, dim=1), target)
    tckd = F.kl_div(binary_student.log(), binary_teacher, reduction="sum") * (t * t) / batch
    masked_student = F.log_softmax(student / t - NON_TARGET_MASK * target, dim=1)
    masked_teacher = F.softmax(teacher / t - NON_TARGET_MASK * target, dim=1)
    nckd = F.kl_div(masked_student, masked_teacher, reduction="sum") * (t * t) / batch
    return DKDTerms(F.cross_entropy(_full_precision(student_logits), labels), tckd, nckd)


def _target_vs_rest(probs: Tensor, target: Tensor) -> Tensor:
    """(p_t, 1 - p_t) per sample, N x 2, as the sums over the target and the other classes."""
    on_target = (probs * target).sum(dim=1, keepdim=True)
    return torch.cat([on_target, (probs * (1 - target)).sum(dim=1, keepdim=True)], dim=1)
