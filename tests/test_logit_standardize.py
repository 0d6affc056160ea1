"""logit_standardize (Sun et al., CVPR 2024): an option of every mode with a teacher that
z-scores the student's and the teacher's logits before the temperature, checked against the
authors' equation computed here in numpy; off, the losses are those of before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tfkd.core import losses, modes
from tfkd.core.config import TrialConfig

TEACHER_MODES = [name for name in modes.names() if modes.get(name).needs_teacher]
DISTILLATION = ["kd", "rekd", "dekd", "tfkd_self"]


def authors_normalize(z: np.ndarray) -> np.ndarray:
    """sunshangquan/logit-standardization-KD, mdistiller/distillers/KD.py, normalize():
    (z - mean) / (1e-7 + std) over the classes, std with Bessel's correction (torch.std)."""
    mean = z.mean(axis=1, keepdims=True)
    std = np.sqrt(((z - mean) ** 2).sum(axis=1, keepdims=True) / (z.shape[1] - 1))
    return (z - mean) / (1e-7 + std)


def log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def authors_kd(z, t, y, *, temperature, alpha, multiplier, semantics):
    """(1-a) CE(raw z) + a m T^2 KL(softmax(Z(t)/T) || softmax(Z(z)/T)); the KL summed over
    classes and averaged over the batch (paper), or averaged over batch x classes (reference)."""
    n, k = z.shape
    log_q = log_softmax(authors_normalize(z) / temperature)
    log_p = log_softmax(authors_normalize(t) / temperature)
    kl_sum = float((np.exp(log_p) * (log_p - log_q)).sum())
    kl = kl_sum / n if semantics == "paper" else kl_sum / (n * k)
    ce = float(-log_softmax(z)[np.arange(n), y].mean())
    return (1 - alpha) * ce + alpha * multiplier * temperature**2 * kl


def logits(num_classes: int = 10, size: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    z = 2 * torch.randn(size, num_classes, generator=gen, dtype=torch.float64) + 1
    t = 7 * torch.randn(size, num_classes, generator=gen, dtype=torch.float64) - 3
    y = torch.randint(0, num_classes, (size,), generator=gen)
    return z, t, y


def test_the_standardised_logits_are_the_authors_z_scores():
    z, _, _ = logits()
    got = losses.standardize_logits(z).numpy()
    np.testing.assert_allclose(got, authors_normalize(z.numpy()), rtol=1e-12)
    assert np.allclose(got.mean(axis=1), 0) and np.allclose(got.std(axis=1, ddof=1), 1)


@pytest.mark.parametrize("mode", DISTILLATION)
@pytest.mark.parametrize("semantics", ["paper", "reference"])
def test_the_distillation_modes_follow_the_authors_equation(mode, semantics):
    """The authors' KD+LS setting (README: --logit-stand --base-temp 2) and another."""
    z, t, y = logits()
    for temperature, alpha, multiplier in ((2.0, 0.9, 10.0), (5.0, 0.5, 1.0)):
        cfg = TrialConfig.from_dict(
            {"mode": mode, "temperature": temperature, "alpha": alpha, "multiplier": multiplier,
             "semantics": semantics, "logit_standardize": True}
        )  # fmt: skip
        got = float(modes.get(mode).loss(z, y, t, cfg).total)
        expected = authors_kd(z.numpy(), t.numpy(), y.numpy(), temperature=temperature,
                              alpha=alpha, multiplier=multiplier, semantics=semantics)  # fmt: skip
        assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("mode", TEACHER_MODES)
def test_every_teacher_mode_has_the_option_off_by_default_and_honours_it(mode):
    """A teacher whose logits are the student's scaled and shifted per sample has the same
    z-scores: with the option on, the distillation term vanishes; off (the default), it does
    not, and the loss is the one without the key."""
    z, _, y = logits(seed=1)
    t = 3.0 * z + torch.arange(6, dtype=z.dtype).unsqueeze(1)
    loss = modes.get(mode).loss
    default = TrialConfig.from_dict({"mode": mode, "temperature": 4})
    assert default.logit_standardize is False
    off = loss(z, y, t, default)
    on = loss(z, y, t, default.replace(logit_standardize=True))
    assert abs(kl_part(on)) < 1e-9 < abs(kl_part(off))


def kl_part(terms: losses.LossTerms | modes.Terms) -> float:
    return float(terms.kl if isinstance(terms, losses.LossTerms) else terms.parts["kl"])


def test_off_is_the_loss_of_before():
    """The option off gives kd_loss without standardisation, bit for bit."""
    z, t, y = logits(seed=2)
    cfg = TrialConfig.from_dict({"mode": "kd", "temperature": 3, "alpha": 0.7})
    before = losses.kd_loss(z, y, t, temperature=3, alpha=0.7)
    assert torch.equal(modes.get("kd").loss(z, y, t, cfg).total, before.total)


def test_the_option_belongs_to_the_teacher_modes_only():
    for mode in set(modes.names()) - set(TEACHER_MODES):
        with pytest.raises(ValueError, match=r"'logit_standardize' \(mode \w+\) do not belong"):
            TrialConfig.from_dict({"mode": mode, "logit_standardize": True})
    assert {"kd", "rekd", "dekd", "tfkd_self", "dkd"} <= set(TEACHER_MODES)
