"""Find a training run and rebuild its task and model for evaluation, without the pool,
optimiser or logger that resuming it would allocate."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nca_cli.composition import apply_overrides
from nca_cli.compute import configure_cpu, device_problem
from nca_cli.engine.cascade import CascadeNCA
from nca_cli.engine.nca import NCA
from nca_cli.measures import EvalError
from nca_cli.paths import output_root
from nca_cli.shortcuts import expand
from nca_cli.tasks.base import Task
from nca_cli.training.build import build_run
from nca_cli.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from nca_cli.training.checks import check_config, override_keys
from nca_cli.training.schema import RunConfig
from nca_cli.zoo import is_zoo_name, zoo_checkpoint

log = logging.getLogger(__name__)


def train_root() -> Path:
    """Where ``nca train`` puts its runs: ``$NCA_OUTPUT_DIR/train`` (default ``outputs``)."""
    return output_root() / "train"


def find_checkpoint(run: Path | None = None, checkpoint: Path | None = None) -> Path:
    """The checkpoint to evaluate: ``checkpoint``, ``run`` (a run folder, its last.ckpt; or
    a checkpoint file itself), or the most recent run (by its timestamped folder name)
    under :func:`train_root` that has one. Either may be ``zoo:NAME``, a model of the
    zoo."""
    for given in (checkpoint, run):
        if given is not None and is_zoo_name(given):
            return zoo_checkpoint(given)
    if checkpoint is None and run is not None and run.is_file():
        checkpoint = run
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise EvalError(f"no checkpoint file at {checkpoint}")
        return checkpoint
    if run is not None:
        if not run.is_dir():
            raise EvalError(f"{run} is not a run folder or a checkpoint (no such path)")
        if not (run / CHECKPOINT_NAME).is_file():
            raise EvalError(
                f"{run} holds no {CHECKPOINT_NAME}: it is not a training run folder, or the "
                "run stopped before its first checkpoint"
            )
        return run / CHECKPOINT_NAME
    root = train_root()
    runs = sorted(p.parent for p in root.glob(f"*/{CHECKPOINT_NAME}")) if root.is_dir() else []
    if not runs:
        raise EvalError(
            f"no training run with a checkpoint under {root}: train one with `nca train`, "
            "or pass --run DIR or --checkpoint FILE (NCA_OUTPUT_DIR moves the root)"
        )
    return runs[-1] / CHECKPOINT_NAME


@dataclass
class LoadedRun:
    path: Path  # the checkpoint
    config: dict[str, Any]  # its config with the overrides applied
    run: RunConfig
    task: Task
    nca: NCA | CascadeNCA
    iteration: int
    wandb_id: str | None


# What nca eval never reads of a run's config, so overriding it changes nothing.
UNREAD = {
    "trainer": "nca eval does not train (--steps sets how long --sets grows)",
    "task.pool": "nca eval grows fresh samples, without a pool",
    "seed": "nca eval draws its samples and damage from --seed",
    "resume": "nca eval continues no run",
}


def load_run(checkpoint: Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedRun:
    """Rebuild the task and model saved in ``checkpoint``; ``overrides`` (``key=value``)
    change the saved config, e.g. ``fire_rate=0.3`` or ``device=cuda``."""
    payload = load_checkpoint(checkpoint)
    saved = payload.get("config")
    if not isinstance(saved, dict) or not isinstance(payload.get("model"), dict):
        raise EvalError(f"{checkpoint} holds no config or model: not an nca training checkpoint")
    overrides = expand(overrides)
    config = apply_overrides(saved, overrides, f"the run of {checkpoint}")
    device = str(config.get("device", "cpu"))
    named = any(key == "device" for key, _ in override_keys(overrides))
    if not named and device_problem(device) is not None:  # trained on a GPU, read here
        log.warning(
            "%s trained on %s, which this machine lacks: evaluating on the CPU (device=cpu)",
            checkpoint,
            device,
        )
        config["device"] = "cpu"
    run = check_config(config, overrides, UNREAD)
    configure_cpu(run.threads)
    task, nca = build_run(run)
    try:
        nca.load_state_dict(payload["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise EvalError(
            f"the weights in {checkpoint} do not fit the model its config builds ({first}); "
            "did an override change the architecture?"
        ) from None
    return LoadedRun(
        checkpoint,
        config,
        run,
        task,
        nca.to(run.device).eval(),
        int(payload.get("iteration", 0)),
        payload.get("wandb_id"),
    )
