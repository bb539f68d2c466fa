"""K-fold cross-validation: fold splits, per-fold split files and the summary.

Folds are drawn over the task's train and validation cases with scikit-learn's ``KFold``
(``StratifiedKFold`` for classification tasks); the test split stays out of every fold.
``folds.json`` has nnU-Net's layout, a list of ``{"train": [...], "val": [...]}``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nca_cli.atomic import write_text_atomic
from nca_cli.datasets.splits import Split, check_disjoint
from nca_cli.datasets.storage import DataError

Folds = list[dict[str, list[str]]]
FOLDS_FILE = "folds.json"
SUMMARY_FILE = "summary.json"


@dataclass
class CasePool:
    """What folds are drawn from: the task's train and validation cases (with their class
    labels for stratification), and the test split that stays out of every fold."""

    cases: list[str]
    test: list[str]
    labels: list[int] | None
    seed: int


def case_pool(config: dict[str, Any]) -> CasePool:
    """The case pool of the task that ``config`` (a composed training config) builds."""
    from nca_cli.config import ConfigError
    from nca_cli.tasks import task_of
    from nca_cli.training.schema import parse_run_config

    run = parse_run_config(config)
    task = task_of(run)(run)
    if task.splits is None:
        raise ConfigError(f"task {task.config.name!r} has no data to split into folds")
    cases = sorted(task.splits["train"] + task.splits["val"])
    return CasePool(cases, list(task.splits.get("test", [])), task.case_labels(cases), run.seed)


def make_folds(ids: list[str], k: int, seed: int, labels: list[int] | None = None) -> Folds:
    """``k`` disjoint validation folds covering ``ids``, stratified when labels are given."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if k < 2 or k > len(ids):
        raise DataError(f"k={k} folds need 2 <= k <= the number of cases ({len(ids)})")
    if labels is not None:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        parts = splitter.split(ids, labels)
    else:
        parts = KFold(n_splits=k, shuffle=True, random_state=seed).split(ids)
    return [
        {"train": sorted(ids[i] for i in train), "val": sorted(ids[i] for i in val)}
        for train, val in parts
    ]


def load_folds(path: Path, known: set[str]) -> Folds:
    """Read a saved or hand-written fold file, checking every fold."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read fold file {path}: {err}") from None
    if not isinstance(raw, list) or not raw:
        raise DataError(f"fold file {path} must be a list of {{train: [...], val: [...]}}")
    folds: Folds = []
    for i, fold in enumerate(raw):
        if not isinstance(fold, dict) or not fold.get("train") or not fold.get("val"):
            raise DataError(f"fold {i} of {path} needs non-empty train and val lists")
        split = {"train": [str(c) for c in fold["train"]], "val": [str(c) for c in fold["val"]]}
        unknown = sorted((set(split["train"]) | set(split["val"])) - known)
        if unknown:
            raise DataError(f"fold {i} of {path} names unknown cases: {', '.join(unknown[:5])}")
        check_disjoint(split, f"fold {i} of {path}")
        folds.append(split)
    return folds


def write_folds(folder: Path, folds: Folds, test: list[str]) -> list[Path]:
    """``folds.json`` and one split file per fold (its train/val plus the common test)."""
    write_text_atomic(folder / FOLDS_FILE, json.dumps(folds, indent=1) + "\n")
    paths = []
    for i, fold in enumerate(folds):
        split: Split = {"train": fold["train"], "val": fold["val"], "test": list(test)}
        check_disjoint(split, f"fold {i}")
        path = folder / f"fold_{i}.json"
        write_text_atomic(path, json.dumps(split, indent=1) + "\n")
        paths.append(path)
    return paths


def summarize(folder: Path, k: int, partial: bool = False) -> dict[str, Any]:
    """Per-fold values, mean and sample standard deviation of every metric; ``partial``
    summarises the folds that finished (``folds`` lists them), so that a k-fold with a
    failed fold still reports the others."""
    finished: dict[int, dict[str, Any]] = {}
    for i in range(k):
        path = folder / f"fold_{i}" / "metrics.json"
        if path.is_file():
            finished[i] = json.loads(path.read_text())
        elif not partial:
            raise DataError(f"fold {i} has not finished: {path} is missing")
    if not finished:
        raise DataError(f"no fold of {folder} has finished")
    folds = list(finished.values())
    n = len(folds)
    names = [name for name in folds[0] if all(isinstance(f.get(name), int | float) for f in folds)]
    metrics = {}
    for name in names:
        values = [float(f[name]) for f in folds]
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        metrics[name] = {"values": values, "mean": mean, "std": std}
    summary = {
        "k": k,
        "folds": sorted(finished),
        "std": "sample standard deviation (ddof=1)",
        "metrics": metrics,
    }
    write_text_atomic(folder / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def plot_folds(path: Path, summary: dict[str, Any]) -> None:
    """Every metric per fold as bars, with the mean and std over the folds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nca_cli.training.run_folder import BOOKKEEPING

    names = [n for n in summary["metrics"] if n not in BOOKKEEPING][:8]
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        m = summary["metrics"][name]
        ax.bar(summary["folds"], m["values"], color="tab:blue")
        ax.axhline(m["mean"], color="tab:red", label="mean")
        ax.set_xticks(range(summary["k"]))
        ax.set_title(f"{name}\n{m['mean']:.3g} ± {m['std']:.2g}", fontsize=9)
        ax.set_xlabel("fold")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_fold_summary(
    folder: Path, summary: dict[str, Any], config: dict[str, Any], group: str | None = None
) -> None:
    """A W&B run in the folds' group (``kfold-<folder>`` unless given) holding the mean and
    std of every metric, through the run logger like every W&B call."""
    from nca_cli.config import parse
    from nca_cli.training.loggers import make_logger
    from nca_cli.training.schema import LoggerConfig

    cfg = parse(config.get("logger"), LoggerConfig, "logger")
    if cfg.name != "wandb":
        return
    cfg = replace(cfg, group=group or f"kfold-{folder.name}")
    logger = make_logger(
        cfg, folder, {"k": summary["k"]}, name=f"{folder.name}-summary", job_type="kfold-summary"
    )
    values = {}
    for name, m in summary["metrics"].items():
        values[f"{name}/mean"] = m["mean"]
        values[f"{name}/std"] = m["std"]
    logger.summary(values)
    logger.finish()
