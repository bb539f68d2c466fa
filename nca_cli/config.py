"""Typed views of the composed Hydra config, and the one error type for bad configuration.

Hydra composes plain dictionaries; every consumer turns its section into a dataclass with
:func:`parse`, so an unknown key or a wrong type fails before any work, naming the key.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from nca_cli.errors import ConfigError
from nca_cli.shortcuts import expand, label

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


@dataclass
class ModelConfig:
    """The state's size and the update rule around the perception: MLP sizes,
    stochasticity, alive mask."""

    channels: int = 16  # the whole state; the task's layout says which are inputs, visible
    # Hidden layer sizes of the update MLP; one number is one layer (model.hidden=64).
    hidden: list[int] = field(default_factory=lambda: [128])
    activation: str = "relu"
    fire_rate: float = 0.5
    alive_mask: bool = True
    alive_threshold: float = 0.1
    # Alive = 3x3 max-pool of the alive channel > threshold (growing NCA); False: the
    # channel itself > threshold (self-classifying MNIST: input > 0.1).
    alive_pool: bool = True
    padding: str = "zeros"
    update_noise: float = 0.0
    zero_init: bool = True
    # Initial weights: PyTorch's defaults, or Glorot-uniform weights and zero biases (the
    # Keras defaults of the TensorFlow notebooks).
    init: str = "torch"
    # Coarse-to-fine cascade (Med-NCA / NCALab): one NCA per scale, coarsest first; [1] is
    # a single NCA at full resolution.
    scales: list[int] = field(default_factory=lambda: [1])

    def ignored(self) -> dict[str, str]:
        """Fields these values leave unread, and why (``nca_cli.training.checks.ignored``
        collects them so that an override of one is refused)."""
        if self.alive_mask:
            return {}
        why = "model.alive_mask is false: every cell lives"
        return {"alive_threshold": why, "alive_pool": why}


@dataclass
class StepRange:
    """Rollout length drawn uniformly from ``[min, max]``, both ends included."""

    min: int = 64
    max: int = 96


@dataclass
class OptimizerConfig:
    name: str = "adam"
    lr: float = 2e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, stepped once per iteration.

    ``piecewise`` multiplies the rate by ``gamma`` at each of ``milestones`` (the Distill
    recipe: 2e-3 then 2e-4 after 2000); ``cosine`` anneals to ``min_lr`` over the run;
    ``exponential`` multiplies by ``gamma`` every iteration. ``warmup`` > 0 first raises
    the rate linearly, lr * i / warmup at iteration i (from 0, as NCAtorch does); the
    schedule then runs over the remaining iterations (the NCA review's recipes).
    """

    name: str = "constant"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    min_lr: float = 0.0
    warmup: int = 0

    def ignored(self) -> dict[str, str]:
        reads = {
            "piecewise": ("milestones", "gamma"),
            "cosine": ("min_lr",),
            "exponential": ("gamma",),
        }.get(self.name, ())
        why = f"trainer.schedule.name is {self.name!r}, which reads only " + (
            ", ".join(reads) if reads else "the learning rate"
        )
        return {key: why for key in ("milestones", "gamma", "min_lr") if key not in reads}


def validate_schedule(cfg: ScheduleConfig, iterations: int) -> None:
    require(
        0 <= cfg.warmup <= max(iterations, 0),
        "trainer.schedule.warmup",
        cfg.warmup,
        f"0 (none) or a number of iterations up to trainer.iterations ({iterations})",
    )


@dataclass
class GradConfig:
    """Gradient treatment before the optimiser step."""

    normalize: bool = False
    clip_norm: float | None = None
    accumulate: int = 1


@dataclass
class ProtocolSteps:
    """The regeneration protocol of the NCA review (Spitznagel & Keuper 2026): Stage 1 is
    the mean over steps ``stage1`` (both ends included), Stage 2 the step ``stage2``, the
    perturbation hits the state after ``perturb_at`` steps, Stage 3 is step ``stage3``."""

    stage1: list[int] = field(default_factory=lambda: [64, 96])
    stage2: int = 149
    perturb_at: int = 150
    stage3: int = 449


