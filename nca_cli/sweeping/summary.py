"""A study at a glance: a console table of its trials, ``trials.csv`` and PNG plots in the
sweep folder. Written at the end of every ``nca sweep`` and by ``nca sweep summarize``."""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nca_cli.atomic import write_text_atomic

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

# name -> what the plot shows (its title)
PLOTS: dict[str, str] = {
    "history": "objective of every trial in order, with the best so far",
    "importances": "how much each parameter explains the objective (fANOVA)",
    "slice": "objective against each parameter, one panel per parameter",
    "parallel_coordinate": "every trial as a line through its parameters and objective",
    "intermediate": "the reported training curve of every trial (pruned ones stop early)",
}


def _params(trials: list[FrozenTrial]) -> list[str]:
    names: list[str] = []
    for trial in trials:
        names.extend(n for n in trial.params if n not in names)
    return names


def _metric_names(trials: list[FrozenTrial]) -> list[str]:
    names: list[str] = []
    for trial in trials:
        names.extend(n for n in trial.user_attrs.get("metrics", {}) if n not in names)
    return names


def _seconds(trial: FrozenTrial) -> float | None:
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def _folds(trials: list[FrozenTrial]) -> int | None:
    """The number of folds of a cross-validated study (``cv.k``), else None."""
    return next((int(t.user_attrs["cv_k"]) for t in trials if "cv_k" in t.user_attrs), None)


def write_csv(study: optuna.Study, path: Path, metric: str) -> Path:
    """One row per trial: number, state, objective (for cross-validated trials: the fold
    mean, with its std and the per-fold values), parameters, seconds, final metrics (fold
    means), run folder and error."""
    trials = study.get_trials(deepcopy=False)
    params, metrics = _params(trials), _metric_names(trials)
    spread = [f"{metric}_std", f"{metric}_folds"] if _folds(trials) else []
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["number", "state", metric, *spread, *params, "seconds", "last_step"]
        + [f"metrics.{m}" for m in metrics]
        + ["run_dir", "error"]
    )
    for t in trials:
        seconds = _seconds(t)
        values = t.user_attrs.get("metrics", {})
        folds = " ".join(repr(v) for v in t.user_attrs.get("fold_values", []))
        writer.writerow(
            [t.number, t.state.name, _objective(t)]
            + ([t.user_attrs.get("std", ""), folds] if spread else [])
            + [t.params.get(p, "") for p in params]
            + ["" if seconds is None else round(seconds, 3)]
            + ["" if t.last_step is None else t.last_step]
            + [values.get(m, "") for m in metrics]
            + [t.user_attrs.get("run_dir", ""), _error(t) if t.state.name == "FAIL" else ""]
        )
    write_text_atomic(path, out.getvalue())
    return path


def print_table(study: optuna.Study, metric: str) -> None:
    from rich.table import Table

    from nca_cli.tables import table_console

    trials = study.get_trials(deepcopy=False)
    params = _params(trials)
    best = _best_number(study)
    k = _folds(trials)
    objective = f"{metric} (mean ± std of {k} folds)" if k else metric
    table = Table(title=f"study {study.study_name}: {len(trials)} trials", title_justify="left")
    for column in ["trial", "state", objective, *params, "seconds", "run folder"]:
        table.add_column(column, justify="left" if column == "run folder" else "right")
    for t in trials:
        seconds = _seconds(t)
        mark = " *" if t.number == best else ""
        state = t.state.name.lower()
        if state == "pruned" and t.last_step is not None:
            state = f"pruned at {t.last_step}"
            if k:  # steps are folds
                state = f"pruned after {t.last_step + 1}/{k} folds"
        value = _objective(t)
        shown = "" if value == "" else f"{value:.6g}"
        if shown and "std" in t.user_attrs:
            shown += f" ± {t.user_attrs['std']:.2g}"
        table.add_row(
            f"{t.number}{mark}",
            state,
            shown,
            *(_short(t.params.get(p, "")) for p in params),
            "" if seconds is None else f"{seconds:.1f}",
            _relative(t.user_attrs.get("run_dir", "")),
        )
    console = table_console()
    console.print(table)
    for t in trials:
        if t.state.name == "FAIL":
            console.print(f"trial {t.number} failed: {_error(t)}", markup=False)
    if best is not None:
        console.print(f"* best trial {best}: {metric} {study.best_value:.6g}", markup=False)


def _error(trial: FrozenTrial) -> str:
    return trial.user_attrs.get("error", "no result: its sweep stopped (killed?) while it ran")


def _objective(trial: FrozenTrial) -> float | str:
    """The objective of a completed trial; a pruned trial's value is only its last
    intermediate value, so it is left out."""
    return trial.value if trial.state.name == "COMPLETE" and trial.value is not None else ""


def _best_number(study: optuna.Study) -> int | None:
    try:
        return study.best_trial.number
    except ValueError:  # no completed trial
        return None


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _relative(path: str) -> str:
    if not path:
        return ""
    try:
        return os.path.relpath(path)
    except ValueError:
        return path


def write_plots(study: optuna.Study, folder: Path, metric: str) -> dict[str, str]:
    """The PNG plots that can be drawn: name -> path, or -> why not."""
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as vis

    draw: dict[str, Callable[[], Any]] = {
        "history": lambda: vis.plot_optimization_history(study, target_name=metric),
        "importances": lambda: vis.plot_param_importances(study, target_name=metric),
        "slice": lambda: vis.plot_slice(study, target_name=metric),
        "parallel_coordinate": lambda: vis.plot_parallel_coordinate(study, target_name=metric),
        "intermediate": lambda: vis.plot_intermediate_values(study),
    }
    folder.mkdir(parents=True, exist_ok=True)
    done: dict[str, str] = {}
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    for name, plot in draw.items():
        path = folder / f"{name}.png"
        if len(complete) < (2 if name == "importances" else 1):
            done[name] = "skipped: needs more completed trials"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)
                axes = plot()
            figure = _figure(axes)
            figure.suptitle(f"{study.study_name}: {PLOTS[name]}", fontsize=9)
            figure.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(figure)
            done[name] = str(path)
        except Exception as err:  # a plot that cannot be drawn must not fail the sweep
            done[name] = f"skipped: {type(err).__name__}: {err}"
            plt.close("all")
    return done


def _figure(axes: Any) -> Any:
    import numpy as np

    first = np.asarray(axes, dtype=object).flat[0]
    figure = first.figure
    if figure.get_figwidth() < 8:
        figure.set_size_inches(8, max(figure.get_figheight(), 5))
    return figure


def summarize(study: optuna.Study, sweep_dir: Path, metric: str) -> dict[str, str]:
    """Table on the console, ``trials.csv`` and ``plots/*.png`` in ``sweep_dir``."""
    print_table(study, metric)
    csv_path = write_csv(study, sweep_dir / "trials.csv", metric)
    plots = write_plots(study, sweep_dir / "plots", metric)
    print(f"trials: {csv_path}")
    for name, where in plots.items():
        print(f"plot {name}: {where}")
    return plots
