"""Optimisers, learning-rate schedules and gradient treatment, from their config."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    ExponentialLR,
    LambdaLR,
    LRScheduler,
    MultiStepLR,
    SequentialLR,
)

from nca_cli.training.schema import GradConfig, OptimizerConfig, ScheduleConfig


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimizerConfig) -> Optimizer:
    kind = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    return kind(params, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: Optimizer, cfg: ScheduleConfig, iterations: int) -> LRScheduler:
    """The schedule ``cfg`` names, after a linear warm-up of ``cfg.warmup`` iterations."""
    if not cfg.warmup:
        return _schedule(optimizer, cfg, iterations)
    warm = LambdaLR(optimizer, lambda i: i / cfg.warmup)
    rest = _schedule(optimizer, cfg, iterations - cfg.warmup)
    return SequentialLR(optimizer, [warm, rest], milestones=[cfg.warmup])


def _schedule(optimizer: Optimizer, cfg: ScheduleConfig, iterations: int) -> LRScheduler:
    if cfg.name == "piecewise":
        return MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
    if cfg.name == "cosine":
        return CosineAnnealingLR(optimizer, T_max=max(iterations, 1), eta_min=cfg.min_lr)
    if cfg.name == "exponential":
        return ExponentialLR(optimizer, gamma=cfg.gamma)
    return ConstantLR(optimizer, factor=1.0, total_iters=0)


def treat_gradients(params: list[nn.Parameter], cfg: GradConfig) -> Tensor:
    """Normalise or clip gradients in place; returns the global norm before treatment, a
    0-d tensor on the gradients' device (read by the caller when it logs: no host sync).

    ``normalize`` divides each parameter's gradient by its own norm (+1e-8), as in the
    Distill notebook; ``clip_norm`` clips the global norm, as CAX does. Non-finite
    gradients stay non-finite, for the caller's divergence check to see.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    if cfg.normalize:
        for g in grads:
            g.div_(g.norm() + 1e-8)
    if cfg.clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
    return norm
