"""A bench case: an engine model in the training config's own sections (``model``,
``perception``) with the channel layout that a task would supply, and one training
iteration of it (grid, batch, rollout length, optimiser)."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from nca_cli.config import ConfigError, choice, parse, require
from nca_cli.engine.schema import ModelConfig, validate_model


@dataclass
class CaseLayout:
    """Which of ``model.channels`` are inputs, conditions, visible and alpha (in training the
    task says so); ``alive_channel`` defaults to the alpha channel."""

    inputs: int = 0
    conditions: int = 0
    visible: int = 4
    alpha: int | None = 3
    alive_channel: int | None = None


@dataclass
class BenchCase:
    """An engine model and one training iteration of it; the defaults are ``growing``."""

    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    perception: dict[str, Any] = field(default_factory=lambda: {"kind": "sobel"})
    layout: CaseLayout = field(default_factory=CaseLayout)
    grid: list[int] = field(default_factory=lambda: [48, 48])
    batch: int = 8
    steps: int = 64
    optimizer: str = "adam"
    lr: float = 2e-3
    gradient_checkpointing: int = 0
    bf16: bool = False
    init: str = "random"  # the first state: random values, or the growing task's seed
    params: int | None = None  # the parameter count the model must have (a published one)


def parse_case(node: Any, name: str) -> BenchCase:
    """One case, checked: unknown keys and bad values are errors that name the key."""
    where = f"cases.{name}"
    case = parse(node or {}, BenchCase, where)
    try:
        validate_model(case.model)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    require(case.model.scales == [1], f"{where}.model.scales", case.model.scales, "[1]")
    require(len(case.grid) == 2, f"{where}.grid", case.grid, "[height, width]")
    require(case.batch > 0 and case.steps > 0, f"{where}.steps", case.steps, "> 0")
    choice(case.init, ["random", "seed"], f"{where}.init")
    choice(case.optimizer, ["adam", "sgd"], f"{where}.optimizer")
    return case


def load_cases(path: Path | None) -> dict[str, BenchCase]:
    """The cases of a YAML file with a ``cases`` mapping (the shipped list without a path)."""
    import yaml

    if path is None:
        text = resources.files("nca_cli.conf").joinpath("bench.yaml").read_text()
        where = "bench.yaml"
    else:
        if not path.is_file():
            raise ConfigError(f"invalid value for '--case-file': {str(path)!r} is not a file")
        text, where = path.read_text(), str(path)
    data = yaml.safe_load(text) or {}
    raw = data.get("cases") if isinstance(data, dict) else None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: expected a non-empty 'cases' mapping of name -> case")
    return {str(name): parse_case(node, str(name)) for name, node in raw.items()}


def build_model(name: str, case: BenchCase) -> Any:
    """The case's NCA, built as training builds one (the last layer at zero)."""
    from nca_cli.engine.layout import ChannelLayout
    from nca_cli.engine.nca import build_nca

    lay = case.layout
    try:
        layout = ChannelLayout(
            case.model.channels, lay.inputs, lay.conditions, lay.visible, lay.alpha
        )
    except ValueError as err:
        raise ConfigError(f"case {name!r}: {err}") from None
    alive = layout.alpha_channel if lay.alive_channel is None else lay.alive_channel
    nca = build_nca(case.model, case.perception, layout, alive)
    params = sum(p.numel() for p in nca.parameters())
    if case.params is not None and params != case.params:
        raise ConfigError(f"case {name!r} has {params} parameters; 'params' says {case.params}")
    return nca
