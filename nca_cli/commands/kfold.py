"""``nca kfold``: k-fold cross-validation; every fold is a normal training run.

Folds run as a Hydra multirun of the training app (sequential by default, in parallel with
``hydra/launcher=joblib``), each into ``<kfold dir>/fold_<i>/`` with a fresh model,
optimiser, scheduler and pool; ``dir=`` or ``hydra.sweep.dir=`` names the k-fold folder.
Re-running on the same folder skips finished folds and continues interrupted ones from
their last checkpoint. A diverged fold does not stop the others: the summary covers the
folds that finished and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nca_cli.commands import train
from nca_cli.commands.hydra_app import run_app
from nca_cli.config import ConfigError
from nca_cli.shortcuts import expand

EPILOG = """examples:
  nca kfold task=shapes k=5
  nca kfold task=medmnist dataset.name=pneumoniamnist k=5 perception=dilated fire_rate=0.3
  nca kfold task=kvasir k=5 hydra/launcher=joblib     folds in parallel
  nca kfold task=shapes k=5 hydra.sweep.dir=cv/shapes  the k-fold folder (resumed if it is one)
  nca kfold dir=outputs/kfold/<run>                    resume: finished folds are skipped
  nca kfold task=shapes splits=outputs/kfold/<run>/folds.json   reuse a saved split

Every other key=value token is a training override (as for `nca train`). Exit status:
0 all folds finished, 1 a fold failed (the others still train), 2 bad input, 130
interrupted."""

# Hydra output options that would send folds where resume and the summary cannot find them
REFUSED = {
    "hydra.sweep.subdir": "folds always go to <folder>/fold_<i>/ (resume and the summary "
    "find them there); choose the folder with dir= or hydra.sweep.dir=",
    "hydra.run.dir": "a k-fold makes one folder of folds, not a single run folder: use dir= "
    "or hydra.sweep.dir=",
}


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
        name = key.lstrip("+~")
        if sep and name in REFUSED:
            parser.exit(2, f"nca kfold: error: {name} is not allowed: {REFUSED[name]}\n")
        if sep and name in ("k", "splits", "dir", "hydra.sweep.dir"):
            special[name] = value
        else:
            overrides.append(token)
    try:
        overrides = expand(overrides)
    except ConfigError as err:
        parser.error(str(err))
    try:
        args.k = int(special.get("k", "5"))
    except ValueError:
        parser.error(f"k must be an integer, got {special['k']!r}")
    args.splits = Path(special["splits"]) if "splits" in special else None
    args.dir = Path(special["dir"]) if "dir" in special else None
    args.folder = args.dir
    if "hydra.sweep.dir" in special:
        try:
            sweep_dir = resolve_folder(special["hydra.sweep.dir"])
        except ConfigError as err:
            parser.exit(2, f"nca kfold: error: {err}\n")
        if args.dir is not None and args.dir.resolve() != sweep_dir.resolve():
            parser.exit(
                2,
                f"nca kfold: error: dir={args.dir} and hydra.sweep.dir={sweep_dir} name "
                "different folders; both name the k-fold folder: give one of them\n",
            )
        args.folder = sweep_dir
    return args, overrides


def resolve_folder(value: str) -> Path:
    """``hydra.sweep.dir`` with ``${now:...}`` resolved now: kfold must know its folder
    before Hydra starts, and passes Hydra this path so that both use the same one."""
    from hydra.core.utils import setup_globals
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    setup_globals()
    try:
        return Path(str(OmegaConf.create({"dir": value}).dir))
    except OmegaConfBaseException as err:
        raise ConfigError(
            f"invalid value for 'hydra.sweep.dir': {value!r} ({type(err).__name__}); only "
            "${now:...} can be resolved before the folds start"
        ) from None


def prepare(
    overrides: list[str], k: int, folder: Path, splits: Path | None
) -> tuple[list[Path], dict[str, Any]]:
    """Write the fold files into ``folder`` (reusing ``folds.json`` when it exists)."""
    from nca_cli.composition import compose
    from nca_cli.config import ConfigError
    from nca_cli.crossval import FOLDS_FILE, case_pool, load_folds, make_folds, write_folds
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

    from nca_cli.crossval import log_fold_summary, plot_folds, summarize
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


def fold_job(cfg: DictConfig) -> dict[str, float] | None:
    """``nca train``'s app for one fold, except that a diverged fold (exit status 1, its
    reason in error.txt) returns: Hydra's sweeper would end the multirun on its SystemExit,
    and the other folds must still train. Bad input (2) and Ctrl-C (130) still stop all."""
    try:
        return train.job(cfg)
    except SystemExit as stop:
        if stop.code != 1:
            raise
        return None


def main(argv: list[str]) -> None:
    from hydra.errors import HydraException

    from nca_cli.atomic import write_text_atomic
    from nca_cli.crossval import FOLDS_FILE
    from nca_cli.datasets.storage import DataError
    from nca_cli.paths import output_root

    args, overrides = parse_args(argv)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
    folder = args.folder or output_root() / "kfold" / stamp
    created = not folder.exists()
    try:
        resuming = (folder / FOLDS_FILE).is_file()
        if args.dir is not None and not resuming:
            raise ConfigError(
                f"invalid value for 'dir': {str(args.dir)!r} is not a k-fold folder (it holds "
                "no folds.json)"
            )
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"invalid value for 'hydra.sweep.dir': {str(folder)!r} is a file")
        if resuming:
            args.k, overrides = saved_command(folder, argv, args.k, overrides)
            print(f"nca kfold: resuming {folder}: " + "; ".join(fold_states(folder, args.k)))
        folder.mkdir(parents=True, exist_ok=True)
        paths, config = prepare(overrides, args.k, folder, args.splits)
        if not (folder / COMMAND_FILE).is_file():
            command = {"k": args.k, "overrides": overrides}
            write_text_atomic(folder / COMMAND_FILE, json.dumps(command, indent=1) + "\n")
    except (ConfigError, DataError, HydraException) as err:  # Hydra's: a bad override
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # nothing was written: no half-made k-fold folder stays behind
        print(f"nca kfold: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"nca kfold: {args.k} folds in {folder}")
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
        states = fold_states(folder, args.k)
        write_text_atomic(folder / STATUS_FILE, json.dumps(states, indent=1) + "\n")
        print(
            f"nca kfold: stopped: {'; '.join(states)}. Finished folds are kept; run again "
            f"to resume (finished folds are skipped, interrupted ones continue):\n"
            f"  nca kfold dir={folder}",
            file=sys.stderr,
        )
        sys.exit(code if isinstance(code, int) else 1)
    states = fold_states(folder, args.k)
    write_text_atomic(folder / STATUS_FILE, json.dumps(states, indent=1) + "\n")
    failed = sum(not s.endswith(": finished") for s in states)
    if failed < args.k:
        try:
            report(folder, args.k, config)
        except DataError as err:
            print(f"nca kfold: error: {err}", file=sys.stderr)
            sys.exit(1)
    if failed:
        covered = "the summary covers the others" if failed < args.k else "no summary"
        print(
            f"nca kfold: {failed} of {args.k} folds failed; {covered}:\n  "
            + "\n  ".join(states)
            + "\nThe failed folds' error.txt and train.log say more. Run again to retry "
            f"them (finished folds are skipped):\n  nca kfold dir={folder}",
            file=sys.stderr,
        )
        sys.exit(1)
