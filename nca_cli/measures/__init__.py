"""Measuring an NCA on a task: the NCA review's regeneration protocol (grow, perturb,
regrow) and its metrics (LPIPS, MSE, PSNR, the task's own, Recovery%), below the trainer
(its regeneration check) and ``nca eval`` (reports, sample sets) that both use them."""

from __future__ import annotations


class EvalError(RuntimeError):
    """A run cannot be evaluated: no run folder, no checkpoint, weights that do not fit,
    no LPIPS weights."""
