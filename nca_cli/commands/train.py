"""``nca train``: compose the config with Hydra and run the training loop."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nca_cli.atomic import write_text_atomic
from nca_cli.commands.hydra_app import run_app
from nca_cli.composition import apply_overrides, check_group_overrides, resolve
from nca_cli.config import ConfigError
from nca_cli.masking import hide_secrets
from nca_cli.shortcuts import expand

log = logging.getLogger("nca.train")
ERROR_FILE = "error.txt"  # why a run failed (divergence), beside its last good checkpoint


def apply_resume(argv: list[str]) -> list[str]:
    """With ``resume=<run dir>``, write into that run folder instead of a new one, leaving
    the Hydra files of the run's first start (its command line) as they are."""
    for arg in argv:
        if arg.startswith("resume=") and arg.split("=", 1)[1] not in ("", "null"):
            check_run_folder(Path(arg.split("=", 1)[1]))
            return [*argv, f"hydra.run.dir={arg.split('=', 1)[1]}", "hydra.output_subdir=null"]
    return argv


def check_run_folder(run_dir: Path) -> None:
    """Before Hydra creates or writes into it: ``run_dir`` is a training run folder."""
    from nca_cli.training.checkpoint import CHECKPOINT_NAME

    if not run_dir.is_dir():
        raise ConfigError(f"invalid value for 'resume': {str(run_dir)!r} is not a folder")
    if not (run_dir / CHECKPOINT_NAME).is_file():
        raise ConfigError(
            f"invalid value for 'resume': {str(run_dir)!r} is not a training run folder: it "
            f"holds no {CHECKPOINT_NAME} (a run writes one as soon as its training starts)"
        )


def resume_config(cfg: DictConfig, overrides: list[str]) -> tuple[dict[str, Any], dict]:
    """The saved config of the run to resume, with ``key=value`` overrides applied."""
    from nca_cli.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from nca_cli.training.checks import check_config

    run_dir = Path(str(cfg.resume))
    if not run_dir.is_dir():
        raise ConfigError(f"invalid value for 'resume': {str(run_dir)!r} is not a run folder")
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_NAME)
    wanted = [
        item
        for item in overrides
        if not item.lstrip("+~").startswith(("resume=", "hydra.", "hydra/"))
    ]
    config = apply_overrides(checkpoint["config"], wanted, f"the run {run_dir}")
    config["resume"] = str(run_dir)
    check_config(config, wanted)
    return config, checkpoint


def job(cfg: DictConfig) -> dict[str, float] | None:
    """The Hydra job of ``nca train``: the run in Hydra's output folder, stopped cleanly by
    Ctrl-C or SIGTERM (exit 130)."""
    from nca_cli.training.interrupts import stop_requests

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with stop_requests(run_dir) as stop:
        metrics = run_job(cfg, run_dir, stop)
        if stop.is_set():  # Ctrl-C while a finished job was skipped: a k-fold stops here too
            print("nca train: interrupted", file=sys.stderr)
            sys.exit(130)
    return metrics


def run_job(cfg: DictConfig, run_dir: Path, stop: threading.Event) -> dict[str, float]:
    """Train, resume or skip the run in ``run_dir``; every known failure becomes one line
    and an exit status (2 bad input, 1 divergence, 130 interrupted)."""
    from nca_cli.datasets.storage import DataError
    from nca_cli.training.checkpoint import CheckpointError
    from nca_cli.training.interrupts import Interrupted
    from nca_cli.training.run_folder import train_in_folder
    from nca_cli.training.trainer import DivergenceError, train

    hide_secrets()
    (run_dir / ERROR_FILE).unlink(missing_ok=True)  # of an earlier attempt
    try:
        if cfg.get("resume"):
            config, checkpoint = resume_config(cfg, list(HydraConfig.get().overrides.task))
            metrics = train(config, run_dir, checkpoint, stop=stop)
        else:  # a re-run multirun job (k-fold, sweep) may have finished or been interrupted
            metrics = train_in_folder(resolve(cfg), run_dir, stop=stop)
    except (ConfigError, CheckpointError, DataError) as err:
        print(f"nca train: error: {err}", file=sys.stderr)
        sys.exit(2)
    except DivergenceError as err:
        write_text_atomic(run_dir / ERROR_FILE, f"{err}\n")  # marks the run failed
        print(f"nca train: {err}", file=sys.stderr)
        sys.exit(1)
    except Interrupted as err:
        print(f"nca train: {err}", file=sys.stderr)
        sys.exit(130)
    summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    log.info("done: %s", summary)
    print(f"run folder: {run_dir}\nfinal: {summary}")
    return metrics


# Hydra's options that print or complete instead of running.
INFO_OPTIONS = (
    "-c", "--cfg", "-i", "--info", "-h", "--help", "--hydra-help", "-sc",
    "--shell-completion",
)  # fmt: skip


def check_command_line(argv: list[str]) -> None:
    """Before Hydra makes a run folder: the config the overrides compose is valid, and each
    override is read by the run (a resumed run's are checked against its saved config)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from nca_cli.composition import compose
    from nca_cli.training.checks import check_config, points_to_check

    overrides = [a for a in argv if not a.startswith("-")]
    check_group_overrides(overrides)
    if any(a.split("=", 1)[0] in INFO_OPTIONS for a in argv):
        return
    multirun = any(a in ("-m", "--multirun") for a in argv)
    for line in overrides:
        key = line.split("=", 1)[0].lstrip("+~")
        if not multirun and key.startswith("hydra.sweep."):
            raise ConfigError(
                f"the override {line!r} changes nothing: nca train makes one run folder "
                "(hydra.run.dir=...); hydra.sweep.* places the runs of a multirun (-m, or "
                "nca sweep)"
            )
        if multirun and key.startswith("hydra.run."):
            raise ConfigError(
                f"the override {line!r} changes nothing: a multirun (-m) places its runs "
                "in hydra.sweep.dir/hydra.sweep.subdir"
            )
    if any(a.startswith("resume=") and a.split("=", 1)[1] not in ("", "null") for a in argv):
        return  # checked against the run's saved config once it is loaded
    parser = OverridesParser.create()
    parsed = []
    for line in overrides:
        try:
            parsed += parser.parse_overrides([line])
        except HydraException as err:
            first = str(err).strip().splitlines()[0]
            raise ConfigError(
                f"invalid override {line!r}: {first} (overrides are key=value)"
            ) from None
    training = [o for o in parsed if not o.is_hydra_override()]
    fixed = [o.input_line for o in training if not o.is_sweep_override()]
    swept = []
    for o in training:
        if o.is_sweep_override():
            try:
                swept.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
            except HydraException as err:  # an interval: only nca sweep samples one
                raise ConfigError(
                    f"invalid override {o.input_line!r}: {err}; nca train -m runs lists and "
                    "ranges, nca sweep samples intervals"
                ) from None
    for point in points_to_check(swept):  # a multirun's jobs, before the first one
        try:
            config = compose([*fixed, *point])
        except HydraException as err:  # Hydra's message names the override
            raise ConfigError(" ".join(str(err).split())) from None
        check_config(config, [*fixed, *point])


def main(argv: list[str]) -> None:
    try:
        argv = expand(argv)
        check_command_line(argv)
        argv = apply_resume(argv)
    except ConfigError as err:  # before Hydra creates a run folder
        print(f"nca train: error: {err}", file=sys.stderr)
        sys.exit(2)
    try:
        run_app(job, argv)
    except KeyboardInterrupt:  # outside the training loop, which handles its own
        print("nca train: interrupted", file=sys.stderr)
        sys.exit(130)
