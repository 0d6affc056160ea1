"""One training step (forward, loss, backward, optimiser step) behind one small interface.

A step is a callable `step(images, labels, indices=None)` that trains on one batch and adds the
batch's loss terms and correct count to a `Meter` on the device. The loss is the trial's mode
(`tfkd.core.modes`): it receives the batch (logits, teacher logits, labels, sample indices) and
the training's `Progress` (device tensors filled before each step) and returns named `Terms`;
a bare loss function `(logits, labels, teacher_logits, cfg)` is accepted too. Nothing in a step
reads a value back to the host, so the CPU can queue the next batch while the GPU still works on
this one; `train_one_epoch` checks the meter for a non-finite loss at its interval and reads the
sums once per epoch.

Kinds (config key `cuda_graphs`, resolved by `kind_for`; CPU always runs `eager`):

- `eager`: the step as written, one kernel launch at a time.
- `capture` (the default on CUDA): the whole step -- student forward, teacher forward, loss,
  backward, fused SGD step and the meter update -- captured once into a CUDA graph with
  `torch.cuda.graph` and replayed for every batch: one launch instead of thousands.
- `compile`: `torch.compile(mode="reduce-overhead")` of the student (Inductor kernels + CUDA
  graphs of the forward and backward); the loss and the optimiser step stay eager.

Why manual capture is the default rather than torch.compile: a CIFAR-sized step at batch 128 is
bound by kernel launches (7.8 ms per eager ResNet18 step where the arithmetic needs under 1 ms,
measured on an H100), and both remove the launches (reduce-overhead + fused SGD measured 2.74 ms).
But compiling took 11 s for resnet18, 41-47 s for mobilenet_v2/shufflenet_v2 and more than 130 s
for resnext29, while ASHA stops most trials after a few one-second epochs; capturing costs a few
eager warm-up steps (well under a second). Inductor's on-disk cache makes a second compile of the
same model faster, but the first trial of each model on each node still pays the full price.
`benchmarks/gpu_trials.py --with-compile` measured both in full trials on an H100
(docs/performance.md): resnet18 37.2k img/s captured vs 33.8k compiled, start-up 9 s vs 32 s;
mobilenet_v2 20.7k vs 21.3k, start-up 16 s vs 56 s. Capture is as fast or faster and ready at once.

Graph capture needs static shapes and addresses, hence:
- every training batch has the same size: the loader drops the last partial batch of an epoch
  (`drop_last`; with 45,000 training images at batch 128 that is 72 images, a different random
  72 each epoch). The eager step keeps it, as it always did.
- the learning rate lives in a device tensor that the captured fused SGD kernel reads; before each
  replay it is filled from `param_groups[i]["lr"]`, which the recipe's torch scheduler keeps
  updating exactly as in the eager loop (`recipe.build_scheduler` stays the one definition of
  the schedule).
- the parameters, gradients, momentum buffers, BatchNorm statistics, meter tensors, the mode's
  memories and the progress tensors are never replaced after capture, only updated in place (a
  checkpoint is restored before the capture); the warm-up's effect on the memories is undone.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from tfkd.core import modes
from tfkd.core.config import TrialConfig
from tfkd.core.losses import LossTerms
from tfkd.core.modes import Batch, Mode, Progress, Terms

LossFn = modes.LossFn


class TrainingFailure(RuntimeError):
    """Training failed because of its hyper-parameters: running it again fails the same way."""


class NonFiniteLossError(TrainingFailure):
    """The loss became NaN or infinite; training on it would be meaningless."""


def autocast(
    cfg: TrialConfig, device: torch.device, *, cache: bool = True
) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when `cfg.amp`; nothing elsewhere.

    `cache=False` for captured steps: autocast's cache of casted weights must not outlive the
    region it was filled in (pytorch/pytorch#71631, #84289); a step uses each weight once anyway.
    """
    if device.type == "cuda" and cfg.amp:
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


