"""``nca sweep``: grids and Optuna searches of training runs (Hydra's multirun with the
project's sweeper), and ``nca sweep summarize <sweep dir>``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nca_cli.config import ConfigError


def summarize_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nca sweep summarize",
        description="Print the trial table of a sweep and write its trials.csv and "
        "plots/*.png again (from the study's storage).",
    )
    parser.add_argument("sweep_dir", type=Path, help="the sweep folder (holds study.json)")
    parser.add_argument(
        "--storage", help="storage URL, when the recorded one lacks its password or moved"
    )
    args = parser.parse_args(argv)
    import optuna

    from nca_cli.sweeping.study import read_study_file, resolve_storage
    from nca_cli.sweeping.summary import summarize

    try:
        info = read_study_file(args.sweep_dir)
        url = resolve_storage(info["storage"], args.storage)
        study = optuna.load_study(study_name=info["study_name"], storage=url)
    except (ConfigError, KeyError) as err:
        print(f"nca sweep summarize: error: {err}", file=sys.stderr)
        return 2
    summarize(study, args.sweep_dir, info.get("metric", "value"))
    return 0


def main(argv: list[str]) -> None:
    if argv[:1] == ["summarize"]:
        sys.exit(summarize_main(argv[1:]))
    from nca_cli.api import sweep

    try:
        sweep(argv)
    except ConfigError as err:
        print(f"nca sweep: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("nca sweep: interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
