"""``nca kfold``: the arguments of ``nca_cli.api.kfold`` (see ``crossval/kfold.py``), and its
outcomes as exit statuses: a diverged fold does not stop the others, the summary covers the
folds that finished and the exit status is 1."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
        args.k = int(special["k"]) if "k" in special else None
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


def main(argv: list[str]) -> None:
    from nca_cli.api import kfold
    from nca_cli.crossval.kfold import KFoldStopped
    from nca_cli.datasets.storage import DataError

    args, overrides = parse_args(argv)
    try:
        result = kfold(
            overrides,
            k=args.k,
            folder=args.folder,
            splits=args.splits,
            resume_only=args.dir is not None,
            say=lambda line: print(f"nca kfold: {line}"),
        )
    except (ConfigError, DataError) as err:
        print(f"nca kfold: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KFoldStopped as stop:
        print(
            f"nca kfold: {stop}. Finished folds are kept; run again to resume (finished "
            f"folds are skipped, interrupted ones continue):\n  nca kfold dir={stop.folder}",
            file=sys.stderr,
        )
        sys.exit(stop.code)
    if result.summary_error is not None:
        print(f"nca kfold: error: {result.summary_error}", file=sys.stderr)
        sys.exit(1)
    if result.failed:
        covered = "the summary covers the others" if result.failed < result.k else "no summary"
        print(
            f"nca kfold: {result.failed} of {result.k} folds failed; {covered}:\n  "
            + "\n  ".join(result.states)
            + "\nThe failed folds' error.txt and train.log say more. Run again to retry "
            f"them (finished folds are skipped):\n  nca kfold dir={result.folder}",
            file=sys.stderr,
        )
        sys.exit(1)
