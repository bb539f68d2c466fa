"""A training run as a Hydra job: what ``nca train`` runs once, and once per job of a
multirun (``nca train -m``, the folds of ``nca kfold``), on any Hydra launcher."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from nca_cli.composition import apply_overrides, resolve
from nca_cli.compute import placed_device
from nca_cli.config import ConfigError
from nca_cli.masking import hide_secrets

log = logging.getLogger("nca.train")


def check_run_folder(run_dir: Path) -> None:
    """Before Hydra creates or writes into it: ``run_dir`` is a training run folder."""
    from nca_cli.training.checkpoint import CHECKPOINT_NAME

    if not run_dir.is_dir():
        raise ConfigError(f"invalid value for 'resume': {str(run_dir)!r} is not a folder")
    if not (run_dir / CHECKPOINT_NAME).is_file():
        raise ConfigError(
            f"invalid value for 'resume': {str(run_dir)!r} is not a training run folder: it "
            f"holds no {CHECKPOINT_NAME} (a run writes one as soon as its training starts)"
        )


def resume_config(cfg: DictConfig, overrides: list[str]) -> tuple[dict[str, Any], dict]:
    """The saved config of the run to resume, with ``key=value`` overrides applied."""
    from nca_cli.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from nca_cli.training.checks import check_config, override_keys

    run_dir = Path(str(cfg.resume))
    if not run_dir.is_dir():
        raise ConfigError(f"invalid value for 'resume': {str(run_dir)!r} is not a run folder")
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_NAME)
    wanted = [
        item
        for item in overrides
        if not item.lstrip("+~").startswith(("resume=", "hydra.", "hydra/"))
    ]
    if any(key == "init" for key, _ in override_keys(wanted)):
        raise ConfigError(
            "invalid value for 'init': a resumed run continues from its own checkpoint; "
            "init= starts a new run from another run's weights (drop resume= or init=)"
        )
    config = apply_overrides(checkpoint["config"], wanted, f"the run {run_dir}")
    config["resume"] = str(run_dir)
    check_config(config, wanted)
    return config, checkpoint


def train_job(
    cfg: DictConfig, run_dir: Path, overrides: list[str], stop: threading.Event
) -> dict[str, float]:
    """Train, resume (``resume=``) or skip the run in ``run_dir``. A failed run (diverged,
    out of memory) keeps its reason in ``error.txt`` beside its last good checkpoint, which
    marks it failed."""
    from nca_cli.training.run_folder import recording_failure, train_in_folder
    from nca_cli.training.trainer import train

    hide_secrets()
    with recording_failure(run_dir):
        if cfg.get("resume"):
            config, checkpoint = resume_config(cfg, overrides)
            return train(config, run_dir, checkpoint, stop=stop)
        config = resolve(cfg)
        hydra = HydraConfig.get()
        if hydra.mode == RunMode.MULTIRUN:  # parallel jobs share the GPUs round-robin
            config["device"] = placed_device(config["device"], hydra.job.num)
        # a re-run multirun job (k-fold, sweep) may have finished or been interrupted
        return train_in_folder(config, run_dir, stop=stop)


def hydra_job(cfg: DictConfig) -> dict[str, float]:
    """The Hydra task function of a training run, in Hydra's output folder. Hydra's
    launchers pass a job's ``SystemExit`` on and turn other errors into tracebacks, so every
    known failure ends the job with one line and ``nca train``'s exit status: 2 bad input,
    1 failed (divergence, out of memory), 130 interrupted (Ctrl-C or SIGTERM stop it cleanly)."""
    from nca_cli.datasets.storage import DataError
    from nca_cli.training.checkpoint import CheckpointError
    from nca_cli.training.interrupts import Interrupted, stop_requests
    from nca_cli.training.trainer import RunFailed

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with stop_requests(run_dir) as stop:
        try:
            metrics = train_job(cfg, run_dir, list(HydraConfig.get().overrides.task), stop)
        except (ConfigError, CheckpointError, DataError) as err:
            print(f"nca train: error: {err}", file=sys.stderr)
            sys.exit(2)
        except RunFailed as err:
            print(f"nca train: {err}", file=sys.stderr)
            sys.exit(1)
        except Interrupted as err:
            print(f"nca train: {err}", file=sys.stderr)
            sys.exit(130)
        summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        log.info("done: %s", summary)
        print(f"run folder: {run_dir}\nfinal: {summary}")
        if stop.is_set():  # Ctrl-C while a finished job was skipped: a k-fold stops here too
            print("nca train: interrupted", file=sys.stderr)
            sys.exit(130)
    return metrics
