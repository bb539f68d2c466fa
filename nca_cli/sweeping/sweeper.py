"""The Optuna sweeper: asks the study for trials, launches them through the configured
Hydra launcher (in this process, ``joblib`` for local parallel jobs, ``submitit_slurm`` for
a cluster), and tells the study how each one ended. ``n_jobs`` workers each start the next
trial as soon as their own has ended, so no trial waits for a slower one.

A trial is an ordinary training run in ``<sweep dir>/<trial number>/``; its job receives
``hydra.sweeper.trial`` so that it can report intermediate values (and be pruned) itself.
A trial that raises, diverges, returns no objective or whose worker dies is recorded as
failed with its error, and the sweep goes on. Grids are searched in order, skipping points
that are done, so running a grid again resumes it. With ``cv.k`` every trial is a k-fold of
its configuration on the study's one split (:mod:`nca_cli.sweeping.cv`).
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import shlex
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.utils import JobReturn, JobStatus, configure_log
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from nca_cli.config import ConfigError
from nca_cli.sweeping.cv import SPLITS_DIR, study_folds, trial_summary
from nca_cli.sweeping.space import Dimension, format_value, split_arguments
from nca_cli.sweeping.study import (
    DIRECTIONS,
    PRUNERS,
    SAMPLERS,
    create_study,
    make_pruner,
    masked,
    objective_value,
    storage_url,
    write_study_file,
)

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("nca.sweep")

DEFAULT_TRIALS = 20


class OptunaSweeper(Sweeper):
    """Hydra sweeper over an Optuna study; see :class:`~nca_cli.sweeping.config.SweeperConf`."""

    def __init__(
        self,
        *,
        study_name: str | None = None,
        storage: str | None = None,
        metric: str | None = None,
        direction: str | None = None,
        intermediate: str = "loss",
        intermediate_direction: str = "minimize",
        sampler: str = "auto",
        pruner: Any = None,
        n_trials: int | None = None,
        n_jobs: int | None = None,
        seed: int | None = None,
        heartbeat: int = 60,
        params: Any = None,
        trial: int | None = None,
        cv: Any = None,
    ) -> None:
        self.study_name = study_name
        self.storage = storage
        self.metric = metric or ""
        self.direction = direction or ""
        self.intermediate = intermediate
        self.intermediate_direction = intermediate_direction
        self.sampler = sampler
        pruner = pruner or {}
        self.pruner = (
            str(pruner.get("name", "median")),
            int(pruner.get("startup_trials", 4)),
            int(pruner.get("warmup_steps", 0)),
        )
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        cv = cv or {}
        # cv.k: every trial is a k-fold (see nca_cli.sweeping.cv); a resumed study keeps its k
        self.cv_k: int | None = cv.get("k")
        self.cv_splits: str | None = cv.get("splits")
        self.cv_jobs = int(cv.get("n_jobs") or 1)
        self.base: dict[str, Any] = {}  # the training config of the fixed overrides
        self.seed = seed
        self.heartbeat = heartbeat
        self.params: dict[str, Any] = (
            OmegaConf.to_container(params) if isinstance(params, DictConfig) else dict(params or {})  # type: ignore[assignment]
        )
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None
        self.sweep_dir = Path(".")
        self.job_idx = 0
        self.tried: set[tuple[Any, ...]] = set()  # grid points asked by this invocation

    # -- Hydra's interface ---------------------------------------------------------------
    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.hydra_context = hydra_context
        try:
            refuse_output_overrides([str(o) for o in config.hydra.overrides.hydra])
        except ConfigError as err:
            print(f"nca sweep: error: {err}", file=sys.stderr)
            sys.exit(2)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        chosen = any(str(o).startswith("hydra.sweep.dir=") for o in config.hydra.overrides.hydra)
        if self.study_name and not chosen:
            sweep_dir = sweep_dir.parent / self.study_name  # named studies resume in place
        self.study_name = self.study_name or sweep_dir.name
        self.sweep_dir = sweep_dir
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = str(sweep_dir)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list[JobReturn]:
        try:
            return self._sweep(arguments)
        except ConfigError as err:
            print(f"nca sweep: error: {err}", file=sys.stderr)
            sys.exit(2)

    # -- the loop ------------------------------------------------------------------------
    def _sweep(self, arguments: list[str]) -> list[JobReturn]:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Trials are asked here and beat from here while Hydra's launcher runs them.
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        assert self.config is not None and self.study_name
        from nca_cli.composition import check_group_overrides

        check_group_overrides(list(arguments))
        dims, fixed = split_arguments(self.params, arguments)
        if not dims:
            raise ConfigError(
                "nothing to search: give values to try (fire_rate=0.3,0.5,0.7, "
                "lr='tag(log, interval(1e-4, 1e-2))') or a preset (search=<name>)"
            )
        task_metric, task_direction = self._check_composes(dims, fixed)
        if not self.direction and self.metric not in ("", task_metric):
            raise ConfigError(
                f"give the direction of metric {self.metric!r}: direction=minimize or "
                "direction=maximize (only the task's own objective has a default)"
            )
        self.metric = self.metric or task_metric
        self.direction = self.direction or task_direction
        self._check_settings()
        grid = self.sampler == "grid" or (
            self.sampler == "auto" and all(d.grid is not None for d in dims)
        )
        if grid and any(d.grid is None for d in dims):
            names = ", ".join(d.name for d in dims if d.grid is None)
            raise ConfigError(
                f"sampler=grid needs finite dimensions (choice or range); {names} "
                "is an interval: use sampler=tpe or sampler=random"
            )
        url = storage_url(self.storage, self.sweep_dir)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        study, storage = create_study(
            url,
            self.study_name,
            self.direction,
            sampler=None,
            pruner=make_pruner(*self.pruner),
            heartbeat=self.heartbeat,
        )
        if self.heartbeat > 0:  # trials of a killed sweep on this study: failed
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        self.cv_k = study_folds(study, url, self.sweep_dir, self.base, self.cv_k, self.cv_splits)
        seed = self._sampler_seed(study)
        study.sampler = self._make_sampler(grid, seed)
        study.set_user_attr("metric", self.metric)
        write_study_file(
            self.sweep_dir,
            {
                "study_name": self.study_name,
                "storage": masked(url),
                "metric": self.metric,
                "direction": self.direction,
            },
        )
        parallel = self._parallelism()
        names = [d.name for d in dims]
        folds = ""
        if self.cv_k:
            folds = f" (mean of {self.cv_k} folds, split in {self.sweep_dir / SPLITS_DIR})"
        print(
            f"nca sweep: study {self.study_name!r} ({'grid' if grid else self._sampler_name()}, "
            f"sampler seed {seed}) over {', '.join(names)}; {self.direction} {self.metric}{folds}; "
            f"storage {masked(url)}; {parallel} trial(s) at a time; trials in {self.sweep_dir}"
        )
        if grid:
            points = list(itertools.product(*(d.values for d in dims)))
            budget = len(points) if self.n_trials is None else self.n_trials
        else:
            points = []
            budget = DEFAULT_TRIALS if self.n_trials is None else self.n_trials

        workers = _Workers(budget)
        try:
            self._run_workers(study, storage, dims, fixed, points, parallel, workers)
        except KeyboardInterrupt:
            self._interrupt(study, workers)
            self._write_table(study)
            print(f"nca sweep: interrupted; resume with:\n  {self._again()}", file=sys.stderr)
            sys.exit(130)
        self._finish(study, workers, grid, points)
        return workers.returns

    def _check_settings(self) -> None:
        from nca_cli.config import choice

        choice(self.sampler, list(SAMPLERS), "hydra.sweeper.sampler")
        choice(self.direction, list(DIRECTIONS), "hydra.sweeper.direction")
        choice(
            self.intermediate_direction, list(DIRECTIONS), "hydra.sweeper.intermediate_direction"
        )
        choice(self.pruner[0], list(PRUNERS), "hydra.sweeper.pruner.name")
        for key, value in (("n_trials", self.n_trials), ("n_jobs", self.n_jobs)):
            if value is not None and value < (0 if key == "n_trials" else 1):
                raise ConfigError(f"invalid value for 'hydra.sweeper.{key}': {value}")
        if self.cv_k is not None and self.cv_k < 2:
            raise ConfigError(f"invalid value for 'cv.k': {self.cv_k}; at least 2 folds")
        if self.cv_jobs < 1:
            raise ConfigError(f"invalid value for 'cv.n_jobs': {self.cv_jobs}")

    def _check_composes(self, dims: Sequence[Dimension], fixed: list[str]) -> tuple[str, str]:
        """Fail before any trial on a typo: the fixed overrides must give a valid training
        config, and every searched key (each choice, each end of an interval) must compose.
        Every value is checked as ``nca train`` checks its config (parsed by its owners, read
        by the run). Returns the task's objective (metric, direction), the default of the
        search."""
        from nca_cli.tasks import task_of
        from nca_cli.training.checks import check_config

        self.base = self._training_config(fixed)
        try:
            run = check_config(self.base, fixed)
        except ConfigError as err:
            raise ConfigError(f"the fixed overrides: {err}") from None
        objective = task_of(run).objective
        for point in _check_points(dims):
            overrides = [dim.override(value) for dim, value in zip(dims, point, strict=True)]
            where = " ".join(overrides)
            try:
                check_config(self._training_config([*fixed, *overrides], where), overrides)
            except ConfigError as err:
                raise ConfigError(f"the searched point {where}: {err}") from None
        return objective

    def _training_config(self, overrides: list[str], where: str = "the fixed overrides") -> dict:
        """The training config that ``overrides`` compose, without Hydra's own section."""
        from hydra.errors import HydraException

        from nca_cli.composition import resolve

        assert self.hydra_context is not None and self.config is not None
        try:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        except HydraException as err:
            raise ConfigError(f"{where}: {str(err).strip().splitlines()[0]}") from None
        with read_write(cfg), open_dict(cfg):
            del cfg["hydra"]
        return resolve(cfg)

    def _sampler_seed(self, study: optuna.Study) -> int:
        """A new seed per invocation, so a resumed study does not repeat its start-up
        points: the configured seed plus the trials already in the study, or random."""
        if self.seed is None:
            return secrets.randbelow(2**31)
        return self.seed + len(study.trials)

    def _sampler_name(self) -> str:
        return "tpe" if self.sampler == "auto" else self.sampler

    def _make_sampler(self, grid: bool, seed: int) -> optuna.samplers.BaseSampler:
        import optuna

        if grid or self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)  # a grid enqueues its points
        with warnings.catch_warnings():  # constant_liar: parallel trials spread out
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True)

    def _parallelism(self) -> int:
        if self.n_jobs is not None:
            return self.n_jobs
        assert self.config is not None
        launcher = self.config.hydra.launcher
        jobs = launcher.get("n_jobs", None)
        if jobs is not None:
            jobs = int(jobs)
            return (os.cpu_count() or 1) if jobs < 0 else max(jobs, 1)
        return int(launcher.get("array_parallelism", None) or 1)

    def _job_overrides(self, number: int, parallel: int, fixed: list[str]) -> list[str]:
        """What every job gets besides its parameters: its folder, its trial, the W&B group
        and, for local parallel jobs, a share of the CPU threads."""
        assert self.config is not None
        keys = {line.split("=", 1)[0].lstrip("+~") for line in fixed}
        extra = [
            f"hydra.sweep.dir={format_value(str(self.sweep_dir))}",
            f"hydra.sweep.subdir={number}",
            f"hydra.sweeper.study_name={format_value(self.study_name)}",
            f"hydra.sweeper.trial={number}",
        ]
        if "logger.group" not in keys:
            extra.append(f"logger.group={format_value(self.study_name)}")
        if self.cv_k:  # the trial reports the running fold mean of the objective
            extra += [
                f"hydra.sweeper.cv.k={self.cv_k}",
                f"hydra.sweeper.metric={format_value(self.metric)}",
                f"hydra.sweeper.intermediate={format_value(self.metric)}",
                f"hydra.sweeper.intermediate_direction={self.direction}",
            ]
        local = self.config.hydra.launcher.get("n_jobs", None) is not None
        if local and parallel > 1 and "threads" not in keys:
            extra.append(f"threads={max(1, (os.cpu_count() or 1) // parallel)}")
        return extra

    def _ask(
        self,
        study: optuna.Study,
        dims: Sequence[Dimension],
        fixed: list[str],
        points: list[tuple[Any, ...]],
        parallel: int,
    ) -> tuple[optuna.Trial, list[str] | None] | None:
        """The next trial with its overrides (None when the grid is done); on a grid, the
        next point that no trial has finished or is running (points that failed before are
        tried again, once per invocation). A trial whose config does not compose comes
        without overrides, already recorded failed."""
        from hydra.errors import HydraException

        assert self.hydra_context is not None and self.config is not None
        grid = bool(points)
        distributions = {d.name: d.distribution(grid) for d in dims}
        if grid:
            point = self._next_point(study, dims, points, self.tried)
            if point is None:
                return None
            self.tried.add(point)
            study.enqueue_trial(dict(zip(distributions, point, strict=True)))
        trial = study.ask(distributions)
        trial.set_user_attr("run_dir", str((self.sweep_dir / str(trial.number)).resolve()))
        if self.cv_k:
            trial.set_user_attr("cv_k", self.cv_k)
        overrides = [
            *fixed,
            *(d.override(trial.params[d.name]) for d in dims),
            *self._job_overrides(trial.number, parallel, fixed),
        ]
        try:
            self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        except HydraException as err:
            self._fail(study, trial, f"the config does not compose: {err}")
            return trial, None
        params = " ".join(d.override(trial.params[d.name]) for d in dims)
        print(f"[trial {trial.number}] {params}")
        return trial, overrides

    @staticmethod
    def _next_point(
        study: optuna.Study,
        dims: Sequence[Dimension],
        points: list[tuple[Any, ...]],
        tried: set[tuple[Any, ...]],
    ) -> tuple[Any, ...] | None:
        from optuna.trial import TrialState

        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        taken = set(tried)
        for trial in study.get_trials(deepcopy=False, states=states):
            if all(d.name in trial.params for d in dims):
                taken.add(tuple(trial.params[d.name] for d in dims))
        return next((p for p in points if p not in taken), None)

    def _run_workers(
        self,
        study: optuna.Study,
        storage: optuna.storages.RDBStorage,
        dims: Sequence[Dimension],
        fixed: list[str],
        points: list[tuple[Any, ...]],
        parallel: int,
        workers: _Workers,
    ) -> None:
        """Keep ``parallel`` trials running: each worker asks for the next trial as soon as
        its own has ended, so no trial waits for a slower one. Trials that run in this
        process (Hydra's basic launcher) go one at a time in this thread, where Ctrl-C
        reaches them; the others each wait for their job (a joblib process, a SLURM job)
        in a thread of their own."""
        study_id = storage.get_study_id_from_name(study.study_name)

        def work() -> None:
            while True:
                with workers.lock:
                    if workers.stopping or workers.started >= workers.budget:
                        return
                    asked = self._ask(study, dims, fixed, points, parallel)
                    if asked is None:
                        return
                    trial, overrides = asked
                    workers.started += 1
                    if overrides is None:  # recorded failed: it does not compose
                        workers.ends.append("failed")
                        continue
                    workers.running[trial.number] = (
                        trial,
                        storage.get_trial_id_from_study_id_trial_number(study_id, trial.number),
                    )
                    index = self.job_idx
                    folds = self._fold_jobs()
                    self.job_idx += folds or 1
                result: JobReturn | None = None
                launch_error = ""
                try:
                    if folds:
                        result = self._launch_folds(trial, overrides, index, workers.lock)
                    else:
                        result = self._launch([overrides], index)[0]
                except _LauncherFailed as failed:
                    launch_error = str(failed)
                with workers.lock:
                    ran = workers.running.pop(trial.number, None)
                    if ran is None:
                        return  # the sweep was interrupted and has recorded it
                    if result is None:  # the launcher failed: judge it from its folder
                        end = self._recover(study, trial, launch_error)
                    else:
                        job = storage.get_trial(ran[1]).user_attrs.get("slurm_job")
                        end = self._tell(study, trial, result, job)
                        workers.returns.append(result)
                    workers.ends.append(end)
                    self._write_table(study)

        def guarded() -> None:
            try:
                work()
            except BaseException as err:  # raised again by the main thread
                with workers.lock:
                    workers.errors.append(err)
                    workers.stopping = True

        with _heartbeats(storage, workers, self.heartbeat):
            if self._in_process() or parallel == 1:
                work()
                return
            threads = [
                threading.Thread(target=guarded, name=f"nca-sweep-worker-{i}", daemon=True)
                for i in range(parallel)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
        if workers.errors:
            raise workers.errors[0]

    def _launch(self, jobs: list[list[str]], index: int) -> list[JobReturn]:
        """Run jobs (a trial, or folds of one): their results; raises ``_LauncherFailed``
        when the launcher itself failed (a killed worker process)."""
        assert self.config is not None
        try:
            return list(self.launcher.launch(jobs, initial_job_idx=index))
        except Exception as err:
            if _slurm_state(err):  # SLURM ended a job before it wrote a result
                return [JobReturn(status=JobStatus.FAILED, _return_value=err) for _ in jobs]
            print(f"nca sweep: the launcher failed: {type(err).__name__}: {err}", file=sys.stderr)
            raise _LauncherFailed(f"{type(err).__name__}: {err}") from err
        finally:
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)

    def _fold_jobs(self) -> int:
        """How many jobs a trial is: on a SLURM cluster every fold of a cross-validated
        trial is a job of its own; elsewhere a trial is one job that trains its folds."""
        return (self.cv_k or 0) if self._on_slurm() else 0

    def _launch_folds(
        self, trial: optuna.Trial, overrides: list[str], index: int, lock: threading.Lock
    ) -> JobReturn:
        """Run a cross-validated trial as one job per fold (``cv.n_jobs`` folds at a time),
        reporting the running mean of the objective after each batch of folds but the last
        (the pruner may stop the trial there); the trial's result is the folds' summary,
        or the first failed fold's."""
        import optuna

        from nca_cli.sweeping.cv import FoldPlan, finish_folds

        assert self.cv_k is not None
        run_dir = self.sweep_dir / str(trial.number)
        subdir = f"hydra.sweep.subdir={trial.number}"
        plan = FoldPlan(
            k=self.cv_k,
            n_jobs=self.cv_jobs,
            metric=self.metric,
            sweep_dir=self.sweep_dir,
            storage=storage_url(self.storage, self.sweep_dir),
            study_name=str(self.study_name),
            trial=trial.number,
        )
        values: list[float] = []
        for start in range(0, plan.k, plan.n_jobs):
            batch = range(start, min(start + plan.n_jobs, plan.k))
            jobs = [
                [
                    *(f"{subdir}/fold_{i}" if o == subdir else o for o in overrides),
                    f"hydra.sweeper.cv.fold={i}",
                ]
                for i in batch
            ]
            results = self._launch(jobs, index + start)
            for i, result in zip(batch, results, strict=True):
                if result.status != JobStatus.COMPLETED:
                    return result
                try:
                    values.append(objective_value(result.return_value, self.metric))
                except (TypeError, ValueError) as err:
                    return JobReturn(status=JobStatus.FAILED, _return_value=err)
                log.info("trial %d fold %d: %s %.6g", trial.number, i, self.metric, values[-1])
            if batch[-1] < plan.k - 1:
                mean = sum(values) / len(values)
                trial.report(mean, batch[-1])
                if trial.should_prune():
                    pruned = optuna.TrialPruned(f"after fold {batch[-1]}: mean {mean:.6g}")
                    return JobReturn(status=JobStatus.FAILED, _return_value=pruned)
        with lock:  # composing is not shared between threads
            config = self._training_config(overrides)
        metrics = finish_folds(run_dir, config, plan)
        return JobReturn(status=JobStatus.COMPLETED, _return_value=metrics)

    def _interrupt(self, study: optuna.Study, workers: _Workers) -> None:
        """Ctrl-C: the running trials are recorded failed, their SLURM jobs cancelled, and
        local trial processes asked to stop (each saves its checkpoint first)."""
        import multiprocessing
        import signal

        with workers.lock:
            workers.stopping = True
            running = [trial for trial, _ in workers.running.values()]
            workers.running.clear()
            for trial in running:
                self._fail(study, trial, "interrupted (Ctrl-C)")
        from nca_cli.sweeping.slurm import cancel

        cancelled = cancel(self._cluster_jobs())
        if cancelled:
            print(f"nca sweep: {cancelled}", file=sys.stderr)
        if self._in_process() or self._on_slurm():
            return
        for child in multiprocessing.active_children():  # joblib's trial processes
            if child.pid is not None:
                os.kill(child.pid, signal.SIGINT)

    def _cluster_jobs(self) -> set[str]:
        """The queued and running SLURM jobs this sweep process has submitted: those in its
        own submitit folder (see conf/hydra/launcher/slurm.yaml) that ``squeue`` still
        lists; none for a launcher that is not SLURM's."""
        from nca_cli.sweeping.slurm import queued

        if not self._on_slurm():
            return set()
        folder = Path(str(self.launcher.params["submitit_folder"])).parent
        return queued({p.name.split("_")[0] for p in folder.glob("*") if p.name[:1].isdigit()})

    def _tell(
        self, study: optuna.Study, trial: optuna.Trial, result: JobReturn, job: str | None
    ) -> str:
        """Record how a trial ended: complete, pruned or failed (``job``: the SLURM job that
        ran it, which the trial recorded, for the reason of a stopped job)."""
        import optuna
        from optuna.trial import TrialState

        from nca_cli.training.interrupts import Interrupted

        value = result._return_value
        if result.status == JobStatus.COMPLETED:
            try:
                objective = objective_value(value, self.metric)
            except (TypeError, ValueError) as err:
                self._fail(study, trial, str(err))
                return "failed"
            trial.set_user_attr("metrics", _numbers(value))
            spread = self._fold_attrs(trial)
            study.tell(trial, objective)
            print(f"[trial {trial.number}] complete: {self.metric} {objective:.6g}{spread}")
            return "complete"
        if isinstance(value, optuna.TrialPruned):
            study.tell(trial, state=TrialState.PRUNED)
            print(f"[trial {trial.number}] pruned: {value}")
            return "pruned"
        if isinstance(value, Interrupted) and not self._in_process():
            # SIGTERM reached a trial's own job: cancelled, over its time limit, preempted
            stopped = str(value).split(" Resume with")[0].rstrip(".")
            self._fail(
                study,
                trial,
                f"{_stopped_job(job)}: {stopped}; running the study again continues it",
            )
            return "failed"
        state = _slurm_state(value)
        if state and state != "TIMEOUT":
            self._fail(
                study,
                trial,
                f"its SLURM job{f' {job}' if job else ''} ended {state} before it wrote a "
                f"result (submitit: {value}); {self._continues(trial)}",
            )
            return "failed"
        if state:
            assert self.config is not None
            limit = self.config.hydra.launcher.get("timeout_min")
            self._fail(
                study,
                trial,
                f"its job{f' {job}' if job else ''} reached its time limit "
                f"(hydra.launcher.timeout_min={limit}; submitit: {value}); "
                f"{self._continues(trial)}",
            )
            return "failed"
        self._fail(study, trial, f"{type(value).__name__}: {value}")
        if isinstance(value, Interrupted):  # Ctrl-C inside an in-process trial
            raise KeyboardInterrupt
        return "failed"

    def _continues(self, trial: optuna.Trial) -> str:
        """What running the study again does for a trial whose job was ended from outside:
        continue from its checkpoint, or start afresh when it stopped before its first."""
        from nca_cli.training.checkpoint import CHECKPOINT_NAME

        if any((self.sweep_dir / str(trial.number)).rglob(CHECKPOINT_NAME)):
            return "running the study again continues it from its last checkpoint"
        return (
            "it stopped before its first checkpoint (trainer.checkpoint_every); running the "
            "study again starts it afresh"
        )

    def _in_process(self) -> bool:
        """Whether trials run in this process (Hydra's basic launcher), where a trial's
        Ctrl-C is the sweep's own."""
        return type(self.launcher).__name__ == "BasicLauncher"

    def _on_slurm(self) -> bool:
        """Whether trials are SLURM jobs (submitit's SLURM launcher)."""
        return type(self.launcher).__name__ == "SlurmLauncher"

    def _fail(self, study: optuna.Study, trial: optuna.Trial, error: str) -> None:
        from optuna.trial import TrialState

        error = " ".join(error.split())  # one line; tracebacks are in the trial's error.txt
        error = error if len(error) <= 300 else error[:299] + "…"
        trial.set_user_attr("error", error)
        study.tell(trial, state=TrialState.FAIL)
        print(f"[trial {trial.number}] failed: {error}", file=sys.stderr)

    def _recover(self, study: optuna.Study, trial: optuna.Trial, launch_error: str) -> str:
        """A trial whose job result was lost counts as complete if its run finished (its
        folder holds the final metrics); else failed."""
        import json

        run_dir = self.sweep_dir / str(trial.number)
        try:
            if self.cv_k:  # a cross-validated trial has finished when its summary exists
                metrics = (trial_summary(run_dir, self.metric) or ({}, {}))[0]
            else:
                metrics = json.loads((run_dir / "metrics.json").read_text())
            objective = objective_value(metrics, self.metric)
        except (OSError, ValueError):
            self._fail(study, trial, launch_error)
            return "failed"
        trial.set_user_attr("metrics", _numbers(metrics))
        spread = self._fold_attrs(trial)
        study.tell(trial, objective)
        print(
            f"[trial {trial.number}] complete (from its folder): {self.metric} "
            f"{objective:.6g}{spread}"
        )
        return "complete"

    def _fold_attrs(self, trial: optuna.Trial) -> str:
        """For a cross-validated trial: its std and per-fold objective as user attributes
        (from its summary.json), and `` ± std`` to print."""
        if not self.cv_k:
            return ""
        found = trial_summary(self.sweep_dir / str(trial.number), self.metric)
        if found is None or not found[1]:
            return ""
        for key, value in found[1].items():
            trial.set_user_attr(key, value)
        return f" ± {found[1]['std']:.2g} over {self.cv_k} folds"

    def _again(self) -> str:
        """The command that resumes this study."""
        assert self.config is not None
        given = [*self.config.hydra.overrides.hydra, *self.config.hydra.overrides.task]
        again = [_shorthand(str(a)) for a in given if not str(a).startswith("hydra.mode=")]
        if not any(a.startswith("study=") for a in again):
            again.append(f"study={self.study_name}")
        from nca_cli.masking import mask_text  # a password is never printed

        return mask_text("nca sweep " + " ".join(shlex.quote(a) for a in again))

    def _write_table(self, study: optuna.Study) -> None:
        from nca_cli.sweeping.summary import write_csv

        write_csv(study, self.sweep_dir / "trials.csv", self.metric)

    def _finish(
        self, study: optuna.Study, workers: _Workers, grid: bool, points: list[Any]
    ) -> None:
        """The table, the resume command, and the exit status: 1 when a trial of this run
        failed (the others still ran)."""
        from nca_cli.sweeping.summary import summarize

        ran = len(workers.ends)
        if ran == 0 and grid:
            print(f"nca sweep: nothing left to run: the {len(points)} grid points are done")
        summarize(study, self.sweep_dir, self.metric)
        print(f"add trials to this study (or resume it) with:\n  {self._again()}")
        failed = workers.ends.count("failed")
        if failed:
            print(
                f"nca sweep: {failed} of the {ran} trials failed "
                f"({workers.ends.count('complete')} completed); "
                "their errors are in the table and in their folders' error.txt",
                file=sys.stderr,
            )
            sys.exit(1)


