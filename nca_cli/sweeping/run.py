"""A sweep as a Hydra multirun of trials with the project's sweeper: each trial a training
run, or a k-fold of them with ``cv.k``; on any Hydra launcher."""

from __future__ import annotations

from omegaconf import DictConfig

from nca_cli import shortcuts
from nca_cli.sweeping.config import ALIASES

# Hydra modes that exclude --multirun.
OTHER_MODES = {
    "-c", "--cfg", "-i", "--info", "-h", "--help", "--hydra-help", "-sc",
    "--shell-completion", "-r", "--run", "-m", "--multirun",
}  # fmt: skip


def expand(argv: list[str]) -> list[str]:
    """Hydra arguments: the training shortcuts and the sweeper's shorthands spelled out,
    ``-m`` added, and ``n_jobs=N`` (N > 1) runs trials in parallel with the joblib launcher
    unless another launcher is chosen."""
    out = shortcuts.expand(argv, {**shortcuts.SHORTCUTS, **ALIASES})
    launcher = any(a.startswith("hydra/launcher=") for a in argv)
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "n_jobs" and not launcher and value.isdigit() and int(value) > 1:
            out += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={value}"]
    if not any(a.split("=", 1)[0] in OTHER_MODES for a in out):
        out.insert(0, "-m")
    return out


def trial_job(cfg: DictConfig) -> dict[str, float]:
    """The Hydra task function of one trial (a k-fold of runs with ``cv.k``)."""
    from hydra.core.hydra_config import HydraConfig

    from nca_cli.sweeping.cv import fold_evaluator
    from nca_cli.sweeping.trial import run_trial

    return run_trial(cfg, fold_evaluator(HydraConfig.get()))


def run_sweep(overrides: list[str]) -> None:
    """Run the sweep that ``overrides`` describe (``nca sweep``'s arguments); the study,
    the trials' run folders, ``trials.csv`` and the plots go to the sweep folder, and
    running it again resumes the study. Bad input raises ``ConfigError``."""
    from nca_cli.hydra_app import run_app
    from nca_cli.sweeping.config import register

    register()
    run_app(trial_job, expand(overrides), "sweep")
