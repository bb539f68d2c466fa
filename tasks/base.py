"""The contract between a task and the engine and trainer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor

from nca_cli.config import ConfigError, parse
from nca_cli.engine.layout import ChannelLayout
from nca_cli.engine.pool import Batch, PoolConfig, validate_pool
from nca_cli.shortcuts import label

Rollout = Callable[[Tensor, int], Tensor]


class _Channels(Protocol):
    channels: int


class _BatchSize(Protocol):
    batch_size: int


class RunSections(Protocol):
    """What a task reads of a run's config (the trainer's ``RunConfig`` is one): its own
    sections, the state's size, the batch size its pool must hold, and the run's seed.
    Declared here so that tasks depend on no room above them."""

    seed: int
    task: dict[str, Any]
    dataset: dict[str, Any]
    loss: dict[str, Any]

    @property
    def model(self) -> _Channels: ...

    @property
    def trainer(self) -> _BatchSize: ...


@dataclass
class TaskConfig:
    """Settings every task has; a task extends this dataclass with its own."""

    name: str = ""
    pool: PoolConfig = field(default_factory=PoolConfig)


@dataclass
class LossConfig:
    name: str = "mse"


class DeviceCopies:
    """A task's constant tensor (a target image) copied once to each device that reads it,
    so a loss read every step makes no copy from the host."""

    def __init__(self, tensor: Tensor) -> None:
        self._copies = {tensor.device: tensor}

    def on(self, device: torch.device) -> Tensor:
        if device not in self._copies:
            self._copies[device] = next(iter(self._copies.values())).to(device)
        return self._copies[device]


class CoTrained(ABC):
    """Modules a task trains beside the NCA with their own optimiser (a GAN's
    discriminator), built by :meth:`Task.build_cotrained`.

    The trainer calls :meth:`update` once per iteration, after the NCA's optimiser step,
    with the iteration's final states (detached; under gradient accumulation, those of the
    last micro-batch) and their batch, and logs the scalars it returns beside the loss. It
    saves :meth:`state_dict` (modules, optimisers, random streams) in every checkpoint and
    loads it on resume, so a resumed run continues exactly.
    """

    @abstractmethod
    def update(self, state: Tensor, batch: Batch) -> dict[str, Tensor]:
        """Train the modules on one batch; returns 0-d tensors to log (e.g. ``d_loss``),
        left on the device: the trainer reads them with its own figures."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: tensors and plain values (``weights_only``)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


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
    # The metric a search optimises by default, and its direction.
    objective: ClassVar[tuple[str, str]] = ("loss", "minimize")
    # Case ids per split for data tasks (saved with every run as splits.json).
    splits: dict[str, list[str]] | None = None
    # The sample sets `nca eval --sets` grows and measures (those the task has).
    evaluation_sets: ClassVar[tuple[str, ...]] = ("train", "val", "test")

    def __init__(self, run: RunSections) -> None:
        self.run = run
        self.config, self.dataset_config, self.loss_config = self.parse_sections(run)
        channels = run.model.channels
        try:
            self.layout = self.make_layout(channels)
        except ValueError as err:
            raise ConfigError(
                f"invalid value for {label('model.channels')}: {channels}; {err}"
            ) from None

    @classmethod
    def parse_sections(cls, run: RunSections) -> tuple[TaskConfig, Any, LossConfig]:
        """The task's, dataset's and loss's sections parsed and checked, without loading
        any data (a sweep checks every point's config this way before its first trial)."""
        config = parse(run.task, cls.config_schema, "task")
        dataset = parse(run.dataset, cls.dataset_schema, "dataset")
        loss = parse(run.loss, cls.loss_schema, "loss")
        if loss.name not in cls.losses:
            raise ConfigError(
                f"invalid value for 'loss.name': {loss.name!r}; task {config.name!r} "
                "supports " + ", ".join(cls.losses)
            )
        validate_pool(config.pool, run.trainer.batch_size, "task.pool")
        return config, dataset, loss

    @abstractmethod
    def make_layout(self, channels: int) -> ChannelLayout:
        """The channel layout for a state of ``channels`` channels."""

    @property
    def alive_channel(self) -> int | None:
        """The channel that decides which cells live (by ``model.alive_threshold``, after a
        3x3 max-pool unless ``model.alive_pool`` is false); None: all live."""
        return self.layout.alpha_channel

    @abstractmethod
    def fresh(self, n: int, generator: torch.Generator) -> Batch:
        """``n`` new training samples, starting from seed states."""

    @abstractmethod
    def loss(self, state: Tensor, batch: Batch) -> Tensor:
        """Per-sample loss ``(B,)`` of final states against the batch's targets."""

    def rank_loss(self, state: Tensor, batch: Batch) -> Tensor:
        """Per-sample ``(B,)`` badness that orders pooled samples (the worst are replaced,
        the best damaged); the loss by default. A task whose loss depends on co-trained
        modules (an adversarial term) ranks by a fixed measure instead."""
        return self.loss(state, batch)

    def build_cotrained(self, device: torch.device) -> CoTrained | None:
        """The modules this task trains beside the NCA (see :class:`CoTrained`) on
        ``device``, or None. The trainer calls it once, right after building the NCA (so
        their initial weights follow the run's seed); the task keeps them to use in
        :meth:`loss`."""
        return None

    def metrics(self, state: Tensor, batch: Batch) -> dict[str, float]:
        """Scalar quality figures of one batch of final states."""
        return self.score(self.predict(state, batch))

    def predict(self, state: Tensor, batch: Batch) -> dict[str, Tensor]:
        """Per-sample outputs of final states, concatenated over an evaluation and turned
        into metrics by :meth:`score` (default: the per-sample loss)."""
        return {"loss": self.loss(state, batch)}

    def score(self, outputs: dict[str, Tensor]) -> dict[str, float]:
        """Metrics of a whole evaluation (means by default; AUROC needs all samples)."""
        return {k: float(v.float().mean()) for k, v in outputs.items()}

    def evaluation_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """The samples of ``split`` in batches, without augmentation.

        Tasks without data grow fresh samples from a fixed seed, so that every
        evaluation sees the same ones.
        """
        yield self.fresh(batch_size, torch.Generator().manual_seed(0))

    def case_labels(self, ids: list[str]) -> list[int] | None:
        """Class labels of cases, so k-fold can stratify (None: not a classification)."""
        return None

    def has_split(self, split: str) -> bool:
        """Whether the task has samples for ``split`` (train, val or test)."""
        return split in ("train", "val")

    def evaluate(self, rollout: Rollout, split: str, batch_size: int, steps: int) -> dict:
        """Metrics of ``split`` after ``steps`` steps of ``rollout(state, steps)``."""
        outputs: dict[str, list[Tensor]] = {}
        for batch in self.evaluation_batches(split, batch_size):
            state = rollout(batch["state"], steps)
            batch = {k: v.to(state.device) for k, v in batch.items()}
            for k, v in self.predict(state, batch).items():
                outputs.setdefault(k, []).append(v.detach().cpu())
        return self.score({k: torch.cat(v) for k, v in outputs.items()})

    @abstractmethod
    def render(self, state: Tensor) -> np.ndarray:
        """States ``(B, C, H, W)`` as uint8 RGB images ``(B, H, W, 3)``."""

    def mutate(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Perturb samples in a task-specific way (change the condition or the input)."""
        raise ConfigError(f"task {self.config.name!r} has no mutation; set task.pool.mutate=0")

    @property
    def mutable(self) -> bool:
        """Whether the task implements :meth:`mutate` (conditional and classification tasks)."""
        return type(self).mutate is not Task.mutate

    def sample_metrics(self, state: Tensor, batch: Batch) -> dict[str, Tensor]:
        """Per-sample ``(B,)`` metrics of states at any step, for the regeneration protocol
        (mean ± std over samples, per-sample Recovery%). The default scores each sample's
        :meth:`predict` outputs alone; a task whose :meth:`score` needs many samples (AUROC)
        returns per-sample figures here instead."""
        outputs = self.predict(state, batch)
        each = [{k: v[i : i + 1] for k, v in outputs.items()} for i in range(len(state))]
        rows = [self.score(sample) for sample in each]
        return {k: torch.tensor([row[k] for row in rows]) for k in rows[0]}

    def eval_images(self, state: Tensor, batch: Batch) -> tuple[Tensor, Tensor] | None:
        """Predicted and target RGB ``(B, 3, H, W)`` in [0, 1] for ``nca eval``'s image
        metrics (LPIPS, MSE, PSNR; LPIPS is then the protocol's primary metric). None: the
        output is not an image, and the task's :attr:`objective` is the primary metric."""
        return None
