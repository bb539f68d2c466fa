"""A Hydra app run on a given argument list (a command's, or the library API's).

``@hydra.main`` parses ``sys.argv``, which is ``nca <command> ...`` here; instead of
rewriting it, a command hands its argument list to :func:`run_app`, which does what the
decorator does (Hydra 1.3.8, pinned, has no public entry point that takes arguments)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig


def run_app(
    task_function: Callable[[DictConfig], Any], argv: list[str], config_name: str = "config"
) -> None:
    """Run ``task_function`` as a Hydra app on ``argv`` (overrides and Hydra's own flags:
    ``-m``, ``--cfg job``, ``--help``, ``-sc``), composing ``conf/<config_name>.yaml``; the
    job's name is the config's ``hydra.job.name`` (``train``: each job's log is train.log)."""
    from hydra import version
    from hydra._internal.utils import _run_hydra, get_args_parser

    version.setbase("1.3")
    parser = get_args_parser()
    _run_hydra(
        args=parser.parse_args(argv),
        args_parser=parser,
        task_function=task_function,
        config_path="pkg://nca_cli.conf",
        config_name=config_name,
    )
