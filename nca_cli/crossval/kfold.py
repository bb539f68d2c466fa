"""K-fold cross-validation as a Hydra multirun of the training job: one normal training run
per fold, in ``<folder>/fold_<i>/``, on whichever Hydra launcher the overrides choose
(sequential by default, joblib processes, SLURM jobs), each with a fresh model, optimiser,
scheduler and pool. Running it again on its folder skips finished folds and continues
interrupted ones from their last checkpoint; a diverged fold does not stop the others."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nca_cli.atomic import write_text_atomic
from nca_cli.config import ConfigError

COMMAND_FILE = "kfold.json"  # k and the overrides, so that a k-fold folder resumes alone
STATUS_FILE = "status.json"  # what each fold's run folder holds: finished, interrupted, ...
DEFAULT_K = 5


@dataclass
class KFoldResult:
    """A k-fold that ran to its end: each fold's state, and the summary of those that
    finished (None when none did)."""

    folder: Path
    k: int
    states: list[str]  # "fold_<i>: finished" / "fold_<i>: failed: <reason>" / ...
    summary: dict[str, Any] | None
    summary_error: str | None = None  # why the finished folds could not be summarised

    @property
    def failed(self) -> int:
        return sum(not s.endswith(": finished") for s in self.states)


class KFoldStopped(Exception):
    """Ctrl-C, or bad input in a fold, stopped the k-fold; finished folds are kept and the
    same call on ``folder`` resumes it. ``code`` is the exit status the stop carried."""

    def __init__(self, folder: Path, states: list[str], code: int) -> None:
        super().__init__(f"stopped: {'; '.join(states)}")
        self.folder, self.states, self.code = folder, states, code


def prepare(
    overrides: list[str], k: int, folder: Path, splits: Path | None
) -> tuple[list[Path], dict[str, Any]]:
    """Write the fold files into ``folder`` (reusing ``folds.json`` when it exists)."""
    from nca_cli.composition import compose
    from nca_cli.crossval.folds import FOLDS_FILE, case_pool, load_folds, make_folds, write_folds
    from nca_cli.training.checks import check_config

    training = [o for o in overrides if not o.startswith(("hydra", "+hydra"))]
    config = compose(training)
    check_config(config, training)
    pool = case_pool(config)
    saved = folder / FOLDS_FILE
    if saved.is_file():
        folds = load_folds(saved, set(pool.cases))
    elif splits is not None:
        folds = load_folds(splits, set(pool.cases) | set(pool.test))
    else:
        folds = make_folds(pool.cases, k, pool.seed, pool.labels)
    if len(folds) != k:
        raise ConfigError(f"invalid value for 'k': {k}; the fold file holds {len(folds)} folds")
    return write_folds(folder, folds, pool.test), config


def report(folder: Path, k: int, config: dict[str, Any]) -> dict[str, Any]:
    """summary.json, a console table, a plot of per-fold metrics, and a W&B summary, over
    the folds that finished (a failed fold's column reads "failed")."""
    from rich.table import Table

    from nca_cli.crossval.folds import log_fold_summary, plot_folds, summarize
    from nca_cli.tables import table_console

    summary = summarize(folder, k, partial=True)
    done = summary["folds"]
    title = f"{k}-fold cross-validation: {folder}"
    if len(done) < k:
        title += f" ({len(done)} of {k} folds finished)"
    table = Table(title=title)
    table.add_column("metric")
    for i in range(k):
        table.add_column(f"fold {i}", justify="right")
    table.add_column("mean ± std", justify="right")
    for name, m in summary["metrics"].items():
        values = dict(zip(done, m["values"], strict=True))
        cells = [f"{values[i]:.4g}" if i in values else "failed" for i in range(k)]
        table.add_row(name, *cells, f"{m['mean']:.4g} ± {m['std']:.2g}")
    table_console().print(table)
    plot_folds(folder / "folds.png", summary)
    log_fold_summary(folder, summary, config)
    return summary


def saved_command(folder: Path) -> tuple[int, list[str]] | None:
    """``k`` and the overrides that the k-fold in ``folder`` was started with."""
    path = folder / COMMAND_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return int(saved["k"]), [str(o) for o in saved["overrides"]]


def fold_states(folder: Path, k: int) -> list[str]:
    """``fold_<i>: <state>`` for each fold (see ``run_state``)."""
    from nca_cli.training.run_folder import run_state

    return [f"fold_{i}: {run_state(folder / f'fold_{i}')}" for i in range(k)]


def fold_job(cfg: DictConfig) -> dict[str, float] | None:
    """The training job for one fold, except that a diverged fold (exit status 1, its
    reason in error.txt) returns: Hydra's sweeper would end the multirun on its SystemExit,
    and the other folds must still train. Bad input (2) and Ctrl-C (130) still stop all."""
    from nca_cli.training.job import hydra_job

    try:
        return hydra_job(cfg)
    except SystemExit as stop:
        if stop.code != 1:
            raise
        return None


def new_folder() -> Path:
    from nca_cli.paths import output_root, timestamp

    return output_root() / "kfold" / timestamp()


def run_kfold(
    overrides: list[str],
    k: int | None = None,
    folder: Path | None = None,
    splits: Path | None = None,
    resume_only: bool = False,
    say: Callable[[str], None] = print,
) -> KFoldResult:
    """Train one run per fold of the case pool that ``overrides`` compose, into ``folder``
    (a new one under the output root by default), and summarise them.

    A ``folder`` that holds a k-fold resumes it with its saved ``k`` and overrides unless
    given again; ``resume_only`` refuses a folder that holds none. Bad input raises
    ``ConfigError`` or ``DataError`` before any fold starts, leaving no empty folder behind;
    Ctrl-C raises ``KFoldStopped``.
    """
    from hydra.errors import HydraException

    from nca_cli.crossval.folds import FOLDS_FILE
    from nca_cli.datasets.storage import DataError
    from nca_cli.hydra_app import run_app

    folder = folder or new_folder()
    created = not folder.exists()
    try:
        resuming = (folder / FOLDS_FILE).is_file()
        if resume_only and not resuming:
            raise ConfigError(
                f"invalid value for 'dir': {str(folder)!r} is not a k-fold folder (it holds "
                "no folds.json)"
            )
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"invalid value for 'hydra.sweep.dir': {str(folder)!r} is a file")
        saved = saved_command(folder) if resuming else None
        if saved is not None:
            k = saved[0] if k is None else k
            overrides = overrides or saved[1]
        k = DEFAULT_K if k is None else k
        if resuming:
            say(f"resuming {folder}: " + "; ".join(fold_states(folder, k)))
        folder.mkdir(parents=True, exist_ok=True)
        paths, config = prepare(overrides, k, folder, splits)
        if not (folder / COMMAND_FILE).is_file():
            command = {"k": k, "overrides": overrides}
            write_text_atomic(folder / COMMAND_FILE, json.dumps(command, indent=1) + "\n")
    except (ConfigError, DataError, HydraException) as err:  # Hydra's: a bad override
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # nothing was written: no half-made k-fold folder stays behind
        if isinstance(err, HydraException):
            raise ConfigError(str(err)) from None
        raise
    say(f"{k} folds in {folder}")
    folds = [
        "-m",
        f"dataset.splits={','.join(str(p) for p in paths)}",
        f"logger.group=kfold-{folder.name}",
        *overrides,
        # last, over any saved in an older kfold.json: the folds go where resume and the
        # summary look for them
        f"hydra.sweep.dir={folder}",
        "hydra.sweep.subdir=fold_${hydra.job.num}",
    ]
    try:
        run_app(fold_job, folds)
    except (SystemExit, KeyboardInterrupt) as stop:  # interrupted, or bad input in a fold
        code = stop.code if isinstance(stop, SystemExit) else 130
        if code in (0, None):
            raise
        states = fold_states(folder, k)
        write_text_atomic(folder / STATUS_FILE, json.dumps(states, indent=1) + "\n")
        raise KFoldStopped(folder, states, code if isinstance(code, int) else 1) from None
    states = fold_states(folder, k)
    write_text_atomic(folder / STATUS_FILE, json.dumps(states, indent=1) + "\n")
    result = KFoldResult(folder, k, states, None)
    if result.failed < k:
        try:
            result.summary = report(folder, k, config)
        except DataError as err:
            result.summary_error = str(err)
    return result
