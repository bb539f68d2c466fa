"""The sweeper's config (``hydra/sweeper=nca``, typed so a typo fails at composition) and
its registration with Hydra, together with the search presets of ``sweeps/``."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

SWEEPER_TARGET = "hydra_plugins.nca_sweeper.NcaSweeper"
# Shorthands of `nca sweep` for the sweeper's settings (no training key has these names).
ALIASES = {
    "study": "hydra.sweeper.study_name",
    "storage": "hydra.sweeper.storage",
    "n_trials": "hydra.sweeper.n_trials",
    "n_jobs": "hydra.sweeper.n_jobs",
    "sampler": "hydra.sweeper.sampler",
    "pruner": "hydra.sweeper.pruner.name",
    "metric": "hydra.sweeper.metric",
    "direction": "hydra.sweeper.direction",
    "cv.k": "hydra.sweeper.cv.k",
    "cv.splits": "hydra.sweeper.cv.splits",
    "cv.n_jobs": "hydra.sweeper.cv.n_jobs",
}


@dataclass
class PrunerConf:
    """``median`` stops a trial whose intermediate value is worse than the median of
    finished trials at the same iteration; ``none`` lets every trial finish."""

    name: str = "median"
    startup_trials: int = 4  # finished trials before anything is pruned
    warmup_steps: int = 0  # reported steps (iterations; folds with cv.k) before pruning


@dataclass
class CrossValConf:
    """``cv.k=K``: every trial is a K-fold cross-validation of its configuration and its
    objective is the mean over the folds (all trials on the same folds, drawn once per
    study from its base config); null: every trial is one training run."""

    k: int | None = None
    splits: str | None = None  # a fold file (nca kfold's folds.json) instead of drawing folds
    n_jobs: int = 1  # folds of one trial trained at a time (joblib processes; SLURM jobs)
    fold: int | None = None  # set by the sweeper: this job trains only this fold


@dataclass
class SweeperConf:
    _target_: str = SWEEPER_TARGET
    # The study: named studies live in outputs/sweep/<name>/ and resume when run again;
    # unnamed ones are named after their timestamped folder.
    study_name: str | None = None
    # SQLAlchemy URL; null: NCA_OPTUNA_STORAGE, else SQLite inside the sweep folder.
    storage: str | None = "${oc.env:NCA_OPTUNA_STORAGE,null}"
    # The objective: a key of the final metrics that training returns, and its direction;
    # null: the task's objective (mse for the emoji tasks, dice or accuracy for data tasks).
    metric: str | None = None
    direction: str | None = None
    # Reported to the pruner every trainer.log_every iterations: a key of the logged training
    # rows and its direction (negated when it differs from the objective's).
    intermediate: str = "loss"
    intermediate_direction: str = "minimize"
    sampler: str = "auto"  # auto (grid when every dimension is finite, else tpe), tpe, random, grid
    pruner: PrunerConf = field(default_factory=PrunerConf)
    cv: CrossValConf = field(default_factory=CrossValConf)
    n_trials: int | None = None  # null: the rest of a grid, or 20
    n_jobs: int | None = None  # trials launched together; null: the launcher's n_jobs
    seed: int | None = None  # sampler seed (+ trials already run); null: random
    heartbeat: int = 60  # seconds; a trial silent for 3 beats (killed sweep) is marked failed
    # key: choice(...), range(...), interval(...) or tag(log, interval(...)); see space.py
    params: dict[str, Any] = field(default_factory=dict)
    trial: int | None = None  # set by the sweeper for each job: its trial number


def register() -> None:
    """Make ``hydra/sweeper=nca`` and ``search=<preset>`` known to Hydra.

    Called by ``nca sweep`` before Hydra starts (nothing is registered at import time).
    """
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins
    from hydra_plugins.nca_sweeper import NcaSweeper
    from omegaconf import OmegaConf

    Plugins.instance().register(NcaSweeper)
    store = ConfigStore.instance()
    store.store(group="hydra/sweeper", name="nca", node=SweeperConf, provider="nca")
    for preset in sorted(resources.files("nca_cli.sweeps").iterdir(), key=lambda p: p.name):
        if preset.name.endswith(".yaml"):
            store.store(
                group="search",
                name=preset.name.removesuffix(".yaml"),
                node=OmegaConf.create(preset.read_text()),
                package="_global_",
                provider="nca",
            )
