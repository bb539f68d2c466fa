"""A run folder as the unit that every command trains: a finished run is not trained
again, an interrupted one continues from its last checkpoint (``nca train``, the folds of
``nca kfold`` and of cross-validated sweeps, and ``nca reproduce``'s runs all go through
:func:`train_in_folder`)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nca_cli.training.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from nca_cli.training.trainer import Report, train

log = logging.getLogger(__name__)
ERROR_FILE = "error.txt"  # why a run failed (divergence), beside its last good checkpoint
METRICS_FILE = "metrics.json"  # written when training completes
# Keys of metrics.json that tell how the run went, not how good the model is.
BOOKKEEPING = ("iteration", "seconds", "regen_check_seconds")


def finished_metrics(run_dir: Path) -> dict[str, float] | None:
    """The final metrics of a run folder whose training completed, else None."""
    path = run_dir / METRICS_FILE
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


def run_state(run_dir: Path) -> str:
    """``finished``, ``failed: <reason>`` (its error.txt), ``interrupted at iteration N
    (checkpoint kept)`` or ``not started``: what a k-fold or a reproduction reports of
    each of its runs."""
    if (run_dir / METRICS_FILE).is_file():
        return "finished"
    if (run_dir / ERROR_FILE).is_file():
        reason = (run_dir / ERROR_FILE).read_text().strip().splitlines() or ["unknown error"]
        return f"failed: {reason[0]}"
    if (run_dir / CHECKPOINT_NAME).is_file():
        try:
            iteration = load_checkpoint(run_dir / CHECKPOINT_NAME)["iteration"]
        except CheckpointError as err:
            return f"failed ({err})"
        return f"interrupted at iteration {iteration} (checkpoint kept)"
    return "not started"


@contextmanager
def recording_failure(run_dir: Path) -> Iterator[None]:
    """A run that fails (diverged, out of memory) keeps its reason in ``error.txt`` beside
    its last good checkpoint, which marks it failed; an earlier attempt's is removed."""
    from nca_cli.atomic import write_text_atomic
    from nca_cli.training.trainer import RunFailed

    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    try:
        yield
    except RunFailed as err:
        write_text_atomic(run_dir / ERROR_FILE, f"{err}\n")
        raise


@contextmanager
def logging_to(run_dir: Path) -> Iterator[None]:
    """The run's ``train.log`` when no Hydra job writes one (a fold of a cross-validated
    trial, a run started from the library API): every INFO record, as Hydra's job log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()
