"""What every command that starts training checks before any work: the whole config parsed
by its owners, and every command-line override read by the run it configures.

``nca train``, each point of ``nca sweep`` (before its first trial) and ``nca kfold`` call
:func:`check_config`, so a value is refused the same way wherever it is typed.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields, is_dataclass
from typing import Any

from nca_cli.composition import config_groups
from nca_cli.compute import device_problem
from nca_cli.config import ConfigError
from nca_cli.shortcuts import describe
from nca_cli.training.schema import RunConfig, parse_run_config


def check_config(
    config: Mapping[str, Any], overrides: Sequence[str] = (), unread: Mapping[str, str] = {}
) -> RunConfig:
    """Parse ``config`` (a composed training config) as training will, without loading data
    or building the model's weights, and refuse an override in ``overrides`` that it does not
    read; ``unread`` adds paths that the caller does not read (``nca eval`` trains nothing),
    with the reason. Raises :class:`ConfigError`."""
    from nca_cli.engine.perception import build_perception
    from nca_cli.tasks import task_of

    run = parse_run_config(config)
    problem = device_problem(run.device)
    if problem is not None:
        raise ConfigError(f"invalid value for 'device': {run.device!r}: {problem}; use device=cpu")
    task_config, dataset, loss = task_of(run).parse_sections(run)
    build_perception(run.perception, run.model.channels, run.model.padding)
    sections = {"": run, "task": task_config, "dataset": dataset, "loss": loss}
    left = {path: why for where, node in sections.items() for path, why in ignored(node, where)}
    refuse_unread(overrides, {**unread, **left})
    return run


def ignored(node: Any, where: str) -> Iterable[tuple[str, str]]:
    """The dotted paths under ``where`` that a parsed config leaves unread, with the reason:
    each dataclass says which of its own fields its values ignore (an ``ignored()`` method)."""
    if not is_dataclass(node):
        return
    own = node.ignored() if hasattr(node, "ignored") else {}
    for f in fields(node):
        path = f"{where}.{f.name}" if where else f.name
        if f.name in own:
            yield path, own[f.name]
        else:
            yield from ignored(getattr(node, f.name), path)


def override_keys(overrides: Iterable[str]) -> list[tuple[str, str]]:
    """(key, the override as typed) of each ``key=value`` override; options and config group
    choices (``task=mnist``, which select what is read) left out."""
    groups = config_groups()
    keys = []
    for line in overrides:
        if line.startswith("-") or "=" not in line:
            continue
        key = line.split("=", 1)[0].lstrip("+~")
        if key not in groups and "/" not in key:
            keys.append((key, line))
    return keys


def refuse_unread(overrides: Iterable[str], unread: Mapping[str, str]) -> None:
    """A :class:`ConfigError` for the first override whose key (or a section above it) is
    in ``unread``."""
    for key, line in override_keys(overrides):
        parts = key.split(".")
        for depth in range(1, len(parts) + 1):
            path = ".".join(parts[:depth])
            if path in unread:
                raise ConfigError(f"the override {describe(line)} changes nothing: {unread[path]}")


# Up to this many points of a search are checked together; beyond, one value at a time.
CHECKED_POINTS = 64


def points_to_check(values: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """The points that check a search space over keys with these ``values`` before its
    first run: every combination (values of one key may need values of another, as
    ``perception.kernel_size`` needs a learned ``perception``), or for a larger space each
    value with the others at their first."""
    if math.prod(len(v) for v in values) <= CHECKED_POINTS:
        return list(itertools.product(*values))
    first = tuple(v[0] for v in values)
    return [(*first[:i], x, *first[i + 1 :]) for i, v in enumerate(values) for x in v]
