"""The model zoo: trained NCAs shipped with the package (weights and config, no pool or
optimiser), each with its figures, the command that trained it and a golden check (a short
seeded evaluation that must still give its recorded figure). ``zoo:NAME`` names one
wherever a run is taken; ``nca zoo`` lists them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from nca_cli.errors import ConfigError
from nca_cli.paths import output_root

PREFIX = "zoo:"
CATALOGUE = "zoo.json"


@dataclass
class Golden:
    """A seeded evaluation of the task (``Task.evaluate`` on ``split``, ``samples`` cases
    of a data task, ``steps`` steps) and the figure it gave when the model was added:
    ``metric`` must come out within ``tolerance`` (absolute) of ``value``."""

    metric: str
    value: float
    tolerance: float
    split: str
    steps: int
    samples: int = 0
    batch_size: int = 8
    seed: int = 0
    overrides: list[str] = field(default_factory=list)


@dataclass
class ZooModel:
    name: str
    file: str
    task: str
    description: str
    command: str  # what trained it
    iteration: int
    parameters: int
    metrics: dict[str, float]  # its published-comparison figures (from the reproduction)
    golden: Golden
    source: str = ""  # where the figures come from

    @property
    def path(self) -> Path:
        return models_folder() / self.file


def models_folder() -> Path:
    return Path(str(resources.files("nca_cli.zoo").joinpath("models")))


def catalogue_path() -> Path:
    return Path(str(resources.files("nca_cli.zoo").joinpath(CATALOGUE)))


def catalogue() -> dict[str, ZooModel]:
    """Every zoo model by name, in the catalogue's order."""
    path = catalogue_path()
    raw: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else {}
    return {
        name: ZooModel(name=name, **{**entry, "golden": Golden(**entry["golden"])})
        for name, entry in raw.items()
    }


def is_zoo_name(source: str | Path) -> bool:
    return str(source).startswith(PREFIX)


def zoo_checkpoint(source: str | Path) -> Path:
    """The checkpoint of ``zoo:NAME``; an unknown name is a ConfigError listing the zoo."""
    name = str(source)[len(PREFIX) :]
    models = catalogue()
    if name not in models:
        known = ", ".join(PREFIX + n for n in models) or "none"
        raise ConfigError(f"no zoo model {name!r} (given {source!r}); the zoo has: {known}")
    return models[name].path


def results_folder(checkpoint: Path) -> Path:
    """Where evaluations and exports of a checkpoint go: beside it, in its run folder; for
    a zoo model (which lives in the installed package), ``<outputs>/zoo/<name>``."""
    if checkpoint.resolve().parent == models_folder().resolve():
        return output_root() / "zoo" / checkpoint.stem
    return checkpoint.parent
