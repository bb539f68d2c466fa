"""Regeneration evaluation: the review paper's protocol (grow, perturb, regrow), its
metrics (LPIPS, MSE, PSNR, the task's own, Recovery%) and its outputs, shared by
``nca eval`` and the regeneration check of training runs."""

from __future__ import annotations


class EvalError(RuntimeError):
    """A run cannot be evaluated: no run folder, no checkpoint, weights that do not fit."""
