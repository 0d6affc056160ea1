"""pskd (progressive self-KD, Kim et al., ICCV 2021): the authors' equations, memory, resume."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from tfkd.core import checkpoint, data, modes
from tfkd.core.config import TrialConfig
from tfkd.core.modes import Batch, Progress
from tfkd.core.train import run_trial

CPU = torch.device("cpu")


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def authors_loss(z: np.ndarray, y: np.ndarray, past: np.ndarray, alpha_t: float) -> float:
    """The authors' target and loss, in float64: soft = (1 - a_t) onehot + a_t past,
    loss = (-soft * log_softmax(z)).mean(0).sum()."""
    onehot = np.eye(z.shape[1])[y]
    soft = (1 - alpha_t) * onehot + alpha_t * past
    return float((-soft * np.log(softmax(z))).mean(axis=0).sum())


def test_two_epochs_follow_the_authors_equations():
    """T = 4 epochs, alpha_T = 0.8: epoch 1 trains on the labels (the authors fill the memory
    with one-hot targets at epoch 0), epoch 2 on 0.6 onehot + 0.4 p_1 (alpha_2 = 0.8 * 2/4)."""
    cfg = TrialConfig.from_dict({"mode": "pskd", "epochs": 4, "pskd_alpha": 0.8})
    mode = modes.get("pskd")(cfg, num_classes=4, train_size=6)
    progress = Progress(CPU, epochs=4, steps_per_epoch=2)
    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 2, 3, 1, 2])
    order = [torch.tensor([4, 0, 2]), torch.tensor([1, 5, 3])]
    logits = {e: 3 * torch.randn(6, 4, generator=gen, dtype=torch.float64) for e in (1, 2)}
    y = labels.numpy()
    for epoch, alpha_t in ((1, 0.0), (2, 0.4)):
        for step, idx in enumerate(order):
            progress.set(epoch, step)
            z = logits[epoch][idx].float()
            terms = mode.terms(Batch(z, labels[idx], None, idx), progress)
            past = softmax(logits[1].numpy())[idx.numpy()] if epoch == 2 else 0.0
            expected = authors_loss(logits[epoch].numpy()[idx.numpy()], y[idx], past, alpha_t)
            assert float(terms.total) == pytest.approx(expected, rel=2e-3)  # fp16 memory
            hard = authors_loss(logits[epoch].numpy()[idx.numpy()], y[idx], 0.0, 0.0)
            assert float(terms.parts["ce"]) == pytest.approx(hard, rel=1e-5)
    np.testing.assert_allclose(mode.past.float().numpy(), softmax(logits[2].numpy()), atol=1e-3)


def test_alpha_t_grows_with_the_epoch_as_a_device_tensor_the_step_reads():
    """The same batch, the same memory: the loss at epoch t uses alpha_T t / T."""
    cfg = TrialConfig.from_dict({"mode": "pskd", "epochs": 10, "pskd_alpha": 0.5})
    mode = modes.get("pskd")(cfg, num_classes=3, train_size=2)
    progress = Progress(CPU, epochs=10, steps_per_epoch=1)
    past = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    z, y, idx = torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, -1.0]]), torch.tensor([0, 1]), None
    for epoch in (3, 7, 10):
        mode.past.copy_(torch.tensor(past))
        progress.set(epoch, 0)
        idx = torch.tensor([0, 1])
        total = float(mode.terms(Batch(z, y, None, idx), progress).total)
        expected = authors_loss(z.double().numpy(), y.numpy(), past, 0.5 * epoch / 10)
        assert total == pytest.approx(expected, rel=2e-3)


def test_evaluation_is_plain_cross_entropy_and_never_touches_the_memory():
    cfg = TrialConfig.from_dict({"mode": "pskd"})
    mode = modes.get("pskd")(cfg, num_classes=3, train_size=4)
    z, y = torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, -1.0]]), torch.tensor([0, 1])
    terms = mode.terms(Batch(z, y, None, None, train=False), Progress(CPU, 10, 1))
    assert float(terms.total) == pytest.approx(authors_loss(z.numpy(), y.numpy(), 0.0, 0.0))
    assert not mode.past.any()


def test_the_memory_costs_what_the_docs_say():
    cfg = TrialConfig.from_dict({"mode": "pskd"})
    mode = modes.get("pskd")(cfg, num_classes=100, train_size=45_000)
    assert mode.past.dtype == torch.float16
    assert mode.past.nelement() * mode.past.element_size() == 45_000 * 100 * 2  # 9 MB


def test_a_digits_trial_learns_and_a_resumed_one_keeps_the_memory(tmp_path):
    config = {
        "mode": "pskd",
        "dataset": "digits",
        "model": "resnet8",
        "batch_size": 64,
        "data_dir": "unused",
        "epochs": 3,
    }
    saved, metrics = {}, []

    def keep(m, folder):
        target = tmp_path / f"epoch-{m['epoch']}"
        shutil.copytree(folder, target, dirs_exist_ok=True)
        saved[m["epoch"]] = target / checkpoint.CHECKPOINT_FILE
        metrics.append(m)

    final = run_trial(config, keep)
    assert final["val_accuracy"] > 30.0  # chance: 10%
    assert abs(metrics[0]["train_kl"]) < 1e-6 < abs(metrics[1]["train_kl"])  # soft from epoch 2
    straight = checkpoint.load(saved[3])
    memory = straight["mode_state"]["past"]
    assert memory.shape == (len(data.load("digits", "unused").train), 10)
    assert memory.float().sum(dim=1).sub(1).abs().max() < 1e-2  # every sample remembered

    run_trial(config, keep, resume_from=str(saved[2]))
    resumed = checkpoint.load(saved[3])
    assert torch.equal(memory, resumed["mode_state"]["past"])
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
