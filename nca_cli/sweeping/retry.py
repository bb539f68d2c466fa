"""A retried trial continues where its failed attempts stopped: a grid point run again (or a
point a killed or cancelled job left) takes over the run folders of the earlier failed
trials with the same parameters, when their configs match, and resumes from their
``last.ckpt`` instead of training from scratch."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

from nca_cli.sweeping.study import open_storage

log = logging.getLogger("nca.sweep")

# Keys of a run's config that may differ between two attempts of the same run.
RUN_ONLY = ("threads", "logger.group", "device")
KEEP = {".hydra", "error.txt"}  # the new job's Hydra record; the old attempt's error
MOVED = ".moved"  # ``<old run>.moved`` names where an old run went


def failed_attempts(storage: str, study_name: str, trial: int) -> list[int]:
    """The failed trials of the study with ``trial``'s parameters, the latest first."""
    import optuna
    from optuna.trial import TrialState

    sampler = optuna.samplers.RandomSampler()
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage), sampler=sampler)
    trials = study.get_trials(deepcopy=False)
    params = next(t.params for t in trials if t.number == trial)
    failed = (t.number for t in trials if t.state == TrialState.FAIL and t.params == params)
    return sorted(failed, reverse=True)


def same_run(folder: Path, config: dict[str, Any]) -> bool:
    """Whether ``folder`` holds a started run of ``config`` (run-only keys aside)."""
    import yaml

    started = (folder / "metrics.json").is_file() or (folder / "last.ckpt").is_file()
    if not started or not (folder / "config.yaml").is_file():
        return False
    try:
        saved = yaml.safe_load((folder / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    return comparable(saved) == comparable(config)


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(config)
    for dotted in RUN_ONLY:
        *parents, key = dotted.split(".")
        node = out
        for parent in parents:
            node = node.get(parent) or {}
        if isinstance(node, dict):
            node.pop(key, None)
    return out


def take_over(source: Path, target: Path) -> bool:
    """Move the run in ``source`` into ``target`` (a fold's folder whole; into a trial's
    existing job folder entry by entry, keeping its ``.hydra``); False when another retry
    took it first."""
    try:
        if not target.exists():
            os.rename(source, target)
        else:
            for entry in sorted(source.iterdir()):
                if entry.name not in KEEP and not (target / entry.name).exists():
                    os.rename(entry, target / entry.name)
    except OSError:
        return False
    (source.parent / f"{source.name}{MOVED}").write_text(f"{target.resolve()}\n")
    return True


def take_over_run(
    run_dir: Path, config: dict[str, Any], sweep_dir: Path, storage: str, study: str, trial: int
) -> None:
    """Before a trial trains: when its folder holds no run yet, continue the latest failed
    attempt at the same point whose run matches ``config``."""
    if (run_dir / "last.ckpt").is_file() or (run_dir / "metrics.json").is_file():
        return
    for number in failed_attempts(storage, study, trial):
        source = sweep_dir / str(number)
        if same_run(source, config) and take_over(source, run_dir):
            log.info("trial %d: continuing the run of failed trial %d", trial, number)
            return
