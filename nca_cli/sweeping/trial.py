"""What one trial runs, in whatever process or machine the Hydra launcher chose: a normal
training run in the job's folder that reports its training curve to the study, so that the
pruner can stop it early.

The sweeper only needs the job to return a mapping of metrics holding the objective, so a
trial may evaluate its configuration another way (a k-fold of it, say) by passing another
``evaluate`` with the signature of :func:`nca_cli.training.trainer.train`.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nca_cli.atomic import write_text_atomic
from nca_cli.compute import placed_device
from nca_cli.sweeping.retry import take_over_run
from nca_cli.sweeping.slurm import current_job
from nca_cli.sweeping.study import make_pruner, open_storage, storage_url
from nca_cli.training.run_folder import train_in_folder

Report = Callable[[int, dict[str, float]], None]
Evaluate = Callable[..., Mapping[str, float]]  # (config, run_dir, report=...) -> metrics


def run_trial(cfg: DictConfig, evaluate: Evaluate | None = None) -> dict[str, float]:
    """Train the job's config in its folder; an error is kept in ``error.txt`` there and
    raised again for the sweeper to record."""
    from nca_cli.masking import hide_secrets

    hide_secrets()  # a storage URL's password must not stay in the trial's saved files
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    config["device"] = placed_device(config["device"], hydra_cfg.job.num)  # round-robin
    try:
        report = study_reporter(hydra_cfg)
        if evaluate is not None:
            return dict(evaluate(config, run_dir, report=report))
        continue_failed_attempt(hydra_cfg, run_dir, config)
        return dict(train_in_folder(config, run_dir, report=report))
    except Exception:
        write_text_atomic(run_dir / "error.txt", traceback.format_exc())
        raise


def continue_failed_attempt(hydra_cfg: Any, run_dir: Path, config: dict[str, Any]) -> None:
    """In a sweep, a trial that retries a failed point takes over its run (see
    :mod:`nca_cli.sweeping.retry`)."""
    sweeper = hydra_cfg.get("sweeper")
    if sweeper is None or sweeper.get("trial") is None:
        return
    sweep_dir = Path(str(hydra_cfg.sweep.dir))
    storage = storage_url(sweeper.storage, sweep_dir)
    take_over_run(run_dir, config, sweep_dir, storage, str(sweeper.study_name), int(sweeper.trial))


def study_reporter(hydra_cfg: Any) -> Report | None:
    """A ``report(iteration, row)`` that stores the row's intermediate value in the trial
    and raises ``optuna.TrialPruned`` when the pruner says so; None outside an nca sweep.
    A trial run by a SLURM job records the job (user attribute ``slurm_job``)."""
    sweeper = hydra_cfg.get("sweeper")
    if sweeper is None or sweeper.get("trial") is None:
        return None
    import optuna

    number = int(sweeper.trial)
    key = str(sweeper.intermediate)
    storage = open_storage(storage_url(sweeper.storage, Path(str(hydra_cfg.sweep.dir))))
    pruner_cfg = sweeper.pruner
    pruner = make_pruner(pruner_cfg.name, pruner_cfg.startup_trials, pruner_cfg.warmup_steps)
    study = optuna.load_study(
        study_name=str(sweeper.study_name),
        storage=storage,
        sampler=optuna.samplers.RandomSampler(),
        pruner=pruner,
    )
    # The pruner compares in the study's direction: a loss reported to a study that
    # maximises (dice, accuracy) is negated.
    sign = 1.0 if sweeper.intermediate_direction == study.direction.name.lower() else -1.0
    study_id = storage.get_study_id_from_name(study.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    job = current_job()
    if job is not None:  # the sweeper names it when the job is stopped
        storage.set_trial_user_attr(trial_id, "slurm_job", job)

    def report(iteration: int, row: dict[str, float]) -> None:
        value = row.get(key)
        if value is None or not math.isfinite(value):
            return
        storage.set_trial_intermediate_value(trial_id, iteration, sign * float(value))
        if pruner.prune(study, storage.get_trial(trial_id)):
            raise optuna.TrialPruned(f"at iteration {iteration}: {key} {value:.6g}")

    return report
