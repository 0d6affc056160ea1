"""Training steps: what a CPU can check of the graph-captured step, and the CUDA checks.

On a CPU the captured step runs with a stand-in for the CUDA machinery (`capture` keeps the
step function, `replay` calls it), so the warm-up and its undoing, the static batch, the tensor
learning rate and the on-device meter are all exercised; only the graph itself is not.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from types import SimpleNamespace

import pytest
import torch

from tfkd.core import data, models, modes, recipe, steps
from tfkd.core.config import CUDA_GRAPHS, TrialConfig
from tfkd.core.losses import LossTerms
from tfkd.core.train import run_trial

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
STEPS_PER_EPOCH, EPOCHS = 5, 10  # 50 steps: warm-up in epoch 1, milestones at epochs 3, 6, 8


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: torch's thread team only adds contention on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class StandInGraphs:
    """CudaGraphs without CUDA: capture records the function, replay calls it."""

    def __init__(self) -> None:
        self.captures = 0

    def check(self, device: torch.device) -> None:
        pass

    @contextlib.contextmanager
    def side_stream(self, device: torch.device):
        yield

    def rng_state(self, device: torch.device) -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(self, state: torch.Tensor, device: torch.device) -> None:
        torch.set_rng_state(state)

    def capture(self, fn, device: torch.device):
        self.captures += 1
        return SimpleNamespace(replay=fn)


def config(mode: str = "tfkd_reg", **extra) -> TrialConfig:
    return TrialConfig.from_dict(
        {"mode": mode, "model": "resnet8", "epochs": EPOCHS, "batch_size": 16, **extra}
    )


def batches(n: int, device: str = "cpu", size: int = 16) -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(1)
    side = 32 if device == "cuda" else 8
    return [
        (
            torch.randn(size, 3, side, side, generator=gen).to(device),
            torch.randint(0, 10, (size,), generator=gen).to(device),
        )
        for _ in range(n)
    ]


def tiny_net() -> torch.nn.Module:
    """Convolution, BatchNorm (running statistics to restore) and a classifier: fast on a CPU."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    )


def make_parts(cfg: TrialConfig, device: str = "cpu", fused: bool = True):
    """A student, a frozen teacher when the mode has one, fused SGD and the recipe's schedule.

    On the CPU a tiny network on 8 x 8 images; on CUDA the trial's model on 32 x 32 images.
    """
    dev = torch.device(device)
    torch.manual_seed(0)
    build = (lambda: models.build(cfg.model, 10)) if dev.type == "cuda" else tiny_net
    model = build().to(dev)
    teacher = None
    if modes.get(cfg.mode).needs_teacher:
        teacher = build().to(dev).eval().requires_grad_(False)
    if dev.type == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
        teacher = teacher.to(memory_format=torch.channels_last) if teacher else None
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.scaled_lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        fused=fused,
    )
    scheduler = recipe.build_scheduler(optimizer, cfg, STEPS_PER_EPOCH)
    parts = steps.StepParts(
        model, teacher, optimizer, modes.get(cfg.mode).loss, cfg, dev, steps.Meter(dev)
    )
    return parts, scheduler


def train(step, scheduler, data_: list, lr_of) -> tuple[list[float], list[torch.Tensor]]:
    """Run `step` over `data_`; the learning rate each step used and its (loss, ce, kl)."""
    lrs, terms = [], []
    for images, labels in data_:
        step(images, labels)
        lrs.append(lr_of())
        terms.append(step.meter.last.clone())
        scheduler.step()
    return lrs, terms


def eager_and_graphed(cfg: TrialConfig, n: int, graphs=None, device: str = "cpu"):
    data_ = batches(n, device)
    parts, sched = make_parts(cfg, device)
    eager = steps.EagerStep(parts)
    lrs_e, terms_e = train(eager, sched, data_, lambda: parts.optimizer.param_groups[0]["lr"])
    parts_g, sched_g = make_parts(cfg, device)
    graphed = steps.GraphedStep(parts_g, graphs)
    lrs_g, terms_g = train(graphed, sched_g, data_, lambda: graphed.lrs.tensors[0].item())
    return (parts, lrs_e, terms_e), (parts_g, lrs_g, terms_g)


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------ the learning rate as a tensor


