"""The contract between a task and the engine and trainer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from nca_cli.config import ConfigError, RunConfig, parse
from nca_cli.engine.layout import ChannelLayout
from nca_cli.engine.pool import Batch, PoolConfig, validate_pool


@dataclass
class TaskConfig:
    """Settings every task has; a task extends this dataclass with its own."""

    name: str = ""
    pool: PoolConfig = field(default_factory=PoolConfig)


@dataclass
class LossConfig:
    name: str = "mse"


class Task(ABC):
    """A task declares its layout and data, builds samples, and scores states.

    A sample batch is a dict of tensors sharing the batch dimension; ``state`` is the NCA
    state to start from and the other entries are whatever the task needs to score it
    (targets, labels). The pool stores every entry, so multi-target tasks keep their
    targets beside their states.
    """

    config_schema: ClassVar[type[TaskConfig]] = TaskConfig
    dataset_schema: ClassVar[type]
    loss_schema: ClassVar[type[LossConfig]] = LossConfig
    losses: ClassVar[tuple[str, ...]] = ("mse",)

    def __init__(self, run: RunConfig) -> None:
        self.run = run
        self.config = parse(run.task, self.config_schema, "task")
        self.dataset_config: Any = parse(run.dataset, self.dataset_schema, "dataset")
        self.loss_config = parse(run.loss, self.loss_schema, "loss")
        if self.loss_config.name not in self.losses:
            raise ConfigError(
                f"invalid value for 'loss.name': {self.loss_config.name!r}; task "
                f"{self.config.name!r} supports " + ", ".join(self.losses)
            )
        validate_pool(self.config.pool, run.trainer.batch_size, "task.pool")
        try:
            self.layout = self.make_layout(run.channels)
        except ValueError as err:
            raise ConfigError(f"invalid value for 'channels': {run.channels}; {err}") from None

    @abstractmethod
    def make_layout(self, channels: int) -> ChannelLayout:
        """The channel layout for a state of ``channels`` channels."""

    @property
    def alive_channel(self) -> int | None:
        """The channel whose 3x3 max-pool decides which cells live (None: all live)."""
        return self.layout.alpha_channel

    @abstractmethod
    def fresh(self, n: int, generator: torch.Generator) -> Batch:
        """``n`` new training samples, starting from seed states."""

    @abstractmethod
    def loss(self, state: Tensor, batch: Batch) -> Tensor:
        """Per-sample loss ``(B,)`` of final states against the batch's targets."""

    def metrics(self, state: Tensor, batch: Batch) -> dict[str, float]:
        """Scalar quality figures of final states (lower or higher is task-specific)."""
        return {"loss": float(self.loss(state, batch).mean())}

    @abstractmethod
    def render(self, state: Tensor) -> np.ndarray:
        """States ``(B, C, H, W)`` as uint8 RGB images ``(B, H, W, 3)``."""

    def mutate(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Perturb samples in a task-specific way (change the condition or the input)."""
        raise ConfigError(f"task {self.config.name!r} has no mutation; set task.pool.mutate=0")
