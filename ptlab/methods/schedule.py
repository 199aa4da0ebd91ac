"""Optimiser and learning-rate schedule of the prompt-tuning recipes.

CoOp's schedule: the first `warmup_epochs` run at a constant small lr, then a
cosine decay over all epochs (the warm-up epochs count towards the cosine, as
in the released trainer), stepped once per epoch.
"""

from __future__ import annotations

import math

import torch

from ptlab.config import TrainConfig


def make_optimizer(params, train: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every parameter of this method is frozen")
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)


def epoch_lr(epoch: int, train: TrainConfig) -> float:
    """Learning rate of 0-based epoch `epoch`."""
    if epoch < train.warmup_epochs:
        return train.warmup_lr
    if train.scheduler == "constant":
        return train.lr
    return 0.5 * train.lr * (1 + math.cos(math.pi * epoch / max(train.epochs, 1)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def iteration_lr(step: int, total_steps: int, warmup_steps: int, train: TrainConfig) -> float:
    """Learning rate of 0-based optimiser step `step` for recipes that schedule per iteration.

    The same shape as `epoch_lr` on a finer clock: constant warm-up steps
    that count towards a cosine reaching 0 after `total_steps`.
    """
    if step < warmup_steps:
        return train.warmup_lr
    if train.scheduler == "constant":
        return train.lr
    return 0.5 * train.lr * (1 + math.cos(math.pi * step / max(total_steps, 1)))