def validate_protocol_steps(steps: ProtocolSteps, where: str) -> None:
    """Stages in order: Stage 1 and 2 before the perturbation, Stage 3 after it."""
    lo_hi = steps.stage1
    require(
        len(lo_hi) == 2 and 0 <= lo_hi[0] <= lo_hi[1] <= steps.perturb_at,
        f"{where}.stage1",
        lo_hi,
        f"a window [first, last] of steps with 0 <= first <= last <= perturb_at "
        f"({steps.perturb_at})",
    )
    require(
        0 <= steps.stage2 <= steps.perturb_at,
        f"{where}.stage2",
        steps.stage2,
        f"a step between 0 and perturb_at ({steps.perturb_at})",
    )
    require(steps.perturb_at >= 1, f"{where}.perturb_at", steps.perturb_at, "a step >= 1")
    require(
        steps.stage3 > steps.perturb_at,
        f"{where}.stage3",
        steps.stage3,
        f"a step after perturb_at ({steps.perturb_at})",
    )


@dataclass
class RegenCheckConfig:
    """A cheap run of the ``nca eval`` protocol during training, so every run logs LPIPS
    per stage and Recovery% (``regen/*``): ``samples`` rollouts perturbed by
    ``perturbation`` (a damage kind, or ``mutate``) every ``every`` iterations (0: only at
    the end). Off in ``trainer=smoke``: loading LPIPS alone takes seconds."""

    enabled: bool = True
    every: int = 0
    samples: int = 2
    perturbation: str = "circle"
    steps: ProtocolSteps = field(default_factory=ProtocolSteps)

    def ignored(self) -> dict[str, str]:
        if self.enabled:
            return {}
        why = "trainer.regen_check.enabled is false"
        return dict.fromkeys(("every", "samples", "perturbation", "steps"), why)


@dataclass
class TrainerConfig:
    iterations: int = 2000
    batch_size: int = 8
    steps: StepRange = field(default_factory=StepRange)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    grad: GradConfig = field(default_factory=GradConfig)
    bf16: bool = False
    gradient_checkpointing: int = 0
    checkpoint_every: int = 100
    # Iterations whose checkpoint is also kept as iter_<N>.ckpt (a reproduction evaluates
    # accuracy against training length from them).
    snapshots: list[int] = field(default_factory=list)
    log_every: int = 10
    image_every: int = 200
    progress: bool = True
    regen_check: RegenCheckConfig = field(default_factory=RegenCheckConfig)


@dataclass
class LoggerConfig:
    name: str = "wandb"
    project: str = "nca"
    entity: str | None = None
    mode: str = "offline"
    group: str | None = None
    tags: list[str] = field(default_factory=list)

    def ignored(self) -> dict[str, str]:
        if self.name != "none":
            return {}
        why = "logger=none logs nothing to W&B"
        return dict.fromkeys(("project", "entity", "mode", "group", "tags"), why)


@dataclass
class RunConfig:
    """The top level of a training config; task, dataset, loss and perception are checked
    by their owners (the task and the perception registry)."""

    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    resume: str | None = None
    task: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    perception: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


PADDINGS = ("zeros", "circular", "reflect", "replicate")


