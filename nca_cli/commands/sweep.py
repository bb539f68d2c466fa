"""``nca sweep``: grids and Optuna searches of training runs (Hydra's multirun with the
project's sweeper), and ``nca sweep summarize <sweep dir>``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import DictConfig

from nca_cli import shortcuts
from nca_cli.commands.hydra_app import run_app
from nca_cli.config import ConfigError
from nca_cli.sweeping.config import ALIASES

# Hydra modes that exclude --multirun.
OTHER_MODES = {
    "-c", "--cfg", "-i", "--info", "-h", "--help", "--hydra-help", "-sc",
    "--shell-completion", "-r", "--run", "-m", "--multirun",
}  # fmt: skip


def expand(argv: list[str]) -> list[str]:
    """Hydra arguments from the command line: the training shortcuts and the sweeper's
    shorthands spelled out, ``-m`` added, and ``n_jobs=N`` (N > 1) runs trials in parallel
    with the joblib launcher unless another launcher is chosen."""
    out = shortcuts.expand(argv, {**shortcuts.SHORTCUTS, **ALIASES})
    launcher = any(a.startswith("hydra/launcher=") for a in argv)
    for arg in argv:
        key, _, value = arg.partition("=")
        if key == "n_jobs" and not launcher and value.isdigit() and int(value) > 1:
            out += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={value}"]
    if not any(a.split("=", 1)[0] in OTHER_MODES for a in out):
        out.insert(0, "-m")
    return out


def app(cfg: DictConfig) -> dict[str, float]:
    from hydra.core.hydra_config import HydraConfig

    from nca_cli.sweeping.cv import fold_evaluator
    from nca_cli.sweeping.trial import run_trial

    return run_trial(cfg, fold_evaluator(HydraConfig.get()))  # cv.k: a k-fold per trial


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
    from nca_cli.sweeping.config import register

    register()
    try:
        args = expand(argv)
    except ConfigError as err:
        print(f"nca sweep: error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        run_app(app, args, "sweep")
    except KeyboardInterrupt:
        print("nca sweep: interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
