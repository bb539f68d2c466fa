"""The task's own evaluation of a checkpoint (``Task.evaluate``), seeded: what a
reproduction's task rows and the zoo's golden checks read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from nca_cli.evaluation.runs import load_run
from nca_cli.tasks._cases import CaseTask


def task_figures(
    checkpoint: Path,
    overrides: Sequence[str],
    split: str,
    batch_size: int,
    samples: int | None = None,
    steps: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """The metrics of ``split`` (at most ``samples`` cases of a data task) after ``steps``
    steps (default: the run's longest training rollout), the fire masks drawn from
    ``seed``."""
    loaded = load_run(checkpoint, list(overrides))
    task, nca, device = loaded.task, loaded.nca, loaded.run.device
    if samples and isinstance(task, CaseTask):
        task.eval_limit = samples
    g = torch.Generator().manual_seed(seed)

    def rollout(state: torch.Tensor, n: int) -> torch.Tensor:
        return nca.rollout(state.to(device), n, g)[0]

    with torch.no_grad():
        figures = task.evaluate(rollout, split, batch_size, steps or loaded.run.trainer.steps.max)
    return dict(figures)
