"""zipf_ls (Zipf's label smoothing, Liang et al., ECCV 2022), logit-rank form: the authors'
equations, ties, no host sync, the search space's liveness and a digits trial that learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from tfkd.core import modes
from tfkd.core.config import TrialConfig
from tfkd.core.modes import Batch, Progress
from tfkd.core.train import run_trial
from tfkd.sweep import search_space

CPU = torch.device("cpu")


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def authors_zipf_target(z: np.ndarray, y: np.ndarray, power: float) -> np.ndarray:
    """megvii-research/zipfls gen_pdf (dense=False, rank='hard', rank_zipf): ranks by
    rankdata(-logits, method='min') over all K classes, (1/rank)^power, the target's column
    dropped, normalised over the K - 1 others."""
    ranks = rankdata(-z, axis=1, method="min")
    dist = (1.0 / ranks) ** power
    keep = np.ones_like(z, dtype=bool)
    keep[np.arange(len(y)), y] = False
    dist = dist[keep].reshape(len(y), -1)
    return dist / dist.sum(axis=1, keepdims=True)


def authors_loss(z: np.ndarray, y: np.ndarray, lam: float, power: float) -> float:
    """CE + lambda * kl_loss: mean over samples of KL(pdf || softmax(non-target logits))."""
    n = len(y)
    ce = -log_softmax(z)[np.arange(n), y].mean()
    q = authors_zipf_target(z, y, power)
    keep = np.ones_like(z, dtype=bool)
    keep[np.arange(n), y] = False
    log_p = log_softmax(z[keep].reshape(n, -1))
    kl = (q * (np.log(q) - log_p)).sum(axis=1).mean()
    return ce + lam * kl


def loss_of(z: torch.Tensor, y: torch.Tensor, share: float, power: float):
    cfg = TrialConfig.from_dict({"mode": "zipf_ls", "zipf_share": share, "zipf_power": power})
    mode = modes.get("zipf_ls")(cfg, num_classes=z.shape[1], train_size=0)
    return mode.terms(Batch(z, y), Progress(CPU, 3, 1))


@pytest.mark.parametrize("lam, power", [(0.1, 1.0), (1.0, 2.5), (0.5, 0.5)])
def test_the_loss_is_the_authors_over_one_plus_lambda(lam, power):
    gen = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(8, 7, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 7, (8,), generator=gen)
    terms = loss_of(z.float(), y, lam / (1 + lam), power)
    expected = authors_loss(z.numpy(), y.numpy(), lam, power)
    assert float(terms.total) * (1 + lam) == pytest.approx(expected, rel=1e-5)
    assert float(terms.parts["ce"]) == pytest.approx(authors_loss(z.numpy(), y.numpy(), 0, 1))


def test_tied_logits_share_the_best_rank_as_the_authors_rankdata():
    """Logits 4, 3, 3, 2, 1 (target the last): ranks 1, 2, 2, 4 -> 1, 1/2, 1/2, 1/4."""
    z = torch.tensor([[4.0, 3.0, 3.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.0, 5.0]])
    y = torch.tensor([4, 4])
    expected = authors_loss(z.double().numpy(), y.numpy(), 1.0, 1.0)
    assert float(loss_of(z, y, 0.5, 1.0).total) * 2 == pytest.approx(expected, rel=1e-6)
    q = authors_zipf_target(z.double().numpy(), y.numpy(), 1.0)
    np.testing.assert_allclose(q[0], np.array([1, 0.5, 0.5, 0.25]) / 2.25)
    np.testing.assert_allclose(q[1], np.full(4, 0.25))  # all tied behind the target


def test_the_gradient_pulls_the_non_target_softmax_towards_zipf_and_leaves_the_target():
    """d KL(q || softmax_nt(z)) / d z_k = (softmax_nt(z)_k - q_k) / N for k != y, 0 for y:
    the ranks carry no gradient (the target is the model's own, detached)."""
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(4, 6, generator=gen, requires_grad=True)
    y = torch.randint(0, 6, (4,), generator=gen)
    terms = loss_of(z, y, 0.5, 1.0)
    (terms.total * 2 - terms.parts["ce"]).backward()  # = lambda (1) x the Zipf KL
    zn, yn = z.detach().double().numpy(), y.numpy()
    keep = np.ones_like(zn, dtype=bool)
    keep[np.arange(4), yn] = False
    p_nt = np.exp(log_softmax(zn[keep].reshape(4, -1)))
    expected = (p_nt - authors_zipf_target(zn, yn, 1.0)) / 4
    grad = z.grad.double().numpy()
    np.testing.assert_allclose(grad[keep].reshape(4, -1), expected, atol=1e-6)
    np.testing.assert_allclose(grad[~keep], 0.0, atol=1e-7)


def test_the_step_needs_no_host_sync():
    """On the meta device every value is unknown: an .item() or a branch on a value would
    raise, so the loss (ranks included) and its backward are capturable into a CUDA graph."""
    cfg = TrialConfig.from_dict({"mode": "zipf_ls"})
    mode = modes.get("zipf_ls")(cfg, num_classes=100, train_size=0, device="meta")
    z = torch.randn(8, 100, device="meta", requires_grad=True)
    y = torch.randint(0, 100, (8,), device="meta")
    mode.terms(Batch(z, y), Progress(torch.device("meta"), 3, 2)).total.backward()
    assert z.grad.shape == (8, 100)


def loss_gradient(cfg_values: dict, k: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(k)
    z = (2 * torch.randn(64, k, generator=gen)).requires_grad_()
    y = torch.randint(0, k, (64,), generator=gen)
    cfg = TrialConfig.from_dict({"mode": "zipf_ls", **cfg_values})
    mode = modes.get("zipf_ls")(cfg, num_classes=k, train_size=0)
    mode.terms(Batch(z, y), Progress(CPU, 3, 1)).total.backward()
    return z.grad


@pytest.mark.parametrize("k", [10, 100])
@pytest.mark.parametrize("axis", ["zipf_share", "zipf_power"])
def test_each_axis_moves_the_gradient_across_its_range(axis, k):
    space = search_space.load(search_space.default_path("zipf_ls"), "zipf_ls")
    low, high = space.params[axis].low, space.params[axis].high
    at_low = loss_gradient({**space.defaults, axis: low}, k)
    at_high = loss_gradient({**space.defaults, axis: high}, k)
    assert (at_low - at_high).norm() > 0.05 * max(at_low.norm(), at_high.norm())  # 5%


def test_the_preset_is_the_authors_step():
    """lr x (grad / (1 + lambda) + wd' w) == 0.1 x (grad + 1e-4 w) at lambda = 0.1."""
    space = search_space.load(search_space.default_path("zipf_ls"), "zipf_ls")
    cfg = TrialConfig.from_dict({"mode": "zipf_ls", **space.preset_for("resnet18")})
    lam = cfg.zipf_share / (1 - cfg.zipf_share)
    assert lam == pytest.approx(0.1) and cfg.zipf_power == 1.0
    assert cfg.scaled_lr / (1 + lam) == pytest.approx(0.1)
    assert cfg.scaled_lr * cfg.weight_decay == pytest.approx(0.1 * 1e-4)


def test_a_digits_trial_learns():
    """Two epochs at batch 32 (lr 0.4 x 32/128 = 0.1), no warm-up: well above chance."""
    config = {"mode": "zipf_ls", "dataset": "digits", "model": "resnet8", "batch_size": 32,
              "lr": 0.4, "data_dir": "unused", "epochs": 2, "warmup_epochs": 0}  # fmt: skip
    metrics = []
    final = run_trial(config, lambda m, folder: metrics.append(m))
    assert final["val_accuracy"] > 40.0  # chance: 10%
    assert all(m["train_kl"] > 0 for m in metrics)
