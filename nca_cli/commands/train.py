"""``nca train``: check the command line, then run the training job (``training/job.py``)
as a Hydra app, once or as a multirun (``-m``)."""

from __future__ import annotations

import sys
from pathlib import Path

from nca_cli.composition import check_group_overrides
from nca_cli.config import ConfigError
from nca_cli.hydra_app import run_app
from nca_cli.shortcuts import expand


def apply_resume(argv: list[str]) -> list[str]:
    """With ``resume=<run dir>``, write into that run folder instead of a new one, leaving
    the Hydra files of the run's first start (its command line) as they are."""
    for arg in argv:
        if arg.startswith("resume=") and arg.split("=", 1)[1] not in ("", "null"):
            from nca_cli.training.job import check_run_folder

            check_run_folder(Path(arg.split("=", 1)[1]))
            return [*argv, f"hydra.run.dir={arg.split('=', 1)[1]}", "hydra.output_subdir=null"]
    return argv


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
    from nca_cli.training.job import hydra_job

    try:
        run_app(hydra_job, argv)
    except KeyboardInterrupt:  # outside the training loop, which handles its own
        print("nca train: interrupted", file=sys.stderr)
        sys.exit(130)
