"""Losses against independent computations, for both semantics and for bf16 logits.

"paper" is checked against numpy, from the paper's equations; "reference" against the original
implementation's own formulas (nn.KLDivLoss() with its default element-wise mean, a per-sample
loop building the virtual teacher), written out here as the original wrote them.
"""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tfkd.core import losses

STUDENT = np.array([[1.0, 2.0, 0.5, -1.0], [0.3, -0.2, 2.5, 1.0]])
TEACHER = np.array([[2.0, 0.5, 0.1, 0.0], [-1.0, 0.0, 3.0, 0.2]])
LABELS = np.array([1, 2])


def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def kl_rows(p, q):
    """Per-sample KL(p || q)."""
    return (p * (np.log(p) - np.log(q))).sum(axis=1)


def ce(logits, labels):
    return float(-np.log(softmax(logits)[np.arange(len(labels)), labels]).mean())


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def kl_div_mean(log_q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The original's nn.KLDivLoss() (reduction="mean": the element-wise mean)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch warns that "mean" is not the batch mean
        return F.kl_div(log_q, p, reduction="mean")


def original_kd(outputs, labels, teacher_outputs, alpha, T, multiplier):
    """The original's loss_kd (multiplier as in its self-training variant)."""
    soft = kl_div_mean(F.log_softmax(outputs / T, dim=1), F.softmax(teacher_outputs / T, dim=1))
    return soft * (alpha * T * T) * multiplier + F.cross_entropy(outputs, labels) * (1.0 - alpha)


def original_regularization(outputs, labels, alpha, T, correct_prob, multiplier):
    """The original's loss_kd_regularization, its per-sample loop included."""
    K = outputs.size(1)
    teacher_soft = torch.ones_like(outputs) * (1 - correct_prob) / (K - 1)
    for i in range(outputs.shape[0]):
        teacher_soft[i, labels[i]] = correct_prob
    soft = kl_div_mean(F.log_softmax(outputs, dim=1), F.softmax(teacher_soft / T, dim=1))
    return (1.0 - alpha) * F.cross_entropy(outputs, labels) + alpha * soft * multiplier


def original_label_smoothing(outputs, labels, alpha):
    """The original's loss_label_smoothing."""
    N, C = outputs.shape
    smoothed = torch.full((N, C), alpha / (C - 1), dtype=outputs.dtype)
    smoothed.scatter_(1, labels.unsqueeze(1), 1 - alpha)
    return -torch.sum(F.log_softmax(outputs, dim=1) * smoothed) / N


def test_kd_loss_paper_matches_the_equation():
    T, alpha, m = 4.0, 0.7, 3.0
    rows = kl_rows(softmax(TEACHER / T), softmax(STUDENT / T))
    expected_kl = rows.mean() * T * T * m  # (1/N) sum_n KL(p_n || q_n)
    terms = losses.kd_loss(
        t(STUDENT),
        torch.tensor(LABELS),
        t(TEACHER),
        temperature=T,
        alpha=alpha,
        multiplier=m,
        semantics="paper",
    )
    assert terms.kl.item() == pytest.approx(expected_kl, rel=1e-6)
    assert terms.total.item() == pytest.approx(
        (1 - alpha) * ce(STUDENT, LABELS) + alpha * expected_kl, rel=1e-6
    )
    assert terms.ce.item() == pytest.approx(ce(STUDENT, LABELS), rel=1e-6)


def test_kd_loss_reference_is_the_originals_loss_kd():
    T, alpha, m = 4.0, 0.7, 3.0
    labels = torch.tensor(LABELS)
    expected = original_kd(t(STUDENT), labels, t(TEACHER), alpha, T, m)
    terms = losses.kd_loss(
        t(STUDENT),
        labels,
        t(TEACHER),
        temperature=T,
        alpha=alpha,
        multiplier=m,
        semantics="reference",
    )
    assert terms.total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_reference_kl_is_paper_kl_divided_by_classes():
    kw = dict(temperature=3.0, alpha=1.0)
    ref = losses.kd_loss(
        t(STUDENT), torch.tensor(LABELS), t(TEACHER), semantics="reference", **kw
    ).total
    paper = losses.kd_loss(
        t(STUDENT), torch.tensor(LABELS), t(TEACHER), semantics="paper", **kw
    ).total
    assert paper.item() == pytest.approx(4 * ref.item(), rel=1e-5)


@pytest.mark.parametrize("semantics", ["reference", "paper"])
def test_kl_is_zero_for_identical_logits(semantics):
    terms = losses.kd_loss(
        t(STUDENT),
        torch.tensor(LABELS),
        t(STUDENT),
        temperature=5.0,
        alpha=0.9,
        semantics=semantics,
    )
    assert terms.kl.item() == pytest.approx(0.0, abs=1e-6)


def test_virtual_teacher_paper_matches_eq_9():
    T, alpha, m, p = 20.0, 0.1, 100.0, 0.9
    k = STUDENT.shape[1]
    design = np.full_like(STUDENT, (1 - p) / (k - 1))
    design[np.arange(2), LABELS] = p
    expected_kl = kl_rows(softmax(design / T), softmax(STUDENT / T)).mean() * m
    options = dict(temperature=T, alpha=alpha, correct_prob=p, multiplier=m, semantics="paper")
    terms = losses.virtual_teacher_loss(t(STUDENT), torch.tensor(LABELS), **options)
    assert terms.kl.item() == pytest.approx(expected_kl, rel=1e-6)
    assert terms.total.item() == pytest.approx(
        (1 - alpha) * ce(STUDENT, LABELS) + alpha * expected_kl, rel=1e-6
    )


def test_virtual_teacher_reference_is_the_originals_loss_kd_regularization():
    T, alpha, m, p = 20.0, 0.1, 100.0, 0.99
    labels = torch.tensor(LABELS)
    expected = original_regularization(t(STUDENT), labels, alpha, T, p, m)
    options = dict(temperature=T, alpha=alpha, correct_prob=p, multiplier=m)
    got = losses.virtual_teacher_loss(t(STUDENT), labels, semantics="reference", **options)
    assert got.total.item() == pytest.approx(expected.item(), rel=1e-6)


BF16_CASES = {
    "kd": (
        lambda z, y, tz: losses.kd_loss(z, y, tz, temperature=4.0, alpha=0.9, multiplier=2.0),
        lambda z, y, tz: original_kd(z, y, tz, 0.9, 4.0, 2.0),
    ),
    "tfkd_reg": (
        lambda z, y, tz: losses.virtual_teacher_loss(z, y, temperature=20.0, alpha=0.5),
        lambda z, y, tz: original_regularization(z, y, 0.5, 20.0, 0.99, 1.0),
    ),
    "lsr": (
        lambda z, y, tz: losses.label_smoothing_loss(z, y, epsilon=0.1),
        lambda z, y, tz: original_label_smoothing(z, y, 0.1),
    ),
}


@pytest.mark.parametrize("mode", sorted(BF16_CASES))
def test_bf16_logits_give_the_float64_loss_of_the_same_values(mode):
    """CUDA steps run under bf16 autocast: the loss of bf16 logits is that of their values."""
    loss, original = BF16_CASES[mode]
    generator = torch.Generator().manual_seed(0)
    student = (3 * torch.randn(64, 100, generator=generator)).bfloat16()
    teacher = (3 * torch.randn(64, 100, generator=generator)).bfloat16()
    labels = torch.randint(0, 100, (64,), generator=generator)
    got = loss(student, labels, teacher).total
    expected = original(student.double(), labels, teacher.double())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_virtual_teacher_distribution():
    dist = losses.virtual_teacher_distribution(torch.tensor([0, 3]), 5, 0.96)
    assert torch.allclose(dist.sum(dim=1), torch.ones(2))
    assert dist[0, 0].item() == pytest.approx(0.96)
    assert dist[1, 3].item() == pytest.approx(0.96)
    assert dist[0, 1].item() == pytest.approx(0.01)


def test_label_smoothing_is_the_originals_and_torchs():
    eps, k = 0.1, STUDENT.shape[1]
    labels = torch.tensor(LABELS)
    got = losses.label_smoothing_loss(t(STUDENT), labels, epsilon=eps).total
    assert got.item() == pytest.approx(original_label_smoothing(t(STUDENT), labels, eps).item())
    # torch puts eps'/K everywhere; the definitions coincide for eps' = eps*K/(K-1)
    torch_value = F.cross_entropy(t(STUDENT), labels, label_smoothing=eps * k / (k - 1))
    assert got.item() == pytest.approx(torch_value.item(), rel=1e-6)


def test_label_smoothing_zero_epsilon_is_cross_entropy():
    got = losses.label_smoothing_loss(t(STUDENT), torch.tensor(LABELS), epsilon=0.0).total
    assert got.item() == pytest.approx(ce(STUDENT, LABELS), rel=1e-6)


def test_losses_are_vectorised_and_device_agnostic():
    logits = torch.randn(512, 100, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 100, (512,))
    loss = losses.virtual_teacher_loss(logits, labels, temperature=20, alpha=0.5).total
    loss.backward()
    assert loss.dim() == 0 and math.isfinite(loss.item())
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_unknown_semantics_is_rejected():
    with pytest.raises(ValueError, match="semantics"):
        losses.kd_loss(
            t(STUDENT),
            torch.tensor(LABELS),
            t(TEACHER),
            temperature=1,
            alpha=0.5,
            semantics="other",
        )
