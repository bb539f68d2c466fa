"""The shared parsing and error machinery: every room (engine, training, tasks, ...) owns
the dataclasses of its config section and turns the composed dictionary into them with
:func:`parse`, so an unknown key or a wrong type fails before any work, naming the key."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from nca_cli.errors import ConfigError
from nca_cli.shortcuts import label

__all__ = ["ConfigError"]

T = TypeVar("T")


def parse(node: Mapping[str, Any] | DictConfig | None, schema: type[T], where: str) -> T:
    """Validate ``node`` against the dataclass ``schema`` and return an instance.

    ``where`` is the dotted path of the node in the full config, used in error messages.
    """
    base = OmegaConf.structured(schema)
    _check_sections(node, schema, where)
    try:
        merged = OmegaConf.merge(base, node if node is not None else {})
        obj = OmegaConf.to_object(merged)
    except ConfigKeyError as err:
        key = f"{where}.{err.full_key}" if where else str(err.full_key)
        allowed = ", ".join(f.name for f in fields(schema))  # type: ignore[arg-type]
        raise ConfigError(
            f"unknown config key {label(key)}; allowed keys here: {allowed}"
        ) from None
    except OmegaConfBaseException as err:
        path = str(err.full_key or "")
        key = f"{where}.{path}" if where and path else where or path
        expected = _expected(schema, path)
        found, value = _lookup(node, path)
        if expected and found:
            raise ConfigError(
                f"invalid value for {label(key)}: {value!r}; expected {expected}"
            ) from None
        msg = str(getattr(err, "msg", err)).splitlines()[0]
        raise ConfigError(f"invalid value for {label(key)}: {msg}") from None
    assert is_dataclass(obj)
    return obj  # type: ignore[return-value]


def _check_sections(node: Any, schema: type, where: str) -> None:
    """A scalar or list where the schema has a section fails naming that key (OmegaConf's
    own merge error names no key)."""
    hints = _hints(schema)
    if not isinstance(node, Mapping | DictConfig) or not hints:
        return
    for f in fields(schema):  # type: ignore[arg-type]
        if f.name not in node or f.name not in hints:
            continue
        value, kind = node[f.name], hints[f.name]
        key = f"{where}.{f.name}" if where else f.name
        if is_dataclass(kind):
            if not isinstance(value, Mapping | DictConfig):
                raise ConfigError(
                    f"invalid value for {label(key)}: {value!r}; expected {_describe(kind)}"
                )
            _check_sections(value, kind, key)
        elif typing.get_origin(kind) is dict and not isinstance(value, Mapping | DictConfig):
            raise ConfigError(f"invalid value for {label(key)}: {value!r}; expected a mapping")


def _hints(schema: type) -> dict[str, Any]:
    """The resolved field types of a dataclass ({} when they cannot be resolved)."""
    try:
        return typing.get_type_hints(schema)
    except (NameError, TypeError):
        return {}


def _describe(kind: Any) -> str:
    """What a value of type ``kind`` looks like, for error messages."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args) + " or null"
    if typing.get_origin(kind) is list:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if typing.get_origin(kind) is dict:
        return "a mapping"
    if is_dataclass(kind):
        return "a section with the keys " + ", ".join(f.name for f in fields(kind))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def _expected(schema: type, path: str) -> str:
    """The description of the schema's type at the dotted ``path`` (``a.b[0]``), or ''."""
    kind: Any = schema
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("["):
            args = typing.get_args(kind)
            if typing.get_origin(kind) is not list or not args:
                return ""
            kind = args[0]
        elif is_dataclass(kind):
            hints = _hints(kind)
            if part not in hints:
                return ""
            kind = hints[part]
        else:
            return ""
    return _describe(kind) if path else ""


def _lookup(node: Any, path: str) -> tuple[bool, Any]:
    """The value at the dotted ``path`` of ``node``, and whether it exists."""
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        try:
            node = node[int(part[1:-1])] if part.startswith("[") else node[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return False, None
    return bool(path), node


def require(ok: bool, key: str, value: object, allowed: str) -> None:
    """Raise a :class:`ConfigError` naming ``key``, its ``value`` and what is ``allowed``."""
    if not ok:
        raise ConfigError(f"invalid value for {label(key)}: {value!r}; expected {allowed}")


def choice(value: str, options: Mapping[str, T] | list[str], key: str) -> None:
    """Check that ``value`` is one of ``options``."""
    require(value in options, key, value, "one of " + ", ".join(sorted(options)))
