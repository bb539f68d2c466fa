"""Run loggers: Weights & Biases (offline by default) or nothing.

Local outputs (metrics JSON lines, images, checkpoints) are written by the trainer
whatever the logger, so a logger failure never costs a run its results.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nca_cli.config import LoggerConfig

log = logging.getLogger(__name__)


class RunLogger(Protocol):
    run_id: str | None

    def metrics(self, values: dict[str, float], step: int) -> None: ...

    def image(self, key: str, image: np.ndarray, step: int) -> None: ...

    def video(self, key: str, path: Path, step: int) -> None: ...

    def artifact(self, path: Path, name: str, kind: str) -> None: ...

    def finish(self, exit_code: int = 0) -> None: ...


class NullLogger:
    """``logger=none``: nothing leaves the run folder."""

    run_id: str | None = None

    def metrics(self, values: dict[str, float], step: int) -> None:
        pass

    def image(self, key: str, image: np.ndarray, step: int) -> None:
        pass

    def video(self, key: str, path: Path, step: int) -> None:
        pass

    def artifact(self, path: Path, name: str, kind: str) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbLogger:
    """One W&B run per training, its files inside the run folder."""

    def __init__(
        self,
        cfg: LoggerConfig,
        run_dir: Path,
        config: dict[str, Any],
        run_id: str | None = None,
    ) -> None:
        os.environ.setdefault("WANDB_X_DISABLE_STATS", "true")
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group or run_dir.name,  # evaluations of this run join its group
            tags=list(cfg.tags),
            mode=cfg.mode,  # type: ignore[arg-type]
            dir=str(run_dir),
            name=run_dir.name,
            id=run_id,
            resume="allow" if run_id else None,
            config=config,
        )
        self.run_id = self.run.id
        log.info("W&B run %s (%s) in %s", self.run.id, cfg.mode, run_dir / "wandb")

    def metrics(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def image(self, key: str, image: np.ndarray, step: int) -> None:
        assert image.dtype == np.uint8, "W&B shows float images as black: pass uint8"
        self.run.log({key: self._wandb.Image(image)}, step=step)

    def video(self, key: str, path: Path, step: int) -> None:
        self.run.log({key: self._wandb.Video(str(path), format="gif")}, step=step)

    def artifact(self, path: Path, name: str, kind: str) -> None:
        art = self._wandb.Artifact(name, type=kind)
        art.add_file(str(path))
        self.run.log_artifact(art)

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


def make_logger(
    cfg: LoggerConfig, run_dir: Path, config: dict[str, Any], run_id: str | None = None
) -> RunLogger:
    if cfg.name == "none":
        return NullLogger()
    return WandbLogger(cfg, run_dir, config, run_id)
