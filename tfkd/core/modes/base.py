"""The contract of a mode: what it declares, what it receives, what it returns.

A mode is one class (mdistiller's shape, adapted to a captured CUDA step):

* it DECLARES, as class attributes, what the trial must build for it:
  - `needs_teacher` / `teacher_is_student`: a fixed teacher loaded from a checkpoint (the
    trainer builds it frozen: eval mode, no gradients, never in the optimiser) and
    `teacher_fixed` (False: its outputs change during training, so nothing caches them and its
    weights are checkpointed with the trial);
  - `memories`: per-sample state sized by the training split (e.g. the model's own past
    predictions); the training loader then yields each sample's index (`needs_indices`);
  - `sampler`: the name of the batch sampler the training loader draws its order with
    (`tfkd.core.data.SAMPLERS`, e.g. class pairs);
  - `params`: its own config keys (`Param`: type, default, range check, doc); `TrialConfig`
    accepts and validates them for this mode, so a new mode never edits tfkd/core/config.py;
  - `term_names`: the names of the loss terms it returns (each logged as `train_<name>`).
* it RECEIVES each batch (`Batch`: student and teacher logits, labels, sample indices) and the
  training's `Progress` (epoch, step and fraction of the schedule as device tensors, updated in
  place before every step);
* it RETURNS `Terms`: the total the step optimises and its named parts.

Inside `terms` everything must be capturable into a CUDA graph: tensor operations only, no
`.item()`, no Python branch on a device value, memories updated in place (`index_copy_`).
Host-side work (once per epoch, outside the captured step) goes into `start_epoch`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from tfkd.core.losses import LossTerms

if TYPE_CHECKING:
    from tfkd.core.config import TrialConfig


class Terms(NamedTuple):
    """A mode's loss: `total` is optimised; `parts` (name -> scalar tensor) are logged."""

    total: Tensor
    parts: dict[str, Tensor]

    @classmethod
    def weighted(cls, **parts: Tensor) -> Terms:
        """Terms whose total is the sum of the parts, in order (each already weighted)."""
        values = list(parts.values())
        total = values[0]
        for value in values[1:]:
            total = total + value
        return cls(total, dict(parts))

    @classmethod
    def of(cls, terms: LossTerms) -> Terms:
        """The `LossTerms(total, ce, kl)` of `tfkd.core.losses` as named terms."""
        return cls(terms.total, {"ce": terms.ce, "kl": terms.kl})


@dataclass
class Batch:
    """What a mode sees of one batch.

    `indices` are the samples' positions in the training split (None in evaluation and when
    the mode does not need them); `train` is False when a split is evaluated (then a mode must
    neither read nor write its memories).
    """

    logits: Tensor
    labels: Tensor
    teacher_logits: Tensor | None = None
    indices: Tensor | None = None
    train: bool = True


class Progress:
    """The training's progress as float32 device tensors, filled in place before each step.

    `epoch`: the current epoch, 1-based; `step`: the steps trained before this one (all
    epochs); `fraction`: step / (epochs x steps_per_epoch), in [0, 1). A captured step reads
    them from device memory at every replay, so schedules computed from them stay live.
    """

    def __init__(self, device: torch.device, epochs: int, steps_per_epoch: int) -> None:
        self.epochs, self.steps_per_epoch = int(epochs), max(int(steps_per_epoch), 1)
        self.epoch = torch.ones((), dtype=torch.float32, device=device)
        self.step = torch.zeros((), dtype=torch.float32, device=device)
        self.fraction = torch.zeros((), dtype=torch.float32, device=device)

    def set(self, epoch: int, step_in_epoch: int) -> None:
        """Before a step: epoch (1-based) and the 0-based step within it (fills, no sync)."""
        step = (epoch - 1) * self.steps_per_epoch + step_in_epoch
        self.epoch.fill_(float(epoch))
        self.step.fill_(float(step))
        self.fraction.fill_(step / (self.epochs * self.steps_per_epoch))

    def tensors(self) -> list[Tensor]:
        return [self.epoch, self.step, self.fraction]


@dataclass(frozen=True)
class Param:
    """A config key a mode declares: its type, default, range check and what it means.

    `check` returns True for a valid value; its docstring (or `rule`) says the range in the
    error message.
    """

    name: str
    type: type
    default: Any
    doc: str
    check: Callable[[Any], bool] | None = None
    rule: str = ""

    def validate(self, value: Any) -> Any:
        """The value coerced to `type`; a wrong type or range raises one ValueError line."""
        value = _coerce(self, value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"config key '{self.name}' must be finite, got {value!r}")
        if self.check is not None and not self.check(value):
            rule = self.rule or (self.check.__doc__ or "").strip()
            raise ValueError(
                f"config key '{self.name}' = {value!r} is out of range ({self.doc}: {rule})"
            )
        return value


