"""The training config: the trainer's and logger's sections, and the run config that
gathers every room's section (the engine's ``model``; task, dataset, loss and perception
stay plain dictionaries that their owners parse)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from nca_cli.config import choice, parse, require
from nca_cli.engine.schema import DAMAGE_KINDS, ModelConfig, validate_model
from nca_cli.measures.steps import ProtocolSteps, review_steps, validate_protocol_steps


@dataclass
class StepRange:
    """Rollout length drawn uniformly from ``[min, max]``, both ends included."""

    min: int = 64
    max: int = 96


@dataclass
class OptimizerConfig:
    name: str = "adam"
    lr: float = 2e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, stepped once per iteration.

    ``piecewise`` multiplies the rate by ``gamma`` at each of ``milestones`` (the Distill
    recipe: 2e-3 then 2e-4 after 2000); ``cosine`` anneals to ``min_lr`` over the run;
    ``exponential`` multiplies by ``gamma`` every iteration. ``warmup`` > 0 first raises
    the rate linearly, lr * i / warmup at iteration i (from 0, as NCAtorch does); the
    schedule then runs over the remaining iterations (the NCA review's recipes).
    """

    name: str = "constant"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    min_lr: float = 0.0
    warmup: int = 0

    def ignored(self) -> dict[str, str]:
        reads = {
            "piecewise": ("milestones", "gamma"),
            "cosine": ("min_lr",),
            "exponential": ("gamma",),
        }.get(self.name, ())
        why = f"trainer.schedule.name is {self.name!r}, which reads only " + (
            ", ".join(reads) if reads else "the learning rate"
        )
        return {key: why for key in ("milestones", "gamma", "min_lr") if key not in reads}


def validate_schedule(cfg: ScheduleConfig, iterations: int) -> None:
    require(
        0 <= cfg.warmup <= max(iterations, 0),
        "trainer.schedule.warmup",
        cfg.warmup,
        f"0 (none) or a number of iterations up to trainer.iterations ({iterations})",
    )


@dataclass
class GradConfig:
    """Gradient treatment before the optimiser step."""

    normalize: bool = False
    clip_norm: float | None = None
    accumulate: int = 1


@dataclass
class RegenCheckConfig:
    """A cheap run of the ``nca eval`` protocol during training, so every run logs LPIPS
    per stage and Recovery% (``regen/*``): ``samples`` rollouts perturbed by
    ``perturbation`` (a damage kind, or ``mutate``) every ``every`` iterations (0: only at
    the end), a check being skipped while the last one took more than ``max_share`` of the
    training time since it ended (0: never skipped), so that a costly protocol (long
    rollouts, big grids) cannot double a run's time. Off in ``trainer=smoke``: loading
    LPIPS alone takes seconds."""

    enabled: bool = True
    every: int = 0
    max_share: float = 0.05
    samples: int = 2
    perturbation: str = "circle"
    steps: ProtocolSteps = field(default_factory=review_steps)

    def ignored(self) -> dict[str, str]:
        if self.enabled:
            return {}
        why = "trainer.regen_check.enabled is false"
        return dict.fromkeys(("every", "max_share", "samples", "perturbation", "steps"), why)


# Which weights a run trains: all; update (a learned perception stays as it was); last (the
# update rule's last layer only). See training/finetune.py.
TRAINABLE = ("all", "update", "last")


@dataclass
class TrainerConfig:
    iterations: int = 2000
    batch_size: int = 8
    steps: StepRange = field(default_factory=StepRange)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    grad: GradConfig = field(default_factory=GradConfig)
    bf16: bool = False
    gradient_checkpointing: int = 0
    trainable: str = "all"
    checkpoint_every: int = 100
    # Iterations whose checkpoint is also kept as iter_<N>.ckpt (a reproduction evaluates
    # accuracy against training length from them).
    snapshots: list[int] = field(default_factory=list)
    log_every: int = 10
    image_every: int = 200
    progress: bool = True
    regen_check: RegenCheckConfig = field(default_factory=RegenCheckConfig)