class _LauncherFailed(Exception):
    """The launcher itself failed (a killed worker process), not a trial's job."""


@dataclass
class _Workers:
    """What the sweep's workers share, under ``lock``: how many trials were started, the
    running ones (trial and storage id, beaten by the heartbeat), and how each ended."""

    budget: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: int = 0
    stopping: bool = False
    running: dict[int, tuple[optuna.Trial, int]] = field(default_factory=dict)
    ends: list[str] = field(default_factory=list)  # complete / pruned / failed
    returns: list[JobReturn] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


def _slurm_state(value: object) -> str:
    """How SLURM ended a job that submitit reports without a result (``TIMEOUT``,
    ``CANCELLED by 0``, ...; ``TIMEOUT`` when it was requeued too often after its
    pre-timeout signal), or "" for anything else."""
    import re

    if type(value).__name__ != "UncompletedJobError":
        return ""
    if "timed-out" in str(value):
        return "TIMEOUT"
    found = re.search(r"\(state: ([A-Z_]+(?: by \S+)?)\)", str(value))
    return found.group(1) if found else ""


def _stopped_job(job: str | None) -> str:
    """Why a trial's job stopped: its SLURM state from ``sacct`` where the trial recorded
    its job."""
    from nca_cli.sweeping.slurm import job_state

    if job is None:
        return "its job was stopped by SIGTERM (scancel, its time limit or preemption)"
    state = job_state(job)
    if state is None:
        return f"its SLURM job {job} was stopped by SIGTERM (scancel, its time limit or preemption)"
    return f"its SLURM job {job} ended {state} (sacct)"


