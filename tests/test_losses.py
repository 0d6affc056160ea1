"""Losses against values computed by hand (numpy, from the equations), for both semantics."""

import math

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


def reduce(rows, semantics, k):
    # reference: KLDivLoss "mean" = sum / (N*K); paper: "batchmean" = sum / N
    return rows.sum() / (len(rows) * (k if semantics == "reference" else 1))


@pytest.mark.parametrize("semantics", ["reference", "paper"])
def test_kd_loss_matches_hand_computation(semantics):
    T, alpha, m = 4.0, 0.7, 3.0
    rows = kl_rows(softmax(TEACHER / T), softmax(STUDENT / T))
    expected_kl = reduce(rows, semantics, 4) * T * T * m
    expected = (1 - alpha) * ce(STUDENT, LABELS) + alpha * expected_kl
    terms = losses.kd_loss(
        t(STUDENT),
        torch.tensor(LABELS),
        t(TEACHER),
        temperature=T,
        alpha=alpha,
        multiplier=m,
        semantics=semantics,
    )
    assert terms.total.item() == pytest.approx(expected, rel=1e-5)
    assert terms.kl.item() == pytest.approx(expected_kl, rel=1e-5)
    assert terms.ce.item() == pytest.approx(ce(STUDENT, LABELS), rel=1e-5)


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


@pytest.mark.parametrize("semantics", ["reference", "paper"])
def test_virtual_teacher_matches_hand_computation(semantics):
    T, alpha, m, p = 20.0, 0.1, 100.0, 0.9
    k = STUDENT.shape[1]
    design = np.full_like(STUDENT, (1 - p) / (k - 1))
    design[np.arange(2), LABELS] = p
    teacher = softmax(design / T)
    student_t = T if semantics == "paper" else 1.0
    rows = kl_rows(teacher, softmax(STUDENT / student_t))
    expected_kl = reduce(rows, semantics, k) * m
    expected = (1 - alpha) * ce(STUDENT, LABELS) + alpha * expected_kl
    options = dict(temperature=T, alpha=alpha, correct_prob=p, multiplier=m, semantics=semantics)
    terms = losses.virtual_teacher_loss(t(STUDENT), torch.tensor(LABELS), **options)
    assert terms.kl.item() == pytest.approx(expected_kl, rel=1e-5)
    assert terms.total.item() == pytest.approx(expected, rel=1e-5)


def test_virtual_teacher_distribution():
    dist = losses.virtual_teacher_distribution(torch.tensor([0, 3]), 5, 0.96)
    assert torch.allclose(dist.sum(dim=1), torch.ones(2))
    assert dist[0, 0].item() == pytest.approx(0.96)
    assert dist[1, 3].item() == pytest.approx(0.96)
    assert dist[0, 1].item() == pytest.approx(0.01)


def test_label_smoothing_matches_hand_computation_and_torch():
    eps, k = 0.1, STUDENT.shape[1]
    q = np.full_like(STUDENT, eps / (k - 1))
    q[np.arange(2), LABELS] = 1 - eps
    expected = float(-(q * np.log(softmax(STUDENT))).sum(axis=1).mean())
    got = losses.label_smoothing_loss(t(STUDENT), torch.tensor(LABELS), epsilon=eps).total
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # torch puts eps'/K everywhere; the definitions coincide for eps' = eps*K/(K-1)
    torch_value = F.cross_entropy(
        t(STUDENT), torch.tensor(LABELS), label_smoothing=eps * k / (k - 1)
    )
    assert got.item() == pytest.approx(torch_value.item(), rel=1e-5)


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
