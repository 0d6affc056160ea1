"""cskd (class-wise self-KD, Yun et al., CVPR 2020): the authors' equations, the class-pair
sampler, a step without host sync, the search space's liveness and a digits trial that learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tfkd.core import data, modes
from tfkd.core.config import TrialConfig
from tfkd.core.modes import Batch, Progress
from tfkd.core.train import run_trial
from tfkd.sweep import search_space

CPU = torch.device("cpu")


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def authors_loss(anchor: np.ndarray, y: np.ndarray, partner: np.ndarray, lam: float, t: float):
    """alinlab/cs-kd train.py in float64: CE over the anchors + lamda * KDLoss, where KDLoss is
    KLDivLoss(reduction="sum")(log_softmax(z/T), softmax(z'/T)) * T^2 / N."""
    n = anchor.shape[0]
    ce = -log_softmax(anchor)[np.arange(n), y].mean()
    q = np.exp(log_softmax(partner / t))
    kl = (q * (np.log(q) - log_softmax(anchor / t))).sum() * t**2 / n
    return ce + lam * kl


def make_mode(share: float, temperature: float, k: int = 5) -> modes.Mode:
    cfg = TrialConfig.from_dict(
        {"mode": "cskd", "cskd_share": share, "cskd_temperature": temperature}
    )
    return modes.get("cskd")(cfg, num_classes=k, train_size=0)


def interleaved(anchor: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    return torch.stack((anchor, partner), dim=1).reshape(-1, *anchor.shape[1:])


@pytest.mark.parametrize("lam, temperature", [(1.0, 4.0), (3.0, 2.0)])
def test_the_loss_is_the_authors_over_one_plus_lambda(lam, temperature):
    """A batch [a1, p1, a2, p2, ...]: CE over the anchors, T^2 KL(partner || anchor)."""
    gen = torch.Generator().manual_seed(1)
    anchor = 3 * torch.randn(6, 5, generator=gen, dtype=torch.float64)
    partner = 3 * torch.randn(6, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=gen)
    mode = make_mode(lam / (1 + lam), temperature)
    logits = interleaved(anchor, partner).float()
    terms = mode.terms(Batch(logits, y.repeat_interleave(2)), Progress(CPU, 3, 1))
    expected = authors_loss(anchor.numpy(), y.numpy(), partner.numpy(), lam, temperature)
    assert float(terms.total) * (1 + lam) == pytest.approx(expected, rel=1e-5)
    assert float(terms.parts["ce"]) == pytest.approx(
        authors_loss(anchor.numpy(), y.numpy(), partner.numpy(), 0.0, temperature), rel=1e-5
    )


def test_only_the_anchors_get_a_gradient_the_authors_one():
    """d/dz of CE + lambda T^2 KL: (softmax(z) - onehot)/N + lambda T (softmax(z/T) -
    softmax(z'/T))/N on an anchor; nothing on a partner (the authors' no_grad forward)."""
    lam, t, n = 1.0, 4.0, 4
    gen = torch.Generator().manual_seed(2)
    anchor, partner = torch.randn(n, 5, generator=gen), torch.randn(n, 5, generator=gen)
    y = torch.randint(0, 5, (n,), generator=gen)
    logits = interleaved(anchor, partner).requires_grad_()
    make_mode(0.5, t).terms(
        Batch(logits, y.repeat_interleave(2)), Progress(CPU, 3, 1)
    ).total.backward()
    a, p = anchor.double().numpy(), partner.double().numpy()
    soft = np.exp(log_softmax(a)) - np.eye(5)[y.numpy()]
    pull = lam * t * (np.exp(log_softmax(a / t)) - np.exp(log_softmax(p / t)))
    grad = logits.grad.double().numpy() * (1 + lam)
    np.testing.assert_allclose(grad[0::2], (soft + pull) / n, atol=1e-6)
    assert not grad[1::2].any()


def test_evaluation_is_plain_cross_entropy_over_every_sample():
    z, y = (
        torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, -1.0], [0.3, 0.2, 0.1]]),
        torch.tensor([0, 1, 2]),
    )
    terms = make_mode(0.5, 4.0, k=3).terms(Batch(z, y, train=False), Progress(CPU, 3, 1))
    expected = -log_softmax(z.double().numpy())[np.arange(3), y.numpy()].mean()
    assert float(terms.total) == pytest.approx(expected, rel=1e-6)


def test_the_step_needs_no_host_sync():
    """On the meta device every value is unknown: an .item() or a branch on a value would
    raise, so the loss (and its backward) is capturable into a CUDA graph."""
    mode = modes.get("cskd")(TrialConfig.from_dict({"mode": "cskd"}), num_classes=10,
                             train_size=0, device="meta")  # fmt: skip
    z = torch.randn(8, 10, device="meta", requires_grad=True)
    y = torch.randint(0, 10, (8,), device="meta")
    mode.terms(Batch(z, y), Progress(torch.device("meta"), 3, 2)).total.backward()
    assert z.grad.shape == (8, 10)