def _check_points(dims: Sequence[Dimension]) -> list[tuple[Any, ...]]:
    """The points that check a search space: its grid values and interval ends."""
    from nca_cli.training.checks import points_to_check

    return points_to_check(
        [d.values if d.grid is not None else (d.values[0], d.values[-1]) for d in dims]
    )


def refuse_output_overrides(hydra_overrides: list[str]) -> None:
    """A sweep places trial N in ``<hydra.sweep.dir>/<N>/`` (resuming, the table and the
    cross-validated folds find it there), and makes no single run folder."""
    for line in hydra_overrides:
        key = line.split("=", 1)[0].lstrip("+~")
        if key == "hydra.sweep.subdir":
            raise ConfigError(
                f"the override {line!r} is not taken: nca sweep puts trial N in "
                "<sweep folder>/N/ (resume and the table find it there); choose the sweep "
                "folder with hydra.sweep.dir=... or study=<name>"
            )
        if key.startswith("hydra.run."):
            raise ConfigError(
                f"the override {line!r} changes nothing: a sweep's trials go to "
                "hydra.sweep.dir (or outputs/sweep/<study>)"
            )


def _shorthand(arg: str) -> str:
    """``hydra.sweeper.n_trials=4`` as ``nca sweep`` takes it: ``n_trials=4``."""
    from nca_cli.sweeping.config import ALIASES

    key, sep, value = arg.partition("=")
    short = {v: k for k, v in ALIASES.items()}
    return f"{short[key]}={value}" if sep and key in short else arg


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


@contextmanager
def _heartbeats(
    storage: optuna.storages.RDBStorage, workers: _Workers, interval: int
) -> Iterator[None]:
    """Beat for the running trials, so that a sweep killed with its trials leaves them to be
    marked failed (not running for ever) by the next sweep on the study."""
    if interval <= 0:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            with workers.lock:
                trial_ids = [trial_id for _, trial_id in workers.running.values()]
            for trial_id in trial_ids:
                try:
                    storage.record_heartbeat(trial_id)
                except Exception as err:  # a storage hiccup must not stop the sweep
                    log.warning("heartbeat failed: %s", err)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="nca-sweep-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
