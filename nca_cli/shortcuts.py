"""The command line's shortcut keys: ``fire_rate=0.3`` stands for ``model.fire_rate=0.3``.

A shortcut is another name for one config field, nothing more. Commands spell shortcuts
out before Hydra composes the config, so the value lives in the field alone, a preset's
value of that field is replaced like any other command-line override (every preset, no
interpolation to forget), and ``--cfg job`` shows what runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from nca_cli.errors import ConfigError

# shortcut -> the field it names. `seed` is no shortcut: the run's seed is a top-level key.
SHORTCUTS: dict[str, str] = {
    "channels": "model.channels",
    "hidden": "model.hidden",
    "fire_rate": "model.fire_rate",
    "lr": "trainer.optimizer.lr",
    "pool_size": "task.pool.size",
}


def _split(arg: str) -> tuple[str, str, str, str]:
    """``++key=value`` as (prefix, key, separator, value)."""
    body = arg.lstrip("+~")
    prefix = arg[: len(arg) - len(body)]
    key, sep, value = body.partition("=")
    return prefix, key, sep, value


def expand(args: Iterable[str], names: Mapping[str, str] = SHORTCUTS) -> list[str]:
    """``args`` (command-line overrides; options such as ``-m`` left alone) with the
    shortcut keys of ``names`` spelled out; a shortcut given together with the field it
    names is refused."""
    out: list[str] = []
    given: dict[str, str] = {}
    for arg in args:
        prefix, key, sep, value = _split(arg)
        if arg.startswith("-") or not sep:
            out.append(arg)
            continue
        field = names.get(key, key)
        if given.setdefault(field, key) != key:
            raise ConfigError(
                f"'{given[field]}' and '{key}' name the same field ({field}): give one of them"
            )
        out.append(f"{prefix}{field}{sep}{value}")
    return out


def label(key: str) -> str:
    """``key`` quoted for an error message, with the shortcut the user may have typed for
    it: ``'fire_rate' (model.fire_rate)``."""
    for short, field in SHORTCUTS.items():
        if key == field or key.startswith((f"{field}.", f"{field}[")):
            return f"'{short}' ({key})"
    return f"'{key}'"


def describe(line: str) -> str:
    """An expanded override quoted for a message as it may have been typed:
    ``'lr=0.1' (trainer.optimizer.lr)``."""
    prefix, key, sep, value = _split(line)
    short = next((name for name, field in SHORTCUTS.items() if field == key), None)
    return f"'{prefix}{short}{sep}{value}' ({key})" if short else repr(line)