def test_tensor_lr_follows_the_recipe_schedule_through_warmup_and_milestones():
    cfg = config()
    model = torch.nn.Linear(2, 2)
    opt = recipe.build_optimizer(model, cfg)
    sched = recipe.build_scheduler(opt, cfg, STEPS_PER_EPOCH)
    tensor_lr = steps.TensorLR(opt, torch.device("cpu"))
    floats, tensors = [], []
    for _ in range(EPOCHS * STEPS_PER_EPOCH):
        floats.append(opt.param_groups[0]["lr"])
        tensor_lr.load()
        tensors.append(tensor_lr.tensors[0].item())
        opt.step()
        sched.step()
    assert tensors == [torch.tensor(lr, dtype=torch.float32).item() for lr in floats]
    base = cfg.scaled_lr
    assert floats[0] == pytest.approx(base / STEPS_PER_EPOCH)  # warm-up starts low
    assert floats[STEPS_PER_EPOCH] == pytest.approx(base)  # and ends after one epoch
    assert floats[3 * STEPS_PER_EPOCH] == pytest.approx(base * 0.2)  # milestones 0.3, 0.6, 0.8
    assert floats[6 * STEPS_PER_EPOCH] == pytest.approx(base * 0.04)
    assert floats[-1] == pytest.approx(base * 0.008)


def test_fused_sgd_reads_the_installed_tensor_lr_and_keeps_float_lrs_outside():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    kw = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "fused": True}
    opt_a, opt_b = torch.optim.SGD(a.parameters(), **kw), torch.optim.SGD(b.parameters(), **kw)
    tensor_lr = steps.TensorLR(opt_b, torch.device("cpu"))
    x = torch.randn(8, 4)
    for i in range(10):
        for opt, m in ((opt_a, a), (opt_b, b)):
            opt.zero_grad()
            m(x).pow(2).sum().backward()
            opt.param_groups[0]["lr"] = 0.1 / (i + 2)
        tensor_lr.load()
        opt_a.step()
        with tensor_lr.installed():
            assert opt_b.param_groups[0]["lr"] is tensor_lr.tensors[0]
            opt_b.step()
        assert opt_b.param_groups[0]["lr"] == 0.1 / (i + 2)  # a float again
    assert same_state(a, b)


# ------------------------------------------------------------------ the meter on the device


