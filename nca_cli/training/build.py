"""A run's task and model from its config: the one builder that training, ``nca eval``
and ``nca reproduce`` share, so that a run is rebuilt as it was trained."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from nca_cli.engine.cascade import CascadeNCA, build_model
from nca_cli.engine.nca import NCA
from nca_cli.tasks import task_of

if TYPE_CHECKING:
    from nca_cli.tasks.base import Task
    from nca_cli.training.schema import RunConfig


def build_run(run: RunConfig) -> tuple[Task, NCA | CascadeNCA]:
    """The task named by ``task.name`` and its model (an NCA, or a cascade of them), on the
    CPU; the model's initial weights follow ``seed``."""
    task = task_of(run)(run)
    torch.manual_seed(run.seed)
    return task, build_model(run.model, run.perception, task.layout, task.alive_channel)