def _coerce(param: Param, value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    kind = param.type
    try:
        if kind is bool and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and not isinstance(value, bool) and float(value).is_integer():
            return int(float(value))
        if kind is float and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    except (TypeError, ValueError):
        pass
    raise ValueError(f"config key '{param.name}' must be a {kind.__name__}, got {value!r}")


@dataclass(frozen=True)
class Memory:
    """Per-sample state: one row of `width` values per training sample, in `dtype`.

    `width` is a number or "classes" (the dataset's K). Its cost is train_size x width x the
    dtype's bytes on the trial's device (ImageNet, K = 1000, fp16: 1.28 M x 1000 x 2 = 2.6 GB).
    Memories are buffers of the mode: saved in checkpoints and restored on resume.
    """

    width: int | str = "classes"
    dtype: torch.dtype = torch.float32
    fill: float = 0.0
    doc: str = ""

    def shape(self, train_size: int, num_classes: int) -> tuple[int, int]:
        return train_size, num_classes if self.width == "classes" else int(self.width)


class Mode(nn.Module):
    """Base of every mode (see the module docstring for the contract).

    An instance is built once per trial, after the teacher: `Mode(cfg, num_classes=K,
    train_size=N, device=d, teacher=t)`. Its buffers (the declared memories, and whatever a
    subclass registers) are its state: checkpointed and restored. The teacher is held but is not
    a submodule: it is never in the optimiser nor, when fixed, in the checkpoint.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = False
    teacher_is_student: ClassVar[bool] = False  # the teacher is a trained copy of the student
    teacher_fixed: ClassVar[bool] = True
    memories: ClassVar[Mapping[str, Memory]] = {}
    sampler: ClassVar[str] = "shuffle"
    params: ClassVar[tuple[Param, ...]] = ()
    term_names: ClassVar[tuple[str, ...]] = ("ce", "kl")
    teacher: nn.Module | None  # held, not a submodule (set in __init__)

    @classmethod
    def needs_indices(cls) -> bool:
        """Whether the training loader must yield sample indices (a mode with memories)."""
        return bool(cls.memories)

    def __init__(
        self,
        cfg: TrialConfig,
        *,
        num_classes: int,
        train_size: int,
        device: torch.device | str = "cpu",
        teacher: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.cfg, self.num_classes, self.train_size = cfg, num_classes, train_size
        object.__setattr__(self, "teacher", teacher)  # held, not a submodule
        for key, memory in self.memories.items():
            shape = memory.shape(train_size, num_classes)
            self.register_buffer(
                key, torch.full(shape, memory.fill, dtype=memory.dtype, device=device)
            )

    def terms(self, batch: Batch, progress: Progress) -> Terms:
        """The loss of one batch and its named parts (capturable: see the module docstring)."""
        raise NotImplementedError

    def start_epoch(self, epoch: int) -> None:
        """Host-side work before an epoch's first step (outside any captured graph)."""

    @classmethod
    def loss(
        cls, logits: Tensor, labels: Tensor, teacher_logits: Tensor | None, cfg: TrialConfig
    ) -> Terms | LossTerms:
        """The loss of one batch without memories or progress (as an evaluation sees it)."""
        mode = cls(cfg, num_classes=logits.shape[1], train_size=0, device=logits.device)
        progress = Progress(logits.device, cfg.epochs, 1)
        return mode.terms(Batch(logits, labels, teacher_logits, None, train=False), progress)


class LossMode(Mode):
    """A mode whose loss is a pure function of (logits, labels, teacher logits, config).

    Subclasses define `loss_of` (usually one call into tfkd.core.losses); the terms are
    `Terms.of(...)` of its `LossTerms(total, ce, kl)`.
    """

    @staticmethod
    def loss_of(
        logits: Tensor, labels: Tensor, teacher_logits: Tensor | None, cfg: TrialConfig
    ) -> LossTerms:
        raise NotImplementedError

    @classmethod
    def loss(
        cls, logits: Tensor, labels: Tensor, teacher_logits: Tensor | None, cfg: TrialConfig
    ) -> LossTerms:
        return cls.loss_of(logits, labels, teacher_logits, cfg)

    def terms(self, batch: Batch, progress: Progress) -> Terms:
        return Terms.of(self.loss_of(batch.logits, batch.labels, batch.teacher_logits, self.cfg))


LossFn = Callable[[Tensor, Tensor, "Tensor | None", "TrialConfig"], "LossTerms | Terms"]


class FunctionMode(Mode):
    """A bare loss function `(logits, labels, teacher_logits, cfg) -> LossTerms` as a mode."""

    def __init__(self, fn: LossFn, cfg: TrialConfig, device: torch.device | str = "cpu") -> None:
        super().__init__(cfg, num_classes=0, train_size=0, device=device)
        self.fn = fn

    def terms(self, batch: Batch, progress: Progress) -> Terms:
        out = self.fn(batch.logits, batch.labels, batch.teacher_logits, self.cfg)
        return out if isinstance(out, Terms) else Terms.of(out)


@dataclass
class _Declared:
    """Which mode declared which config key (filled by `register`)."""

    params: dict[str, tuple[str, Param]] = field(default_factory=dict)


DECLARED = _Declared()
