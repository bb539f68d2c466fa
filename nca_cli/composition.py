"""Making a config: Hydra's composition as ``nca train`` does it, the config groups and
their options, and overrides applied to a saved run's config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nca_cli.errors import ConfigError
from nca_cli.shortcuts import expand, label


def compose(overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Compose the training config with Hydra, as ``nca train`` would, and resolve it.

    For programmatic use (tests, orchestration); ``nca train`` itself goes through
    ``@hydra.main`` so that ``--help``, ``--cfg`` and completion work.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    overrides = expand(overrides)
    check_group_overrides(overrides)
    with initialize_config_module(config_module="nca_cli.conf", version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides)
    return resolve(cfg)


def resolve(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as plain containers; a broken interpolation is a ConfigError."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        msg = str(getattr(err, "msg", err)).splitlines()[0]
        raise ConfigError(f"invalid value for {label(str(err.full_key))}: {msg}") from None
    assert isinstance(resolved, dict)
    return resolved  # type: ignore[return-value]


def config_groups() -> dict[str, list[str]]:
    """The config groups of ``nca_cli.conf`` and their options (``task``: growing, ...)."""
    from importlib import resources

    groups: dict[str, list[str]] = {}
    for group in resources.files("nca_cli.conf").iterdir():
        if group.is_dir() and not group.name.startswith(("_", ".")) and group.name != "hydra":
            options = [o.name.removesuffix(".yaml") for o in group.iterdir()]
            groups[group.name] = sorted(o for o in options if not o.startswith(("_", ".")))
    return groups


def check_group_overrides(overrides: list[str]) -> None:
    """Each option chosen for a config group (``perception=conv``, or each value of a sweep
    ``perception=conv,nope``) exists; Hydra fails on ``dataset=3`` with a bare ValueError and
    a traceback and names no options for a missing one, so say which options exist."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return  # Hydra reports grammar errors itself, naming the override
    groups = config_groups()
    for item in parsed:
        if not item.key_or_group:
            raise ConfigError(
                f"invalid override {item.input_line!r}: it names no key (overrides are "
                "key=value, e.g. fire_rate=0.3)"
            )
        if item.key_or_group not in groups or item.package or item.is_delete():
            continue
        value = item.value()
        if item.is_sweep_override():
            values = list(getattr(value, "list", []))  # the choices; Hydra refuses the rest
        else:
            values = value if isinstance(value, list) else [value]
        options = groups[item.key_or_group]
        for option in values:
            if not isinstance(option, str) or option not in options:
                raise ConfigError(
                    f"invalid value for config group '{item.key_or_group}': {option!r}; "
                    f"expected one of {', '.join(options)}"
                )


def apply_overrides(config: Mapping[str, Any], overrides: list[str], what: str) -> dict:
    """A saved, resolved run config with ``key=value`` overrides (Hydra's syntax) applied.

    Keys must exist (shortcuts such as ``fire_rate`` name their fields) and config groups
    cannot be swapped (the saved weights would not fit another model); ``what`` names the
    run in error messages.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(expand(overrides))
    except OverrideParseException as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"{first}; overrides are key=value (e.g. fire_rate=0.3)") from None
    saved = OmegaConf.create(_upgrade(config))
    for item in parsed:
        key, value = item.key_or_group, item.value()
        if item.is_add() or item.is_delete() or item.package:
            raise ConfigError(f"cannot add or delete config keys of {what}: {item.input_line}")
        old = OmegaConf.select(saved, key, default="__missing__")
        if old == "__missing__":
            raise ConfigError(f"unknown config key {label(key)} ({what})")
        if isinstance(old, DictConfig):
            raise ConfigError(
                f"cannot change config group '{key}' of {what}: its weights fit the saved "
                "model only; override single keys (e.g. model.fire_rate=0.3)"
            )
        OmegaConf.update(saved, key, value, merge=False)
    resolved = OmegaConf.to_container(saved, resolve=True)
    assert isinstance(resolved, dict)
    return resolved


def _upgrade(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config saved before the shortcut keys became names of their fields: its top-level
    copies (interpolated into the fields when it was saved) dropped, ``channels`` moved to
    ``model.channels``."""
    out = dict(config)
    for key in ("hidden", "fire_rate", "lr", "pool_size"):
        out.pop(key, None)
    if "channels" in out and isinstance(out.get("model"), Mapping):
        out["model"] = {"channels": out.pop("channels"), **out["model"]}
    return out
