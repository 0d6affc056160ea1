"""The paper's training recipes: SGD (Adam for the 5-layer cnn) with linear warm-up and a
multi-step decay.

CIFAR / Tiny-ImageNet (the TrialConfig defaults): lr = base_lr x batch_size / 128, momentum
0.9, weight decay 5e-4; one epoch of linear warm-up, then the rate is multiplied by gamma (0.2,
i.e. divided by 5) at 30%, 60% and 80% of the epochs (60/120/160 of 200). A short schedule
keeps the full rate for at least one epoch after the warm-up: no decay fires before the end of
epoch warmup_epochs + 1 (with round(f x epochs) alone, schedules of 4 epochs or fewer decayed as
the warm-up ended and never trained at the full rate).

The 5-layer `cnn` (`MODEL_RECIPES`): Adam without weight decay, lr 0.1 x batch_size / 128 for
the modes without a teacher and 1e-3 x batch_size / 128 for distillation, as the original's
main.py builds it (Adam with torch's defaults but the learning rate, learning_rate x batch_size
/ 128, for model_version cnn and cnn_distill; learning_rate is 1e-1 in
experiments/base_experiments/base_cnn/params.json and 1e-3 in
experiments/kd_experiments/cnn_distill/params.json); warm-up and decay as for every model
(train_kd.py applies them to whichever optimiser main.py built).

Image folders (`imagenet`, `folder`; `dataset_defaults`): the original's ImageNet script, which
is PyTorch's ImageNet example: 90 epochs, batch 512, lr 0.1 x batch / 256, weight decay 1e-4,
no warm-up, the rate divided by 10 after epochs 30, 60 and 80; RandomResizedCrop 224 + flip for
training, Resize 256 + CenterCrop 224 for evaluation (tfkd.core.data.images), top-1 and top-5.

The scheduler steps once per iteration so the warm-up is smooth.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import LinearLR, LRScheduler, MultiStepLR, SequentialLR

from tfkd.core.config import TrialConfig, parse_milestones

IMAGENET_RECIPE = {
    "epochs": 90,
    "batch_size": 512,
    "lr": 0.1,
    "lr_batch": 256,
    "weight_decay": 1e-4,
    "warmup_epochs": 0,
    "lr_milestones": "0.33334,0.66667,0.88889",  # epochs 30, 60, 80 of 90
    "lr_gamma": 0.1,
    "image_size": 224,
    "eval_batch_size": 256,
}
#: dataset -> its recipe's config values (datasets not listed take the TrialConfig defaults).
DATASET_RECIPES: dict[str, dict[str, object]] = {
    "imagenet": IMAGENET_RECIPE,
    "folder": IMAGENET_RECIPE,
}

#: model -> (its recipe without a teacher, its recipe for distillation), over the dataset's.
MODEL_RECIPES: dict[str, tuple[dict[str, object], dict[str, object]]] = {
    # the original's main.py and experiments/{base_experiments/base_cnn,
    # kd_experiments/cnn_distill}/params.json (see the module docstring)
    "cnn": (
        {"optimizer": "adam", "lr": 0.1, "weight_decay": 0.0},
        {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0},
    ),
}


def dataset_defaults(dataset: str) -> dict[str, object]:
    """The config values of `dataset`'s recipe, below the search space and the user's --set."""
    return dict(DATASET_RECIPES.get(dataset, {}))


def recipe_defaults(dataset: str, model: str, distills: bool) -> dict[str, object]:
    """The dataset's recipe with the model's on top (`distills`: the mode has a teacher)."""
    by_model = MODEL_RECIPES.get(model)
    return {**dataset_defaults(dataset), **(by_model[distills] if by_model else {})}


def _sgd(params: list[nn.Parameter], cfg: TrialConfig, fused: bool | None) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params, lr=cfg.scaled_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused
    )


def _adam(
    params: list[nn.Parameter], cfg: TrialConfig, fused: bool | None
) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=cfg.scaled_lr, weight_decay=cfg.weight_decay, fused=fused)


#: config key `optimizer` -> its builder (the captured CUDA step knows SGD only: tfkd.core.steps)
OPTIMIZERS = {"sgd": _sgd, "adam": _adam}


def build_optimizer(model: nn.Module, cfg: TrialConfig) -> torch.optim.Optimizer:
    """The config's optimiser (SGD, or Adam); fused (one kernel for all parameters) on CUDA.

    The fused kernel is what a captured step needs (it reads a tensor learning rate) and is
    faster in eager mode too (measured on an H100: 16.4k -> 18.4k img/s for resnet18). On the
    CPU the optimiser is torch's default implementation, as it always was.
    """
    params = list(model.parameters())
    return OPTIMIZERS[cfg.optimizer](params, cfg, True if params and params[0].is_cuda else None)


def milestone_epochs(cfg: TrialConfig) -> list[int]:
    """Epochs (counted from the start of training) after which the rate decays: never before
    one epoch at the full rate has followed the warm-up."""
    earliest = cfg.warmup_epochs + 1
    return [max(earliest, round(f * cfg.epochs)) for f in parse_milestones(cfg.lr_milestones)]


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrialConfig, steps_per_epoch: int
) -> LRScheduler:
    """Warm-up (LinearLR) followed by MultiStepLR, chained with SequentialLR; per-iteration."""
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    decay = MultiStepLR(
        optimizer,
        milestones=[(e - cfg.warmup_epochs) * steps_per_epoch for e in milestone_epochs(cfg)],
        gamma=cfg.lr_gamma,
    )
    if warmup_steps == 0:
        return decay
    warmup = LinearLR(
        optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0, total_iters=warmup_steps
    )
    return SequentialLR(optimizer, schedulers=[warmup, decay], milestones=[warmup_steps])