def test_meter_sums_like_the_eager_loop_did():
    """Batches of 16, 16 and 7: the epoch's loss, terms and accuracy are those of the 39 images
    taken together (each batch's loss is a mean over its images, so the mode's loss of all 39
    at once is the epoch's mean), not a mean of the three batch means."""
    meter = steps.Meter(torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    loss = modes.get("tfkd_reg").loss
    batches = [(torch.randn(n, 10, generator=gen), torch.randint(0, 10, (n,))) for n in (16, 16, 7)]
    for logits, labels in batches:
        meter.add(loss(logits, labels, None, config()), logits, labels)
        meter.seen += labels.shape[0]
    logits, labels = (torch.cat(parts) for parts in zip(*batches, strict=True))
    whole = loss(logits, labels, None, config())
    summary = meter.summary()
    assert summary["train_images"] == 39
    assert summary["train_loss"] == pytest.approx(whole.total.item(), rel=1e-6)
    assert summary["train_ce"] == pytest.approx(whole.ce.item(), rel=1e-6)
    assert summary["train_kl"] == pytest.approx(whole.kl.item(), rel=1e-6)
    correct = sum(int((lg.argmax(dim=1) == lb).sum()) for lg, lb in batches)
    assert summary["train_accuracy"] == pytest.approx(100.0 * correct / 39)
    meter.check(1)  # all finite: no error


def test_meter_names_the_first_non_finite_step_and_resets_in_place():
    meter = steps.Meter(torch.device("cpu"))
    logits, labels = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    tensors = [t.data_ptr() for t in meter.tensors()]
    for loss in (1.0, 2.0, float("inf"), float("nan"), 3.0):
        value = torch.tensor(loss)
        meter.add(LossTerms(value, value, value * 0), logits, labels)
    with pytest.raises(steps.NonFiniteLossError, match=r"\(inf\) at epoch 4, step 3;"):
        meter.check(4)
    meter.reset()
    meter.check(5)
    assert [t.data_ptr() for t in meter.tensors()] == tensors  # a graph still sees them
    assert meter.seen == 0 and int(meter.steps) == 0 and int(meter.first_bad) == -1


# ------------------------------------------------------------------ the captured step's logic


@pytest.mark.parametrize("mode", modes.names())
def test_graphed_step_logic_follows_the_eager_trajectory_on_cpu(mode):
    """50 steps through warm-up and milestones: same rates, same losses, same weights."""
    graphs = StandInGraphs()
    (parts_e, lrs_e, terms_e), (parts_g, lrs_g, terms_g) = eager_and_graphed(
        config(mode), EPOCHS * STEPS_PER_EPOCH, graphs
    )
    assert graphs.captures == 1
    assert lrs_g == [torch.tensor(lr, dtype=torch.float32).item() for lr in lrs_e]
    assert torch.equal(torch.stack(terms_e), torch.stack(terms_g))
    assert same_state(parts_e.model, parts_g.model)
    assert torch.equal(parts_e.meter.sums, parts_g.meter.sums)


def test_warmup_leaves_no_trace_and_zero_momentum_equals_a_first_step():
    cfg = config()
    parts, _ = make_parts(cfg)
    before = {k: v.clone() for k, v in parts.model.state_dict().items()}
    step = steps.GraphedStep(parts, StandInGraphs())
    step._capture(*batches(1)[0])  # warm-up steps, undone, then the (stand-in) capture
    assert same_state(parts.model, SimpleNamespace(state_dict=lambda: before))
    buffers = [parts.optimizer.state[q]["momentum_buffer"] for q in parts.model.parameters()]
    assert all(not b.any() for b in buffers)
    assert int(parts.meter.steps) == 0 and not parts.meter.sums.any()


def test_resumed_graphed_steps_continue_the_uninterrupted_trajectory():
    cfg = config("kd")
    data_ = batches(20)
    parts, sched = make_parts(cfg)
    straight = steps.GraphedStep(parts, StandInGraphs())
    train(straight, sched, data_[:12], lambda: 0.0)
    saved = copy.deepcopy(
        {
            "model": parts.model.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": sched.state_dict(),
        }
    )
    train(straight, sched, data_[12:], lambda: 0.0)

    parts_r, sched_r = make_parts(cfg)
    parts_r.model.load_state_dict(saved["model"])
    parts_r.optimizer.load_state_dict(saved["optimizer"])
    sched_r.load_state_dict(saved["scheduler"])
    resumed = steps.GraphedStep(parts_r, StandInGraphs())
    train(resumed, sched_r, data_[12:], lambda: 0.0)
    assert same_state(parts.model, parts_r.model)


def test_graphed_step_refuses_a_partial_batch():
    parts, _ = make_parts(config())
    step = steps.GraphedStep(parts, StandInGraphs())
    step(*batches(1)[0])
    with pytest.raises(ValueError, match="drop its last partial batch"):
        step(*batches(1, size=7)[0])


def test_graphed_step_logic_catches_a_non_finite_loss_at_the_check():
    parts, sched = make_parts(config("baseline", lr=1e12, warmup_epochs=0))
    step = steps.GraphedStep(parts, StandInGraphs())
    train(step, sched, batches(6), lambda: 0.0)  # no sync, no error inside the steps
    with pytest.raises(steps.NonFiniteLossError, match=r"epoch 2, step \d+"):
        step.meter.check(2)


# ------------------------------------------------------------------ which step, which batches


CPU, GPU = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("device", "values", "train_size", "kind"),
    [
        (CPU, {}, 1000, "eager"),
        (CPU, {"cuda_graphs": "capture"}, 1000, "eager"),  # a CPU always runs eagerly
        (GPU, {}, 1000, "capture"),
        (GPU, {"cuda_graphs": "off"}, 1000, "eager"),
        (GPU, {"cuda_graphs": "compile"}, 1000, "compile"),
        (GPU, {"compile": True}, 1000, "eager"),  # compile=True: torch.compile's default mode
        (GPU, {}, 100, "eager"),  # less than one batch of 128: nothing to capture
    ],
)
def test_step_kind(device, values, train_size, kind):
    cfg = TrialConfig.from_dict({"mode": "baseline", **values})
    assert steps.kind_for(cfg, device, train_size) == kind


@pytest.mark.parametrize(
    ("values", "train_size", "message"),
    [
        ({"cuda_graphs": "capture", "compile": True}, 1000, "exclude each other"),
        ({"cuda_graphs": "capture"}, 100, "one full batch"),
    ],
)
def test_impossible_step_kinds_are_refused(values, train_size, message):
    cfg = TrialConfig.from_dict({"mode": "baseline", **values})
    with pytest.raises(ValueError, match=message):
        steps.kind_for(cfg, GPU, train_size)


def test_cuda_graphs_key_is_validated():
    with pytest.raises(ValueError, match="cuda_graphs"):
        TrialConfig.from_dict({"mode": "baseline", "cuda_graphs": "always"})
    with pytest.raises(ValueError, match="gpu_share"):
        TrialConfig.from_dict({"mode": "baseline", "gpu_share": 0})


