"""Data-parallel training inside one trial: what a trainer needs to know about its workers.

A trial on N workers (tfkd.sweep.distributed starts them, with torch.distributed initialised:
gloo on CPUs, NCCL on GPUs) trains one model as PyTorch's DistributedDataParallel: every worker
builds the same model from the same seed, reads its contiguous slice of every global batch
(`shard`), and DDP averages the gradients. What makes N workers train the same weights as one
worker on the same global batch (up to float summation order):

- the slices are equal (the last partial global batch of an epoch is dropped), so the mean of
  the workers' mean losses is the global batch's mean loss;
- the augmentation of a sample depends on its place in the global batch, not on the worker
  (tfkd.core.data: DeviceLoader draws it for the whole batch, the jpeg loader per position);
- BatchNorm normalises with the global batch's statistics (`GlobalBatchNorm` on CPUs, torch's
  SyncBatchNorm on GPUs), as the single worker does.

`Parallel()` is the single-process case: every method is then the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch over all workers.

    One autograd-aware all-reduce of (sum, sum of squares, count) per layer, on its own process
    group so it never interleaves with DDP's gradient buckets. Evaluation uses the running
    statistics, as BatchNorm does. Torch's SyncBatchNorm does the same on GPUs only.
    """

    group: object = None

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        dims = [d for d in range(x.dim()) if d != 1]
        count = x.new_full((1,), x.numel() / c)
        stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]), group=self.group)
        total = stats[-1]
        mean = stats[:c] / total
        var = (stats[c : 2 * c] / total - mean * mean).clamp(min=0)
        self._update_running(mean.detach(), var.detach(), total.detach())
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, total: torch.Tensor) -> None:
        if not self.track_running_stats:
            return
        # BatchNorm registers these buffers (else None) exactly when it tracks running statistics
        assert self.num_batches_tracked is not None
        assert self.running_mean is not None and self.running_var is not None
        self.num_batches_tracked += 1
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        unbiased = var * total / (total - 1).clamp(min=1)
        self.running_mean.mul_(1 - m).add_(mean, alpha=m)
        self.running_var.mul_(1 - m).add_(unbiased, alpha=m)


def _to_global(module: nn.Module, group: object) -> nn.Module:
    """A copy-free swap of every BatchNorm for a GlobalBatchNorm with the same tensors."""
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        new.group = group
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(new, name, getattr(module, name))
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _to_global(child, group))
    return module


@dataclass(frozen=True)
class Parallel:
    """This process's place in a data-parallel trial: worker `rank` of `world`."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Parallel:
        """From torch.distributed when it is initialised, else the single-process case."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def main(self) -> bool:
        """Rank 0: the one worker that writes checkpoints and reports for the trial."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world

    def global_batch_norm(self, model: nn.Module, device: torch.device) -> nn.Module:
        """`model` with BatchNorm over the global batch (before the optimiser is built)."""
        if self.world == 1:
            return model
        if device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return _to_global(model, dist.new_group(backend="gloo"))

    def data_parallel(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module that trains: DDP over `model` (same parameters) when world > 1."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce `tensor` in place (sum over workers)."""
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor


SINGLE = Parallel()  # the single-process trial
