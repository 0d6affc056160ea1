"""dkd (decoupled KD, Zhao et al., CVPR 2022): the authors' equations, the warm-up on the
training's progress, a search space that is live at K = 10 and K = 100, and a digits trial."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from tfkd.core import checkpoint, modes
from tfkd.core.config import TrialConfig
from tfkd.core.modes import Batch, Progress
from tfkd.core.train import run_trial
from tfkd.sweep import search_space

CPU = torch.device("cpu")
DIGITS = {"dataset": "digits", "model": "resnet8", "batch_size": 64, "data_dir": "unused"}


def softmax_row(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0))


def z_score(z: np.ndarray) -> np.ndarray:
    """The authors' normalize(): (z - mean) / (1e-7 + sample std), per row."""
    return (z - z.mean(axis=1, keepdims=True)) / (1e-7 + z.std(axis=1, ddof=1, keepdims=True))


def authors_dkd(z, t, y, *, alpha, beta, temperature, weight=1.0, standardize=False):
    """The paper's equations, one sample at a time in float64: b = (p_t, 1 - p_t),
    p^ = the non-target probabilities renormalised; TCKD = T^2 KL(b^T || b^S), NCKD = T^2
    KL(p^T || p^S); L = CE + weight (alpha mean TCKD + beta mean NCKD). Returns (L, CE, TCKD,
    NCKD)."""
    raw = z  # the CE sees the raw logits
    if standardize:
        z, t = z_score(z), z_score(t)
    ce = tckd = nckd = 0.0
    for n, label in enumerate(y):
        ps, pt = softmax_row(z[n] / temperature), softmax_row(t[n] / temperature)
        tckd += kl([pt[label], 1 - pt[label]], [ps[label], 1 - ps[label]])
        others = [k for k in range(z.shape[1]) if k != label]
        nckd += kl(pt[others] / pt[others].sum(), ps[others] / ps[others].sum())
        ce -= math.log(softmax_row(raw[n])[label])
    n = len(y)
    tckd, nckd = temperature**2 * tckd / n, temperature**2 * nckd / n
    return ce / n + weight * (alpha * tckd + beta * nckd), ce / n, tckd, nckd