def test_an_odd_batch_size_is_refused_with_the_fix():
    cfg = TrialConfig.from_dict({"mode": "cskd", "batch_size": 127})
    with pytest.raises(ValueError, match="batch_size must be even"):
        modes.get("cskd")(cfg, num_classes=10, train_size=0)


# ------------------------------------------------------------------ the class-pair sampler


def pairs_of(labels: torch.Tensor, seed: int) -> torch.Tensor:
    order = data.SAMPLERS.get("class_pairs")().order(labels, torch.Generator().manual_seed(seed))
    return order.view(-1, 2)


def test_every_sample_is_an_anchor_once_with_another_sample_of_its_class():
    labels = torch.tensor([3, 0, 1, 0, 2, 1, 0, 3, 1, 0, 2, 4])  # class 4 has one sample
    pairs = pairs_of(labels, seed=0)
    assert torch.equal(pairs[:, 0].sort().values, torch.arange(len(labels)))
    assert torch.equal(labels[pairs[:, 0]], labels[pairs[:, 1]])
    alone = pairs[:, 0] == 11
    assert torch.equal(pairs[alone, 1], torch.tensor([11]))  # no other sample: itself
    assert (pairs[~alone, 0] != pairs[~alone, 1]).all()
    assert data.SAMPLERS.get("class_pairs")().length(len(labels)) == 2 * len(labels)


def test_partners_are_drawn_uniformly_among_the_others_and_depend_only_on_the_seed():
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    assert torch.equal(pairs_of(labels, 5), pairs_of(labels, 5))
    partners_of_0 = torch.stack([pairs_of(labels, s) for s in range(600)])
    partners_of_0 = partners_of_0[partners_of_0[..., 0] == 0][:, 1]
    counts = torch.bincount(partners_of_0, minlength=6)
    assert counts[0] == 0 and counts[4:].sum() == 0
    assert (counts[1:4] > 150).all()  # 200 expected each of 600


def test_the_device_loader_yields_whole_pairs_of_one_class():
    split = data.load("digits", "unused").train
    loader = data.make_loader(
        "device", split, batch_size=64, train=True, seed=1, indices=True, sampler="class_pairs"
    )
    assert len(loader) == -(-2 * len(split) // 64)
    anchors = []
    for _, labels, indices in loader:
        assert torch.equal(labels[0::2], labels[1::2])
        anchors.append(indices[0::2])
    assert torch.equal(torch.cat(anchors).sort().values, torch.arange(len(split)))


# ------------------------------------------------------------------ search space


def loss_gradient(cfg_values: dict, k: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(k)
    y = torch.randint(0, k, (64,), generator=gen)
    centres = 2 * torch.randn(k, k, generator=gen)
    logits = centres[y.repeat_interleave(2)] + torch.randn(128, k, generator=gen)
    logits.requires_grad_()
    cfg = TrialConfig.from_dict({"mode": "cskd", **cfg_values})
    mode = modes.get("cskd")(cfg, num_classes=k, train_size=0)
    mode.terms(Batch(logits, y.repeat_interleave(2)), Progress(CPU, 3, 1)).total.backward()
    return logits.grad


@pytest.mark.parametrize("k", [10, 100])
@pytest.mark.parametrize("axis", ["cskd_share", "cskd_temperature"])
def test_each_axis_moves_the_gradient_across_its_range(axis, k):
    space = search_space.load(search_space.default_path("cskd"), "cskd")
    low, high = space.params[axis].low, space.params[axis].high
    at_low = loss_gradient({**space.defaults, axis: low}, k)
    at_high = loss_gradient({**space.defaults, axis: high}, k)
    assert (at_low - at_high).norm() > 0.05 * max(at_low.norm(), at_high.norm())  # 5%


def test_the_preset_is_the_authors_step():
    """lr x batch/128 x (grad/(1+lambda) + wd' w) == 0.1 x (grad + 1e-4 w) at lambda = 1."""
    space = search_space.load(search_space.default_path("cskd"), "cskd")
    preset = space.preset_for("resnet18")
    cfg = TrialConfig.from_dict({"mode": "cskd", **preset})
    lam = cfg.cskd_share / (1 - cfg.cskd_share)
    assert lam == pytest.approx(1.0) and cfg.cskd_temperature == 4.0
    assert cfg.scaled_lr / (1 + lam) == pytest.approx(0.1)
    assert cfg.scaled_lr * cfg.weight_decay == pytest.approx(0.1 * 1e-4)
    assert cfg.batch_size // 2 == 128  # the authors' anchors


def test_a_digits_trial_learns():
    """Two epochs at batch 32 (lr 0.4 x 32/128 = 0.1), no warm-up: well above chance."""
    config = {"mode": "cskd", "dataset": "digits", "model": "resnet8", "batch_size": 32,
              "lr": 0.4, "data_dir": "unused", "epochs": 2, "warmup_epochs": 0}  # fmt: skip
    metrics = []
    final = run_trial(config, lambda m, folder: metrics.append(m))
    assert final["val_accuracy"] > 40.0  # chance: 10%
    assert all(m["train_kl"] > 0 for m in metrics)