def parse_run_config(cfg: Mapping[str, Any] | DictConfig) -> RunConfig:
    """Parse and range-check the parts of the config that the engine and trainer own."""
    model = cfg.get("model") if isinstance(cfg, Mapping | DictConfig) else None
    if isinstance(model, Mapping | DictConfig) and isinstance(model.get("hidden"), int):
        cfg = {**cfg, "model": {**model, "hidden": [model["hidden"]]}}  # one layer
    run = parse(cfg, RunConfig, "")
    m, t = run.model, run.trainer
    choice(m.padding, list(PADDINGS), "model.padding")
    choice(m.init, ["torch", "glorot"], "model.init")
    require(0.0 < m.fire_rate <= 1.0, "model.fire_rate", m.fire_rate, "a number in (0, 1]")
    require(all(h > 0 for h in m.hidden), "model.hidden", m.hidden, "positive layer sizes")
    require(m.update_noise >= 0, "model.update_noise", m.update_noise, "a number >= 0")
    require(
        len(m.scales) > 0 and all(s >= 1 for s in m.scales) and m.scales[-1] == 1,
        "model.scales",
        m.scales,
        "downsampling factors >= 1, coarsest first, ending with 1 (e.g. [4, 2, 1])",
    )
    require(m.channels > 0, "model.channels", m.channels, "a positive integer")
    require(t.iterations >= 0, "trainer.iterations", t.iterations, "an integer >= 0")
    require(t.batch_size > 0, "trainer.batch_size", t.batch_size, "a positive integer")
    require(t.steps.min >= 1, "trainer.steps.min", t.steps.min, "an integer >= 1")
    require(
        t.steps.max >= t.steps.min,
        "trainer.steps.max",
        t.steps.max,
        f"an integer >= trainer.steps.min ({t.steps.min})",
    )
    choice(t.optimizer.name, ["adam", "adamw"], "trainer.optimizer.name")
    require(t.optimizer.lr > 0, "trainer.optimizer.lr", t.optimizer.lr, "a positive number")
    choice(
        t.schedule.name,
        ["constant", "piecewise", "cosine", "exponential"],
        "trainer.schedule.name",
    )
    validate_schedule(t.schedule, t.iterations)
    require(t.grad.accumulate >= 1, "trainer.grad.accumulate", t.grad.accumulate, "an integer >= 1")
    clip = t.grad.clip_norm
    require(clip is None or clip > 0, "trainer.grad.clip_norm", clip, "a positive number or null")
    require(
        all(0 < i <= t.iterations for i in t.snapshots),
        "trainer.snapshots",
        t.snapshots,
        f"iterations between 1 and trainer.iterations ({t.iterations})",
    )
    for key in ("checkpoint_every", "log_every", "image_every"):
        value = getattr(t, key)
        require(value > 0, f"trainer.{key}", value, "a positive integer")
    require(
        t.gradient_checkpointing >= 0,
        "trainer.gradient_checkpointing",
        t.gradient_checkpointing,
        "0 (off) or the number of steps per checkpointed block",
    )
    rc = t.regen_check
    require(rc.every >= 0, "trainer.regen_check.every", rc.every, "0 (at the end) or a period")
    require(rc.samples >= 1, "trainer.regen_check.samples", rc.samples, "an integer >= 1")
    from nca_cli.engine.damage import DAMAGE_KINDS  # the engine imports this module

    choice(rc.perturbation, [*DAMAGE_KINDS, "mutate"], "trainer.regen_check.perturbation")
    validate_protocol_steps(rc.steps, "trainer.regen_check.steps")
    choice(run.logger.name, ["wandb", "none"], "logger.name")
    choice(run.logger.mode, ["offline", "online", "disabled"], "logger.mode")
    require(
        run.device == "cpu" or run.device.startswith("cuda"),
        "device",
        run.device,
        "'cpu' or 'cuda[:N]'",
    )
    return run


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


# ``scheme://user:password@host``: the password part of a URL.
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)([^/\s]+)(?=@)")
# Keys whose values are secrets wherever they appear in a config.
_SECRET_KEY = re.compile(r"password|passwd|secret|token|api_?key", re.IGNORECASE)


def mask_text(text: str) -> str:
    """``text`` with the passwords of any URLs in it replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***", text)


def mask_files(paths: Iterable[Path]) -> None:
    """Mask URL passwords in saved text files (Hydra's ``.hydra/*.yaml``, ``multirun.yaml``),
    which Hydra writes from the command line before nca sees the config."""
    from nca_cli.atomic import write_text_atomic

    for path in paths:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        if mask_text(text) != text:
            write_text_atomic(path, mask_text(text))


def mask_secrets(node: Any) -> Any:
    """A copy of a config with URL passwords and secret-named values replaced by ``***``,
    for what is saved (config.yaml, checkpoints, W&B) or logged."""
    if isinstance(node, Mapping):
        return {
            k: "***" if _SECRET_KEY.search(str(k)) and isinstance(v, str) and v else mask_secrets(v)
            for k, v in node.items()
        }
    if isinstance(node, list | tuple):
        return [mask_secrets(v) for v in node]
    return mask_text(node) if isinstance(node, str) else node


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