@dataclass
class LoggerConfig:
    name: str = "wandb"
    project: str = "nca"
    entity: str | None = None
    mode: str = "offline"
    group: str | None = None
    tags: list[str] = field(default_factory=list)

    def ignored(self) -> dict[str, str]:
        if self.name != "none":
            return {}
        why = "logger=none logs nothing to W&B"
        return dict.fromkeys(("project", "entity", "mode", "group", "tags"), why)


@dataclass
class RunConfig:
    """The top level of a training config; task, dataset, loss and perception are checked
    by their owners (the task and the perception registry)."""

    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    resume: str | None = None
    init: str | None = None  # a run folder or checkpoint whose weights this run starts from
    task: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    perception: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def parse_run_config(cfg: Mapping[str, Any] | DictConfig) -> RunConfig:
    """Parse and range-check the parts of the config that the engine and trainer own."""
    model = cfg.get("model") if isinstance(cfg, Mapping | DictConfig) else None
    if isinstance(model, Mapping | DictConfig) and isinstance(model.get("hidden"), int):
        cfg = {**cfg, "model": {**model, "hidden": [model["hidden"]]}}  # one layer
    run = parse(cfg, RunConfig, "")
    m, t = run.model, run.trainer
    validate_model(m)
    require(t.iterations >= 0, "trainer.iterations", t.iterations, "an integer >= 0")
    require(t.batch_size > 0, "trainer.batch_size", t.batch_size, "a positive integer")
    require(t.steps.min >= 1, "trainer.steps.min", t.steps.min, "an integer >= 1")
    require(
        t.steps.max >= t.steps.min,
        "trainer.steps.max",
        t.steps.max,
        f"an integer >= trainer.steps.min ({t.steps.min})",
    )
    choice(t.optimizer.name, ["adam", "adamw"], "trainer.optimizer.name")
    require(t.optimizer.lr > 0, "trainer.optimizer.lr", t.optimizer.lr, "a positive number")
    choice(
        t.schedule.name,
        ["constant", "piecewise", "cosine", "exponential"],
        "trainer.schedule.name",
    )
    validate_schedule(t.schedule, t.iterations)
    require(t.grad.accumulate >= 1, "trainer.grad.accumulate", t.grad.accumulate, "an integer >= 1")
    clip = t.grad.clip_norm
    require(clip is None or clip > 0, "trainer.grad.clip_norm", clip, "a positive number or null")
    require(
        all(0 < i <= t.iterations for i in t.snapshots),
        "trainer.snapshots",
        t.snapshots,
        f"iterations between 1 and trainer.iterations ({t.iterations})",
    )
    for key in ("checkpoint_every", "log_every", "image_every"):
        value = getattr(t, key)
        require(value > 0, f"trainer.{key}", value, "a positive integer")
    require(
        t.gradient_checkpointing >= 0,
        "trainer.gradient_checkpointing",
        t.gradient_checkpointing,
        "0 (off) or the number of steps per checkpointed block",
    )
    choice(t.trainable, list(TRAINABLE), "trainer.trainable")
    rc = t.regen_check
    require(rc.every >= 0, "trainer.regen_check.every", rc.every, "0 (at the end) or a period")
    require(
        0 <= rc.max_share < 1,
        "trainer.regen_check.max_share",
        rc.max_share,
        "a share of the training time in [0, 1) (0: check every `every` iterations regardless)",
    )
    require(rc.samples >= 1, "trainer.regen_check.samples", rc.samples, "an integer >= 1")
    choice(rc.perturbation, [*DAMAGE_KINDS, "mutate"], "trainer.regen_check.perturbation")
    validate_protocol_steps(rc.steps, "trainer.regen_check.steps")
    choice(run.logger.name, ["wandb", "none"], "logger.name")
    choice(run.logger.mode, ["offline", "online", "disabled"], "logger.mode")
    require(
        re.fullmatch(r"cpu|cuda(:\d+)?", run.device) is not None,
        "device",
        run.device,
        "'cpu' or 'cuda[:N]'",
    )
    return run
