"""Cross-validated trials (``cv.k=K``): every trial of a sweep is a K-fold cross-validation
of its configuration, and its objective is the mean of the folds' objective.

The folds are drawn once per study, from the study's base config (the fixed overrides, no
searched value), under the lock that serialises study creation, and kept in the study
itself, so that every worker on every machine and every resumed run trains on the same
folds; each sweep folder holds them as ``splits/folds.json`` and ``splits/fold_<i>.json``.

A trial trains its folds into ``<trial>/fold_<i>/`` (normal run folders), reports the
running mean of the objective after each fold but the last (the pruner can stop a weak
trial after its first folds), and writes ``summary.json`` (per-fold values, mean and std).
On a SLURM cluster every fold is a job of its own (``cv.fold``), which the sweeper
launches, reports and summarises.
Finished folds are skipped and interrupted ones continue from their checkpoint; a trial
that retries a failed one (same parameters: a grid point run again) takes over its folds.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nca_cli.compute import placed_device
from nca_cli.config import ConfigError
from nca_cli.sweeping.retry import failed_attempts, same_run, take_over
from nca_cli.sweeping.study import creation_lock, objective_value, storage_url

if TYPE_CHECKING:
    import optuna

    from nca_cli.sweeping.trial import Evaluate, Report

log = logging.getLogger("nca.sweep")

SPLITS_DIR = "splits"  # in the sweep folder
STUDY_ATTR = "cv"  # the study's user attribute holding k, the folds and the test split


# -- the study: one split for every trial ---------------------------------------------------
def study_folds(
    study: optuna.Study,
    url: str,
    sweep_dir: Path,
    base: dict[str, Any],
    k: int | None,
    splits: str | None,
) -> int | None:
    """The study's number of folds (None: its trials are single runs), after drawing its
    folds (first run) or checking them against this run's settings and data (later runs,
    other workers), and writing them to ``<sweep dir>/splits/``."""
    from nca_cli.crossval.folds import CasePool, case_pool, load_folds, make_folds
    from nca_cli.datasets.storage import DataError

    pool: CasePool | None = None
    try:
        with creation_lock(url):
            stored = study.user_attrs.get(STUDY_ATTR)
            if stored is None:
                if k is None:
                    return None
                if study.trials:
                    raise ConfigError(
                        f"study {study.study_name!r} has trials that are single runs; "
                        "cross-validated trials need a study of their own (study=<new name>)"
                    )
                pool = case_pool(base)
                if splits:
                    folds = load_folds(Path(splits), set(pool.cases) | set(pool.test))
                else:
                    folds = make_folds(pool.cases, k, pool.seed, pool.labels)
                if len(folds) != k:
                    raise ConfigError(
                        f"invalid value for 'cv.k': {k}; {splits} holds {len(folds)} folds"
                    )
                stored = {"k": k, "folds": folds, "test": pool.test}
                study.set_user_attr(STUDY_ATTR, stored)
        if k is not None and k != stored["k"]:
            raise ConfigError(
                f"invalid value for 'cv.k': {k}; study {study.study_name!r} cross-validates "
                f"with cv.k={stored['k']} (or name a new study)"
            )
        if splits and load_folds(Path(splits), _cases(stored)) != stored["folds"]:
            raise ConfigError(
                f"invalid value for 'cv.splits': {splits} is not the split of study "
                f"{study.study_name!r} (its folds are in {sweep_dir / SPLITS_DIR})"
            )
        pool = pool or case_pool(base)
        unknown = sorted(_cases(stored) - set(pool.cases) - set(pool.test))
        if unknown:
            raise ConfigError(
                f"the folds of study {study.study_name!r} name cases that the task no longer "
                f"has ({', '.join(unknown[:3])}, ...): its data settings changed since the "
                "study began; run it with the same ones, or name a new study"
            )
    except DataError as err:
        raise ConfigError(str(err)) from None
    write_split_files(sweep_dir / SPLITS_DIR, stored["folds"], stored["test"])
    return int(stored["k"])


def _cases(stored: Mapping[str, Any]) -> set[str]:
    return {c for fold in stored["folds"] for c in fold["train"] + fold["val"]}


def write_split_files(folder: Path, folds: list[dict[str, list[str]]], test: list[str]) -> None:
    """``folds.json`` and ``fold_<i>.json`` unless they already hold exactly these folds
    (another worker wrote them): files that trials are reading are not replaced."""
    from nca_cli.crossval.folds import FOLDS_FILE, write_folds

    try:
        same = json.loads((folder / FOLDS_FILE).read_text()) == folds and all(
            json.loads((folder / f"fold_{i}.json").read_text())
            == {"train": fold["train"], "val": fold["val"], "test": list(test)}
            for i, fold in enumerate(folds)
        )
    except (OSError, ValueError):
        same = False
    if not same:
        write_folds(folder, folds, test)


def split_file(sweep_dir: Path, fold: int) -> Path:
    return (sweep_dir / SPLITS_DIR / f"fold_{fold}.json").resolve()


# -- the sweeper's view of a finished trial -------------------------------------------------
def trial_summary(run_dir: Path, metric: str) -> tuple[dict[str, float], dict[str, Any]] | None:
    """A finished cross-validated trial's mean metrics and its user attributes (``std`` and
    ``fold_values`` of the objective), from its ``summary.json``; None when unfinished."""
    from nca_cli.crossval.folds import SUMMARY_FILE

    try:
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    metrics = summary["metrics"]
    means = {name: float(m["mean"]) for name, m in metrics.items()}
    attrs: dict[str, Any] = {}
    if metric in metrics:
        attrs = {"std": metrics[metric]["std"], "fold_values": metrics[metric]["values"]}
    return means, attrs


# -- the trial: a k-fold of its configuration ---------------------------------------------
@dataclass(frozen=True)
class FoldPlan:
    """What a cross-validated trial needs besides its config (from ``hydra.sweeper``)."""

    k: int
    n_jobs: int
    metric: str
    sweep_dir: Path
    storage: str
    study_name: str
    trial: int


def fold_evaluator(hydra_cfg: Any) -> Evaluate | None:
    """The job's evaluation for a cross-validated sweep (None otherwise): a function with
    the signature of :func:`nca_cli.training.trainer.train` for ``run_trial``."""
    sweeper = hydra_cfg.get("sweeper")
    if sweeper is None or sweeper.get("trial") is None:
        return None
    cv = sweeper.get("cv") or {}
    if cv.get("k") is None:
        return None
    sweep_dir = Path(str(hydra_cfg.sweep.dir))
    plan = FoldPlan(
        k=int(cv.k),
        n_jobs=max(1, int(cv.get("n_jobs") or 1)),
        metric=str(sweeper.metric),
        sweep_dir=sweep_dir,
        storage=storage_url(sweeper.storage, sweep_dir),
        study_name=str(sweeper.study_name),
        trial=int(sweeper.trial),
    )
    if cv.get("fold") is not None:
        return partial(evaluate_fold, plan=plan, fold=int(cv.fold))
    return partial(evaluate_folds, plan=plan)


def evaluate_folds(
    config: dict[str, Any],
    run_dir: Path,
    checkpoint: dict[str, Any] | None = None,
    report: Report | None = None,
    *,
    plan: FoldPlan,
) -> dict[str, float]:
    """Train the k folds of ``config`` into ``run_dir/fold_<i>/`` (``n_jobs`` at a time),
    report the running mean of the objective after each fold but the last, and return the
    mean of every metric over the folds (``summary.json`` has the rest)."""
    del checkpoint  # the folds keep their own checkpoints
    configs = [fold_config(config, i, plan) for i in range(plan.k)]
    take_over_folds(run_dir, dict(enumerate(configs)), plan)
    values: list[float] = []
    for start in range(0, plan.k, plan.n_jobs):
        batch = list(range(start, min(start + plan.n_jobs, plan.k)))
        results = run_folds([(configs[i], run_dir / f"fold_{i}") for i in batch])
        for i, metrics in zip(batch, results, strict=True):
            values.append(objective_value(metrics, plan.metric))
            log.info("trial %d fold %d: %s %.6g", plan.trial, i, plan.metric, values[-1])
            if report is not None and i < plan.k - 1:  # after the last: the objective
                report(i, {plan.metric: sum(values) / len(values)})
    return finish_folds(run_dir, config, plan)


def evaluate_fold(
    config: dict[str, Any],
    run_dir: Path,
    checkpoint: dict[str, Any] | None = None,
    report: Report | None = None,
    *,
    plan: FoldPlan,
    fold: int,
) -> dict[str, float]:
    """Fold ``fold`` of a trial as a job of its own, in ``run_dir`` (``<trial>/fold_<i>/``);
    the sweeper reports the folds' mean and summarises them (:func:`finish_folds`)."""
    del checkpoint, report
    config = fold_config(config, fold, plan)
    take_over_folds(run_dir.parent, {fold: config}, plan)
    return run_fold(config, run_dir)


