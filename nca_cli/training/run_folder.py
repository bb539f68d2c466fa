"""A run folder as the unit that every command trains: a finished run is not trained
again, an interrupted one continues from its last checkpoint (``nca train``, the folds of
``nca kfold`` and of cross-validated sweeps, and ``nca reproduce``'s runs all go through
:func:`train_in_folder`)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

from nca_cli.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from nca_cli.training.trainer import Report, train

log = logging.getLogger(__name__)


def finished_metrics(run_dir: Path) -> dict[str, float] | None:
    """The final metrics of a run folder whose training completed, else None."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    return {k: v for k, v in json.loads(path.read_text()).items() if isinstance(v, int | float)}


def train_in_folder(
    config: dict[str, Any],
    run_dir: Path,
    stop: threading.Event | None = None,
    report: Report | None = None,
) -> dict[str, float]:
    """Train ``config`` into ``run_dir``: skipped when finished (its metrics returned),
    continued from ``last.ckpt`` when interrupted, else started."""
    finished = finished_metrics(run_dir)
    if finished is not None:
        log.info("%s already finished; skipping", run_dir)
        return finished
    checkpoint = None
    if (run_dir / CHECKPOINT_NAME).is_file():
        checkpoint = load_checkpoint(run_dir / CHECKPOINT_NAME)
        log.info("continuing %s from iteration %d", run_dir, checkpoint["iteration"])
    return train(config, run_dir, checkpoint, report=report, stop=stop)
