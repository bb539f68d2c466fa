"""``nca kfold``: k-fold cross-validation; every fold is a normal training run.

Folds run as a Hydra multirun of the training app (sequential by default, in parallel with
``hydra/launcher=joblib``), each into ``<kfold dir>/fold_<i>/`` with a fresh model,
optimiser, scheduler and pool. Re-running on the same folder skips finished folds and
continues interrupted ones from their last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

EPILOG = """examples:
  nca kfold task=shapes k=5
  nca kfold task=medmnist dataset.name=pneumoniamnist k=5 perception=dilated fire_rate=0.3
  nca kfold task=kvasir k=5 hydra/launcher=joblib     folds in parallel
  nca kfold dir=outputs/kfold/<run>                    resume: finished folds are skipped
  nca kfold task=shapes splits=outputs/kfold/<run>/folds.json   reuse a saved split

Every other key=value token is a training override (as for `nca train`)."""


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="nca kfold",
        description="K-fold cross-validation: train one run per fold and report the mean "
        "and standard deviation of every metric over the folds.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="k=N, splits=FILE, dir=DIR and overrides")
    args = parser.parse_args(argv)
    special: dict[str, str] = {}
    overrides = []
    for token in args.overrides:
        key, sep, value = token.partition("=")
        if sep and key in ("k", "splits", "dir"):
            special[key] = value
        else:
            overrides.append(token)
    try:
        args.k = int(special.get("k", "5"))
    except ValueError:
        parser.error(f"k must be an integer, got {special['k']!r}")
    args.splits = Path(special["splits"]) if "splits" in special else None
    args.dir = Path(special["dir"]) if "dir" in special else None
    return args, overrides


def prepare(
    overrides: list[str], k: int, folder: Path, splits: Path | None
) -> tuple[list[Path], dict[str, Any]]:
    """Write the fold files into ``folder`` (reusing ``folds.json`` when it exists)."""
    from nca_cli.config import ConfigError, compose
    from nca_cli.crossval import FOLDS_FILE, case_pool, load_folds, make_folds, write_folds

    config = compose([o for o in overrides if not o.startswith(("hydra", "+hydra"))])
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
    """summary.json, a console table, a plot of per-fold metrics, and a W&B summary."""
    from rich.table import Table

    from nca_cli.crossval import summarize
    from nca_cli.tables import table_console

    summary = summarize(folder, k)
    table = Table(title=f"{k}-fold cross-validation: {folder}")
    table.add_column("metric")
    for i in range(k):
        table.add_column(f"fold {i}", justify="right")
    table.add_column("mean ± std", justify="right")
    for name, m in summary["metrics"].items():
        cells = [f"{v:.4g}" for v in m["values"]]
        table.add_row(name, *cells, f"{m['mean']:.4g} ± {m['std']:.2g}")
    table_console().print(table)
    plot(folder / "folds.png", summary)
    log_summary(folder, summary, config)
    return summary


def plot(path: Path, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in summary["metrics"] if n not in ("iteration", "seconds")][:8]
    fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        m = summary["metrics"][name]
        ax.bar(range(len(m["values"])), m["values"], color="tab:blue")
        ax.axhline(m["mean"], color="tab:red", label="mean")
        ax.set_title(f"{name}\n{m['mean']:.3g} ± {m['std']:.2g}", fontsize=9)
        ax.set_xlabel("fold")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_summary(
    folder: Path, summary: dict[str, Any], config: dict[str, Any], group: str | None = None
) -> None:
    """A W&B run in the folds' group (``kfold-<folder>`` unless given) holding the mean and
    std of every metric."""
    logger = config.get("logger", {})
    if logger.get("name") != "wandb":
        return
    os.environ.setdefault("WANDB_X_DISABLE_STATS", "true")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    run = wandb.init(
        project=logger.get("project", "nca"),
        entity=logger.get("entity"),
        group=group or f"kfold-{folder.name}",
        job_type="kfold-summary",
        mode=logger.get("mode", "offline"),
        dir=str(folder),
        name=f"{folder.name}-summary",
        config={"k": summary["k"]},
    )
    for name, m in summary["metrics"].items():
        run.summary[f"{name}/mean"] = m["mean"]
        run.summary[f"{name}/std"] = m["std"]
    run.finish()


COMMAND_FILE = "kfold.json"  # k and the overrides, so that `nca kfold dir=...` resumes alone
STATUS_FILE = "status.json"  # what each fold's run folder holds: finished, interrupted, ...


def saved_command(
    folder: Path, argv: list[str], k: int, overrides: list[str]
) -> tuple[int, list[str]]:
    """``k`` and the overrides of the k-fold in ``folder``, unless given again."""
    path = folder / COMMAND_FILE
    if not path.is_file():
        return k, overrides
    saved = json.loads(path.read_text())
    if not any(a.startswith("k=") for a in argv):
        k = int(saved["k"])
    return k, overrides or [str(o) for o in saved["overrides"]]


def fold_states(folder: Path, k: int) -> list[str]:
    """``fold_<i>: finished`` / ``interrupted at iteration N (checkpoint kept)`` / ..."""
    from nca_cli.training.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint

    states = []
    for i in range(k):
        run = folder / f"fold_{i}"
        if (run / "metrics.json").is_file():
            state = "finished"
        elif (run / "error.txt").is_file():
            reason = (run / "error.txt").read_text().strip().splitlines() or ["unknown error"]
            state = f"failed: {reason[0]}"
        elif (run / CHECKPOINT_NAME).is_file():
            try:
                iteration = load_checkpoint(run / CHECKPOINT_NAME)["iteration"]
                state = f"interrupted at iteration {iteration} (checkpoint kept)"
            except CheckpointError as err:
                state = f"failed ({err})"
        else:
            state = "not started"
        states.append(f"fold_{i}: {state}")
    return states


def main(argv: list[str]) -> None:
    from hydra.errors import HydraException

    from nca_cli.atomic import write_text_atomic
    from nca_cli.config import ConfigError
    from nca_cli.datasets.storage import DataError

    args, overrides = parse_args(argv)
    root = Path(os.environ.get("NCA_OUTPUT_DIR", "outputs"))
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
    folder = args.dir or root / "kfold" / stamp
    try:
        if args.dir is not None and not (args.dir / "folds.json").is_file():
            raise ConfigError(
                f"invalid value for 'dir': {str(args.dir)!r} is not a k-fold folder (it holds "
                "no folds.json)"
            )
        if args.dir is not None:
            args.k, overrides = saved_command(args.dir, argv, args.k, overrides)
            print(f"nca kfold: resuming {folder}: " + "; ".join(fold_states(folder, args.k)))
        folder.mkdir(parents=True, exist_ok=True)
        paths, config = prepare(overrides, args.k, folder, args.splits)
        if not (folder / COMMAND_FILE).is_file():
            command = {"k": args.k, "overrides": overrides}
            write_text_atomic(folder / COMMAND_FILE, json.dumps(command, indent=1) + "\n")
    except (ConfigError, DataError, HydraException) as err:  # Hydra's: a bad override
        if args.dir is None and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # nothing was written: no half-made k-fold folder stays behind
        print(f"nca kfold: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"nca kfold: {args.k} folds in {folder}")
    from nca_cli.commands import train

    sys.argv = [
        "nca kfold",
        "-m",
        f"dataset.splits={','.join(str(p) for p in paths)}",
        f"hydra.sweep.dir={folder}",
        "hydra.sweep.subdir=fold_${hydra.job.num}",
        f"logger.group=kfold-{folder.name}",
        *overrides,
    ]
    try:
        train.app()
    except (SystemExit, KeyboardInterrupt) as stop:  # a fold stopped: interrupted or failed
        code = stop.code if isinstance(stop, SystemExit) else 130
        if code in (0, None):
            raise
        states = fold_states(folder, args.k)
        write_text_atomic(folder / STATUS_FILE, json.dumps(states, indent=1) + "\n")
        print(
            f"nca kfold: stopped: {'; '.join(states)}. Finished folds are kept; run again "
            f"to resume (finished folds are skipped, interrupted ones continue):\n"
            f"  nca kfold dir={folder}",
            file=sys.stderr,
        )
        sys.exit(code if isinstance(code, int) else 1)
    write_text_atomic(
        folder / STATUS_FILE, json.dumps(fold_states(folder, args.k), indent=1) + "\n"
    )
    try:
        report(folder, args.k, config)
    except DataError as err:
        print(f"nca kfold: error: {err}", file=sys.stderr)
        sys.exit(1)