def finish_folds(run_dir: Path, config: dict[str, Any], plan: FoldPlan) -> dict[str, float]:
    """``summary.json``, the plot and the W&B summary of a trial whose folds have all
    finished; the mean of every metric over the folds."""
    from nca_cli.crossval.folds import log_fold_summary, plot_folds, summarize

    summary = summarize(run_dir, plan.k)
    plot_folds(run_dir / "folds.png", summary)
    group = fold_config(config, 0, plan)["logger"]["group"]
    log_fold_summary(run_dir, summary, config, group=group)
    return {name: m["mean"] for name, m in summary["metrics"].items()}


def fold_config(config: dict[str, Any], fold: int, plan: FoldPlan) -> dict[str, Any]:
    """The trial's config on fold ``fold`` of the study, in W&B group ``<study>/<trial>``
    (``<logger.group>/<trial>`` when the group was chosen), with its share of the threads
    when folds run in parallel."""
    out = copy.deepcopy(config)
    out["dataset"]["splits"] = str(split_file(plan.sweep_dir, fold))
    group = out["logger"].get("group") or plan.study_name
    out["logger"]["group"] = f"{group}/{plan.trial}"
    if plan.n_jobs > 1:
        out["threads"] = max(1, (out.get("threads") or os.cpu_count() or 1) // plan.n_jobs)
        out["device"] = placed_device(out["device"], fold)  # parallel folds share the GPUs
    return out


def run_folds(jobs: list[tuple[dict[str, Any], Path]]) -> list[dict[str, float]]:
    """Train the folds, in this process when there is one, else in joblib processes."""
    if len(jobs) == 1:
        return [run_fold(*jobs[0])]
    from joblib import Parallel, delayed

    return list(Parallel(n_jobs=len(jobs), backend="loky")(delayed(run_fold)(*j) for j in jobs))


def run_fold(config: dict[str, Any], fold_dir: Path) -> dict[str, float]:
    """One fold as a normal run (its own ``train.log``); a finished fold is not trained
    again and an interrupted one continues from its last checkpoint. Returns the fold's
    ``metrics.json``, what its summary is made of."""
    from nca_cli.training.run_folder import finished_metrics, logging_to, train_in_folder

    with logging_to(fold_dir):
        metrics = dict(train_in_folder(config, fold_dir))
        return finished_metrics(fold_dir) or metrics


def take_over_folds(run_dir: Path, configs: dict[int, dict[str, Any]], plan: FoldPlan) -> None:
    """Move into ``run_dir`` the finished or interrupted folds of earlier failed trials with
    the same parameters (a killed sweep's trial, retried), when their configs match; a
    fold's folder may already hold its job's Hydra record, not yet a run."""
    missing = [
        i
        for i in configs
        if not (run_dir / f"fold_{i}" / "last.ckpt").is_file()
        and not (run_dir / f"fold_{i}" / "metrics.json").is_file()
    ]
    if not missing:
        return
    earlier = failed_attempts(plan.storage, plan.study_name, plan.trial)
    for i in missing:
        for number in earlier:
            source = plan.sweep_dir / str(number) / f"fold_{i}"
            if same_run(source, configs[i]) and take_over(source, run_dir / f"fold_{i}"):
                log.info("fold %d: taken over from failed trial %d", i, number)
                break