@pytest.mark.parametrize("kind", sorted(steps.STEPS))
def test_graph_steps_get_full_batches_only_and_the_schedule_counts_them(kind):
    split = data.load("fake", "unused", fake_size=300, val_fraction=0.0).train
    drop_last = steps.STEPS[kind].drop_last
    assert drop_last == (kind != "eager")
    loader = data.make_loader(
        "device", split, batch_size=64, train=True, seed=0, drop_last=drop_last
    )
    n = len(split)
    assert n % 64, "the test needs a partial last batch"
    sizes = [labels.shape[0] for _, labels in loader]
    assert len(sizes) == len(loader) == (n // 64 if drop_last else n // 64 + 1)
    assert set(sizes) == ({64} if drop_last else {64, n % 64})


@pytest.mark.parametrize("setting", CUDA_GRAPHS)
def test_cuda_graphs_setting_changes_nothing_on_cpu(setting):
    """On CPU every cuda_graphs value trains the eager step, even where CUDA would refuse it
    (beside compile=True, or a training split smaller than a batch)."""
    cpu = torch.device("cpu")
    for compiled, train_size in itertools.product((False, True), (8, 1000)):
        cfg = config(cuda_graphs=setting, compile=compiled)
        assert steps.kind_for(cfg, cpu, train_size) == "eager", (compiled, train_size)


def test_a_cpu_trial_asked_for_cuda_graphs_trains_the_eager_step(monkeypatch):
    built = []
    real_build = steps.build
    monkeypatch.setattr(
        steps, "build", lambda kind, parts: built.append(kind) or real_build(kind, parts)
    )
    base = {"model": "resnet8", "dataset": "fake", "fake_size": 128, "epochs": 1, "data_dir": "x"}
    base["warmup_epochs"] = 0  # a 1-epoch schedule has no warm-up
    base["device"] = "cpu"  # also on a machine with a GPU
    metrics = run_trial({"mode": "tfkd_reg", **base, "cuda_graphs": "capture"})
    assert built == ["eager"] and metrics["epoch"] == 1


# ------------------------------------------------------------------ CUDA only (skipped on CPU)


def cuda_config(mode: str) -> TrialConfig:
    return config(mode, device="cuda")


@pytest.fixture
def deterministic_cudnn():
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


@CUDA
@pytest.mark.parametrize("mode", modes.names())
def test_cuda_graph_and_eager_steps_agree_over_50_steps(mode, deterministic_cudnn):
    (_, lrs_e, terms_e), (_, lrs_g, terms_g) = eager_and_graphed(
        cuda_config(mode), EPOCHS * STEPS_PER_EPOCH, device="cuda"
    )
    assert lrs_g == [torch.tensor(lr, dtype=torch.float32).item() for lr in lrs_e]
    # bf16 autocast: the same kernels in both, but allow bf16-level drift over 50 steps
    torch.testing.assert_close(
        torch.stack(terms_g).cpu(), torch.stack(terms_e).cpu(), rtol=2e-2, atol=2e-2
    )


@CUDA
def test_cuda_graph_replays_without_host_syncs():
    parts, sched = make_parts(cuda_config("kd"), "cuda")
    step = steps.GraphedStep(parts)
    data_ = batches(4, "cuda")
    step(*data_[0])  # capture
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for images, labels in data_[1:]:
            step(images, labels)
            sched.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    step.meter.seen = 4 * 16
    assert step.meter.summary()["train_images"] == 64


@CUDA
def test_cuda_trial_resumes_to_the_same_weights_with_graphs(tmp_path, deterministic_cudnn):
    import shutil

    from tfkd.core import checkpoint

    folders = []

    def recorder(name):
        def report(metrics, folder):
            target = tmp_path / name / f"epoch-{metrics['epoch']}"
            shutil.copytree(folder, target)
            folders.append(target)

        return report

    base = {"mode": "tfkd_reg", "model": "resnet8", "dataset": "fake", "fake_size": 512}
    base |= {"epochs": 3, "batch_size": 64, "data_dir": "x", "device": "cuda"}
    run_trial(base, recorder("straight"))
    ckpt = tmp_path / "straight" / "epoch-2" / checkpoint.CHECKPOINT_FILE
    run_trial(base, recorder("resumed"), resume_from=str(ckpt))
    a = torch.load(tmp_path / "straight" / "epoch-3" / checkpoint.CHECKPOINT_FILE)
    b = torch.load(tmp_path / "resumed" / "epoch-3" / checkpoint.CHECKPOINT_FILE)
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-3, atol=1e-4)


@CUDA
def test_cuda_trial_uses_the_captured_step_by_default(capsys):
    final = run_trial(
        {
            "mode": "baseline",
            "model": "resnet8",
            "dataset": "fake",
            "fake_size": 512,
            "epochs": 2,
            "batch_size": 64,
            "data_dir": "x",
            "device": "cuda",
        }
    )
    assert final["train_images"] % 64 == 0  # the last partial batch is dropped
    assert 0 <= final["val_accuracy"] <= 100