def batch(num_classes: int = 7, size: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    z = 3 * torch.randn(size, num_classes, generator=gen, dtype=torch.float64)
    t = 4 * torch.randn(size, num_classes, generator=gen, dtype=torch.float64)
    y = torch.randint(0, num_classes, (size,), generator=gen)
    return z, t, y


def dkd(**values) -> TrialConfig:
    return TrialConfig.from_dict({"mode": "dkd", "temperature": 4, **values})


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize(("alpha", "beta", "temperature"), [(1, 8, 4), (0.5, 2, 1.5)])
def test_the_loss_is_the_authors_equations(alpha, beta, temperature, standardize):
    z, t, y = batch()
    cfg = dkd(dkd_alpha=alpha, dkd_beta=beta, temperature=temperature,
              logit_standardize=standardize)  # fmt: skip
    terms = modes.get("dkd").loss(z, y, t, cfg)
    expected = authors_dkd(z.numpy(), t.numpy(), y.numpy(), alpha=alpha, beta=beta,
                           temperature=temperature, standardize=standardize)  # fmt: skip
    got = [terms.total, terms.parts["ce"], terms.parts["tckd"], terms.parts["nckd"]]
    assert [float(g) for g in got] == pytest.approx(expected, rel=1e-9)
    assert float(terms.parts["kl"]) == pytest.approx(expected[0] - expected[1], rel=1e-9)


@pytest.mark.parametrize(("share", "ratio"), [(0.9, 8.0), (0.3, 0.5), (0.0, 4.0), (1.0, 2.0)])
def test_the_share_coordinates_weigh_the_authors_terms(share, ratio):
    """kd_share lambda, nckd_ratio r: (1 - lambda) CE + lambda (NCKD + TCKD / r), from the
    authors' terms computed one sample at a time."""
    z, t, y = batch(num_classes=10, size=6, seed=5)
    _, ce, tckd, nckd = authors_dkd(z.numpy(), t.numpy(), y.numpy(), alpha=1, beta=1,
                                    temperature=4)  # fmt: skip
    expected = (1 - share) * ce + share * (nckd + tckd / ratio)
    cfg = dkd(kd_share=share, nckd_ratio=ratio)
    assert float(modes.get("dkd").loss(z, y, t, cfg).total) == pytest.approx(expected, rel=1e-9)


def test_the_authors_config_is_a_share_of_eight_ninths_at_ratio_eight_and_scale_nine():
    from tfkd.core import coordinates

    converted = coordinates.coordinates_of(dkd(), ["kd_share", "nckd_ratio"])
    assert converted.values == pytest.approx({"kd_share": 8 / 9, "nckd_ratio": 8.0})
    assert converted.scale == pytest.approx(9.0)  # CE 1 + beta 8 (TCKD rides on NCKD)
    with pytest.raises(ValueError, match="disagrees with the searched coordinates"):
        dkd(kd_share=8 / 9, nckd_ratio=8.0, dkd_beta=8.0)  # the authors' beta, at scale 9


def test_tckd_plus_teacher_weighted_nckd_is_kd():
    """The paper's decomposition, per sample: KD = TCKD + (1 - p_t^teacher) NCKD, where KD is
    Hinton's T^2 KL(p^T || p^S) (kd in the paper's form with alpha = 1)."""
    z, t, y = batch(num_classes=10, size=4, seed=3)
    cfg = TrialConfig.from_dict({"mode": "kd", "temperature": 3, "alpha": 1.0,
                                 "semantics": "paper"})  # fmt: skip
    for n in range(len(y)):
        one = slice(n, n + 1)
        kd = modes.get("kd").loss(z[one], y[one], t[one], cfg).kl
        parts = modes.get("dkd").loss(z[one], y[one], t[one], dkd(temperature=3)).parts
        teacher_target = softmax_row(t[n].numpy() / 3)[y[n]]
        decoupled = parts["tckd"] + (1 - teacher_target) * parts["nckd"]
        assert float(kd) == pytest.approx(float(decoupled), rel=1e-9)


def test_the_warm_up_weight_is_read_from_the_progress_tensors():
    """The same batch at epochs 1, 5, 20 and 30 of 40 with a 20-epoch warm-up: min(e / 20, 1)."""
    z, t, y = batch()
    cfg = dkd(epochs=40, dkd_warmup=20)
    mode = modes.get("dkd")(cfg, num_classes=7, train_size=0)
    progress = Progress(CPU, epochs=40, steps_per_epoch=3)
    for epoch in (1, 5, 20, 30):
        progress.set(epoch, 2)
        total = float(mode.terms(Batch(z, y, t), progress).total)
        expected = authors_dkd(z.numpy(), t.numpy(), y.numpy(), alpha=1, beta=8, temperature=4,
                               weight=min(epoch / 20, 1))[0]  # fmt: skip
        assert total == pytest.approx(expected, rel=1e-6)  # float32 progress
    no_warm_up = modes.get("dkd")(dkd(dkd_warmup=0), num_classes=7, train_size=0)
    progress.set(1, 0)
    full = authors_dkd(z.numpy(), t.numpy(), y.numpy(), alpha=1, beta=8, temperature=4)[0]
    assert float(no_warm_up.terms(Batch(z, y, t), progress).total) == pytest.approx(full)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_warm_up_stays_live_in_a_captured_cuda_graph():
    """Captured once, replayed at several epochs: the weight follows Progress.epoch."""
    device = torch.device("cuda")
    z, t, y = (x.to(device) for x in batch())
    z, t = z.float(), t.float()
    mode = modes.get("dkd")(dkd(epochs=40), num_classes=7, train_size=0, device=device)
    progress = Progress(device, epochs=40, steps_per_epoch=1)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        mode.terms(Batch(z, y, t), progress)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = mode.terms(Batch(z, y, t), progress).total
    for epoch in (1, 10, 25):
        progress.set(epoch, 0)
        graph.replay()
        expected = authors_dkd(z.double().cpu().numpy(), t.double().cpu().numpy(),
                               y.cpu().numpy(), alpha=1, beta=8, temperature=4,
                               weight=min(epoch / 20, 1))[0]  # fmt: skip
        assert float(captured) == pytest.approx(expected, rel=1e-4)


def test_bad_values_name_the_key():
    with pytest.raises(ValueError, match=r"'dkd_beta' = -1.0 is out of range .*0 or more"):
        dkd(dkd_beta=-1)
    with pytest.raises(ValueError, match=r"'dkd_warmup' must be a int"):
        dkd(dkd_warmup=2.5)
    with pytest.raises(ValueError, match=r"'dkd_beta' \(mode dkd\) do not belong"):
        TrialConfig.from_dict({"mode": "kd", "dkd_beta": 8})


# ---------------------------------------------------------------- the search space is live

LIVE = 0.1  # an axis whose two ends move the loss gradient by less than this share is dead


def logit_gradient(cfg: TrialConfig, num_classes: int) -> torch.Tensor:
    """d loss / d student logits on a fixed batch whose teacher is confident and right, the
    student unsure: the regime a distillation term acts in."""
    gen = torch.Generator().manual_seed(num_classes)
    y = torch.randint(0, num_classes, (64,), generator=gen)
    t = 2 * torch.randn(64, num_classes, generator=gen) + 6 * torch.nn.functional.one_hot(
        y, num_classes
    )
    z = torch.randn(64, num_classes, generator=gen).requires_grad_()
    modes.get("dkd").loss(z, y, t, cfg).total.backward()
    return z.grad


@pytest.mark.parametrize("num_classes", [10, 100])
def test_every_axis_moves_the_gradient_at_ten_and_a_hundred_classes(num_classes):
    space = search_space.load(search_space.default_path("dkd"), "dkd")
    # no loss scale; the learning rate (lr_factor, every mode's) is tested in test_search_science
    assert set(space.params) == {"kd_share", "nckd_ratio", "lr_factor"}
    point = {"mode": "dkd", **space.defaults}
    for name, axis in space.params.items():
        if name == "lr_factor":
            continue
        low, high = (
            logit_gradient(TrialConfig.from_dict({**point, name: value}), num_classes)
            for value in (axis.low, axis.high)
        )
        effect = float((low - high).norm() / max(low.norm(), high.norm()))
        assert effect > LIVE, (name, num_classes, effect)


def test_the_presets_are_the_authors_configs():
    space = search_space.load(search_space.default_path("dkd"), "dkd")
    assert space.preset_for("resnet20", "resnet56")["dkd_beta"] == 2.0
    assert space.preset_for("mobilenet_v2", "vgg13")["dkd_beta"] == 6.0
    for row in space.presets:
        assert row["provenance"] in ("original", "filled-in") and "mdistiller" in row["source"]
        values = TrialConfig.from_dict({"mode": "dkd", **space.preset_for(row["model"])})
        assert values.scaled_lr in (0.05, 0.01)  # the authors' lr at their batch of 64


# ---------------------------------------------------------------- a digits trial learns


@pytest.fixture(scope="module")
def digits_teacher(tmp_path_factory) -> str:
    """A baseline checkpoint on digits (as tests/test_train.py makes its teachers)."""
    folder = tmp_path_factory.mktemp("dkd-teacher")

    def keep(metrics, checkpoint_dir):
        shutil.copytree(checkpoint_dir, folder / f"epoch-{metrics['epoch']}")

    run_trial({"mode": "baseline", **DIGITS, "epochs": 2}, keep)
    return str(folder / "epoch-2" / checkpoint.CHECKPOINT_FILE)


def test_a_digits_trial_learns(digits_teacher):
    """beta 1: the 2-epoch teacher is weak (about 30%), its non-target ranks mostly noise."""
    reports = []
    config = {"mode": "dkd", **DIGITS, "epochs": 3, "dkd_warmup": 2, "dkd_beta": 1.0,
              "teacher_checkpoint": digits_teacher}  # fmt: skip
    final = run_trial(config, lambda metrics, folder: reports.append(metrics))
    assert final["val_accuracy"] > 25.0  # chance: 10%
    assert all(m["train_tckd"] > 0 and m["train_nckd"] > 0 for m in reports)