class Meter:
    """One epoch's running sums, kept on the device and updated without a host sync.

    `names` are the mode's term names (`Mode.term_names`, by default ce and kl). `sums` holds
    the loss and each term times the batch size, then the number of correct predictions; `last`
    the loss and terms of the latest step; `first_bad` the 0-based step of the first non-finite
    loss (-1: none) and `bad_loss` its value. `add` uses only in-place tensor operations, so it
    can be captured into a CUDA graph; `seen` (images) is counted on the host.
    """

    def __init__(self, device: torch.device, names: tuple[str, ...] = ("ce", "kl")) -> None:
        self.names = tuple(names)
        self.sums = torch.zeros(len(self.names) + 2, device=device)
        self.last = torch.zeros(len(self.names) + 1, device=device)
        self.steps = torch.zeros((), dtype=torch.int64, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_loss = torch.zeros((), device=device)
        self.seen = 0

    def tensors(self) -> list[Tensor]:
        return [self.sums, self.last, self.steps, self.first_bad, self.bad_loss]

    def reset(self) -> None:
        """Start a new epoch (in place: a captured graph keeps pointing at these tensors)."""
        for t in (self.sums, self.last, self.steps, self.bad_loss):
            t.zero_()
        self.first_bad.fill_(-1)
        self.seen = 0

    def add(self, terms: Terms | LossTerms, logits: Tensor, labels: Tensor) -> None:
        n = labels.shape[0]
        if isinstance(terms, LossTerms):
            terms = Terms.of(terms)
        total = terms.total.detach()
        parts = [terms.parts[name].detach().to(total.dtype) for name in self.names]
        correct = (logits.detach().argmax(dim=1) == labels).sum()
        self.sums += torch.stack([total * n, *(p * n for p in parts), correct.float()])
        self.last.copy_(torch.stack([total, *parts]))
        bad = ~torch.isfinite(total) & (self.first_bad < 0)
        self.first_bad.copy_(torch.where(bad, self.steps, self.first_bad))
        self.bad_loss.copy_(torch.where(bad, total.to(self.bad_loss.dtype), self.bad_loss))
        self.steps += 1

    def check(self, epoch: int) -> None:
        """Raise NonFiniteLossError if a loss so far was NaN or infinite (one host sync)."""
        first_bad = int(self.first_bad)
        if first_bad >= 0:
            raise NonFiniteLossError(
                f"non-finite loss ({self.bad_loss.item()}) at epoch {epoch}, step {first_bad + 1}; "
                "lower the learning rate, temperature or multiplier"
            )

    def summary(self) -> dict[str, float]:
        loss, *parts, correct = (self.sums / max(self.seen, 1)).tolist()
        return {
            "train_loss": loss,
            **{f"train_{name}": value for name, value in zip(self.names, parts, strict=True)},
            "train_accuracy": 100.0 * correct,
            "train_images": self.seen,
        }


@dataclass(frozen=True)
class StepParts:
    """What every step kind needs; `model` is the module trained (possibly torch.compile'd).

    `loss` is the trial's `Mode` instance or a bare loss function (then wrapped as a mode);
    `mode` is the Mode either way. `progress` defaults to one schedule of `cfg.epochs` epochs.
    """

    model: nn.Module
    teacher: nn.Module | None
    optimizer: torch.optim.Optimizer
    loss: Mode | LossFn
    cfg: TrialConfig
    device: torch.device
    meter: Meter
    progress: Progress | None = None  # None: filled in by __post_init__
    mode: Mode = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", modes.as_mode(self.loss, self.cfg, self.device))
        if self.progress is None:
            object.__setattr__(self, "progress", Progress(self.device, self.cfg.epochs, 1))


class Step(Protocol):
    drop_last: ClassVar[bool]  # whether the training loader must drop its last partial batch
    meter: Meter
    parts: StepParts

    def __call__(self, images: Tensor, labels: Tensor, indices: Tensor | None = None) -> None: ...


def _train_on(
    p: StepParts, images: Tensor, labels: Tensor, indices: Tensor | None, *, cache: bool = True
) -> None:
    """Forward, loss, backward, optimiser step, meter update; the teacher sees the same batch."""
    with autocast(p.cfg, p.device, cache=cache):
        logits = p.model(images)
        with torch.no_grad():
            teacher_logits = p.teacher(images) if p.teacher is not None else None
    assert p.progress is not None  # StepParts fills it in
    terms = p.mode.terms(Batch(logits, labels, teacher_logits, indices), p.progress)
    terms.total.backward()
    p.optimizer.step()
    p.meter.add(terms, logits, labels)


def _check_indices(p: StepParts, indices: Tensor | None) -> None:
    if indices is None and p.mode.needs_indices():
        raise ValueError(
            f"mode {p.mode.name!r} keeps per-sample memory: its steps need the samples' indices "
            "(a training loader built with indices=True)"
        )


class EagerStep:
    """The step as written: launches every kernel from Python, any batch size."""

    drop_last: ClassVar[bool] = False

    def __init__(self, parts: StepParts) -> None:
        self.parts, self.meter = parts, parts.meter

    def __call__(self, images: Tensor, labels: Tensor, indices: Tensor | None = None) -> None:
        _check_indices(self.parts, indices)
        self.parts.optimizer.zero_grad(set_to_none=True)
        _train_on(self.parts, images, labels, indices)


class CompiledStep(EagerStep):
    """The eager step over `torch.compile(model, mode="reduce-overhead")` (CUDA graphs inside).

    Compiles on the first batches (seconds to minutes, see the module docstring); the last
    partial batch is dropped so that no second graph is compiled for its shape.
    """

    drop_last: ClassVar[bool] = True

    def __init__(self, parts: StepParts) -> None:
        compiled = compile_module(parts.model, mode="reduce-overhead")
        super().__init__(dataclasses.replace(parts, model=compiled))

    def __call__(self, images: Tensor, labels: Tensor, indices: Tensor | None = None) -> None:
        torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs may be reused
        super().__call__(images, labels, indices)


def compile_module(module: nn.Module, **options: Any) -> nn.Module:
    """`torch.compile(module, **options)`: an OptimizedModule, which is an nn.Module (torch
    annotates its result as a plain callable)."""
    compiled = torch.compile(module, **options)
    assert isinstance(compiled, nn.Module)
    return compiled


class Replayable(Protocol):
    def replay(self) -> None: ...


class CudaGraphs:
    """The CUDA side of `GraphedStep`: streams, RNG state and capture (torch.cuda.graph)."""

    def check(self, device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")

    @contextlib.contextmanager
    def side_stream(self, device: torch.device) -> Iterator[None]:
        """Run the block on a fresh stream ordered after, and before, the current one."""
        current = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            yield
        current.wait_stream(side)

    def rng_state(self, device: torch.device) -> Tensor:
        return torch.cuda.get_rng_state(device)

    def set_rng_state(self, state: Tensor, device: torch.device) -> None:
        torch.cuda.set_rng_state(state, device)

    def capture(self, fn: Callable[[], None], device: torch.device) -> Replayable:
        """Capture `fn`'s kernels. "thread_local": other threads, such as the classic loader's
        pin-memory thread, may keep allocating pinned memory while this one captures."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            fn()
        return graph


class GraphedStep:
    """The whole step captured into one CUDA graph on the first batch, then replayed.

    Capture: the first batch is copied into static input tensors; `WARMUP_STEPS` eager steps run
    on a side stream (cuDNN/cuBLAS initialisation, the momentum buffers, the allocator's pools,
    as the PyTorch CUDA-graphs notes prescribe); their effects on the weights, optimiser state,
    BatchNorm statistics, meter and CUDA RNG are then undone in place, and one step is captured.
    So the trajectory is the eager one: the first replay trains on the first batch.
    Every call: copy the batch and the scheduled learning rates into their static tensors,
    replay. A batch of another shape raises ValueError.

    `graphs` is the CUDA machinery; tests on a CPU pass a stand-in whose `capture` keeps the
    function and whose `replay` calls it, which runs everything here but the graph itself.
    """

    drop_last: ClassVar[bool] = True
    WARMUP_STEPS: ClassVar[int] = 3

    def __init__(self, parts: StepParts, graphs: CudaGraphs | None = None) -> None:
        self.graphs = graphs or CudaGraphs()
        self.graphs.check(parts.device)
        self.parts, self.meter = parts, parts.meter
        self.graph: Replayable | None = None
        self.lrs = TensorLR(parts.optimizer, parts.device)
        self.images: Tensor | None = None
        self.labels: Tensor | None = None
        self.indices: Tensor | None = None

    def __call__(self, images: Tensor, labels: Tensor, indices: Tensor | None = None) -> None:
        _check_indices(self.parts, indices)
        if self.graph is None:
            self._capture(images, labels, indices)
        assert self.images is not None and self.labels is not None and self.graph is not None
        if images.shape != self.images.shape or labels.shape != self.labels.shape:
            raise ValueError(
                f"a captured step trains on batches of {tuple(self.images.shape)}, got "
                f"{tuple(images.shape)}; the training loader must drop its last partial batch"
            )
        self.images.copy_(images)
        self.labels.copy_(labels)
        if self.indices is not None and indices is not None:
            self.indices.copy_(indices)
        self.lrs.load()
        self.graph.replay()

    def _body(self) -> None:
        """One step as captured: the optimiser reads the learning rates from `self.lrs`.

        The gradients are None when the backward is captured, so it allocates them from the
        graph's pool and each replay overwrites them (no zero_grad between replays); after
        the capture `.grad` points at those tensors.
        """
        assert self.images is not None and self.labels is not None  # set by _capture
        self.parts.optimizer.zero_grad(set_to_none=True)
        with self.lrs.installed():
            _train_on(self.parts, self.images, self.labels, self.indices, cache=False)

    def _capture(self, images: Tensor, labels: Tensor, indices: Tensor | None = None) -> None:
        p, graphs = self.parts, self.graphs
        self.images, self.labels = images.clone(), labels.clone()
        self.indices = indices.clone() if indices is not None else None
        saved = _snapshot(p)
        rng = graphs.rng_state(p.device)
        self.lrs.load()
        with graphs.side_stream(p.device):
            for _ in range(self.WARMUP_STEPS):
                self._body()
        _restore(p, saved)
        graphs.set_rng_state(rng, p.device)
        p.optimizer.zero_grad(set_to_none=True)  # nothing of the warm-up is freed while capturing
        self.graph = graphs.capture(self._body, p.device)


class TensorLR:
    """The learning rate of each parameter group as a float32 device tensor.

    The schedule stays the torch scheduler's (it updates `param_groups[i]["lr"]`, a float, as
    in the eager loop); `load` copies those floats into the tensors (a fill kernel with the value
    as its argument: no sync) and `installed` lets the optimiser see the tensors while a step is
    captured, so the fused SGD kernel reads the rate from device memory at every replay.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
        self.optimizer = optimizer
        self.tensors = [
            torch.zeros((), dtype=torch.float32, device=device) for _ in optimizer.param_groups
        ]

    def load(self) -> None:
        for lr, group in zip(self.tensors, self.optimizer.param_groups, strict=True):
            lr.fill_(group["lr"])

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        groups = self.optimizer.param_groups
        floats = [group["lr"] for group in groups]
        for group, lr in zip(groups, self.tensors, strict=True):
            group["lr"] = lr
        try:
            yield
        finally:
            for group, value in zip(groups, floats, strict=True):
                group["lr"] = value


@dataclass
class _Saved:
    model: dict[str, Tensor]
    momentum: list[Tensor | None]
    meter: list[Tensor]
    mode: dict[str, Tensor]


def _params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [q for group in optimizer.param_groups for q in group["params"]]


def _snapshot(p: StepParts) -> _Saved:
    """Copies of everything an eager warm-up step changes."""

    def buffer(q: Tensor) -> Tensor | None:
        b = p.optimizer.state.get(q, {}).get("momentum_buffer")
        return None if b is None else b.detach().clone()

    return _Saved(
        model={k: v.detach().clone() for k, v in p.model.state_dict().items()},
        momentum=[buffer(q) for q in _params(p.optimizer)],
        meter=[t.clone() for t in p.meter.tensors()],
        mode={k: v.detach().clone() for k, v in p.mode.state_dict().items()},
    )


@torch.no_grad()
def _restore(p: StepParts, saved: _Saved) -> None:
    """Put the snapshot back in place (same tensors, so a graph captured next sees them).

    A momentum buffer that the warm-up created is zeroed: SGD's first step sets buf = grad and
    every later one buf = momentum * buf + grad, which from a zero buffer is the same.
    """
    for key, value in p.model.state_dict().items():
        value.copy_(saved.model[key])
    for q, old in zip(_params(p.optimizer), saved.momentum, strict=True):
        buf = p.optimizer.state.get(q, {}).get("momentum_buffer")
        if buf is not None and old is not None:
            buf.copy_(old)
        elif buf is not None:
            buf.zero_()
    for t, old in zip(p.meter.tensors(), saved.meter, strict=True):
        t.copy_(old)
    for key, value in p.mode.state_dict().items():
        value.copy_(saved.mode[key])


STEPS: dict[str, type[EagerStep] | type[GraphedStep]] = {  # config.CUDA_GRAPHS
    "eager": EagerStep,
    "capture": GraphedStep,
    "compile": CompiledStep,
}


def kind_for(cfg: TrialConfig, device: torch.device, train_size: int) -> str:
    """The step kind a trial uses: `cfg.cuda_graphs` resolved for the device and the data.

    CPU (and `off`, and any optimiser but SGD) -> eager. `auto` -> capture on CUDA, eager when
    `compile` is on (the student is then torch.compile'd in its default mode) or when the
    training split is smaller than one batch (a graph needs one full batch).
    """
    if device.type != "cuda" or cfg.cuda_graphs == "off" or cfg.optimizer != "sgd":
        return "eager"  # the captured step restores SGD's momentum buffers only
    if cfg.cuda_graphs == "auto":
        return "eager" if cfg.compile or train_size < cfg.batch_size else "capture"
    if cfg.compile:
        raise ValueError(
            f"cuda_graphs={cfg.cuda_graphs!r} and compile=True exclude each other: for "
            "torch.compile's CUDA graphs set cuda_graphs='compile' and compile=False"
        )
    if train_size < cfg.batch_size:
        raise ValueError(
            f"cuda_graphs={cfg.cuda_graphs!r} needs at least one full batch of "
            f"{cfg.batch_size} training images, the split has {train_size}"
        )
    return cfg.cuda_graphs


def build(kind: str, parts: StepParts) -> Any:
    """A step of `kind` (see STEPS) over `parts`."""
    try:
        cls = STEPS[kind]
    except KeyError:
        raise ValueError(f"unknown step kind {kind!r}; known: {', '.join(STEPS)}") from None
    return cls(parts)
