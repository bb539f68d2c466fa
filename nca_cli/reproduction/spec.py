"""What a reproduction is: its runs, its evaluations and the published figures it is held
against, read from ``conf/reproduce/<name>.yaml``.

A reproduction file is data only; :mod:`nca_cli.reproduction.runner` trains and evaluates
what it names and :mod:`nca_cli.reproduction.table` sets ours beside the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from nca_cli.config import ConfigError, choice, parse, require
from nca_cli.engine.schema import DAMAGE_KINDS
from nca_cli.measures.steps import ProtocolSteps, review_steps

# The evaluation kinds: the task's own figures on a split (MNIST: accuracy at steps
# 20-30), the regeneration protocol of `nca eval` (stages, Recovery%), or `nca eval --sets`.
KINDS = ("task", "protocol", "sets")
PERTURBATIONS = ("none", "mutate", *DAMAGE_KINDS)


@dataclass
class RunSpec:
    """One training recipe: ``nca train`` overrides, trained once per seed."""

    overrides: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass
class DamageSpec:
    """The damage of a protocol evaluation, when it is not ``nca eval``'s default shape:
    ``center`` and ``radius`` as in ``nca eval --center X Y --radius R [R2]``."""

    center: list[float] = field(default_factory=lambda: [0.0, 0.0])
    radius: list[float] = field(default_factory=lambda: [0.4, 0.4])


@dataclass
class EvaluationSpec:
    """How a run is measured, at the end of training or at the iterations ``at`` (the
    runs keep those checkpoints: ``trainer.snapshots``)."""

    kind: str = "task"
    split: str = "test"
    at: list[int] = field(default_factory=list)
    # task: digits per batch; protocol: rollouts measured (0: the task's default)
    samples: int = 0
    batch_size: int = 1000
    # protocol
    perturbation: str = "none"
    damage: DamageSpec | None = None
    steps: ProtocolSteps = field(default_factory=review_steps)
    # sets
    sets: list[str] = field(default_factory=list)
    # changes to the run's saved config for this evaluation (as `nca eval key=value`)
    overrides: list[str] = field(default_factory=list)


@dataclass
class RowSpec:
    """One figure of the table: ``metric`` of ``run``'s ``evaluation`` (at iteration
    ``at``, or at the end), times ``scale`` (100 for percent), beside ``published``."""

    label: str = ""
    run: str = ""
    evaluation: str = ""
    metric: str = ""
    at: int | None = None
    scale: float = 1.0
    published: float | None = None
    source: str = ""


@dataclass
class OriginalSpec:
    """The paper's own code, run for the same iterations and seeds on the same data.

    ``script`` (in nca_cli/reproduction/original) takes ``ITERS SEED`` and the environment
    ``NCA_DATA_DIR``, ``EVAL_AT`` (iterations), ``MILESTONES`` (learning-rate milestones,
    scaled by the budget) and ``OUT``, and writes a JSON list of rows with ``iteration``
    and its figures; ``metrics`` maps our metric names to its keys (values as the table
    shows them). ``requires`` is the module it needs (an optional extra)."""

    run: str = ""
    script: str = ""
    requires: str = ""
    extra: str = ""
    iterations: int = 0
    milestones: list[int] = field(default_factory=list)
    metrics: dict[str, str] = field(default_factory=dict)
    label: str = "original code"


@dataclass
class Reproduction:
    title: str = ""
    source: str = ""
    notes: str = ""
    runs: dict[str, RunSpec] = field(default_factory=dict)
    evaluations: dict[str, EvaluationSpec] = field(default_factory=dict)
    rows: list[RowSpec] = field(default_factory=list)
    original: OriginalSpec | None = None
    name: str = ""  # the file's, set by load()


def names() -> list[str]:
    """The reproductions shipped in conf/reproduce/."""
    folder = resources.files("nca_cli.conf") / "reproduce"
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def load(name: str) -> Reproduction:
    """The reproduction called ``name``, checked: every row names a run and an
    evaluation that exist."""
    known = names()
    if name not in known:
        raise ConfigError(
            f"unknown reproduction {name!r}; known: {', '.join(known)} (nca reproduce --list)"
        )
    text = (resources.files("nca_cli.conf") / "reproduce" / f"{name}.yaml").read_text()
    raw: dict[str, Any] = yaml.safe_load(text) or {}
    spec = parse(raw, Reproduction, f"reproduce/{name}")
    spec.name = name
    validate(spec)
    return spec


def validate(spec: Reproduction) -> None:
    where = f"reproduce/{spec.name}"
    require(bool(spec.runs), f"{where}.runs", spec.runs, "at least one run")
    for key, run in spec.runs.items():
        require(bool(run.seeds), f"{where}.runs.{key}.seeds", run.seeds, "at least one seed")
    for key, ev in spec.evaluations.items():
        choice(ev.kind, list(KINDS), f"{where}.evaluations.{key}.kind")
        choice(ev.perturbation, list(PERTURBATIONS), f"{where}.evaluations.{key}.perturbation")
    for i, row in enumerate(spec.rows):
        at = f"{where}.rows[{i}]"
        choice(row.run, list(spec.runs), f"{at}.run")
        choice(row.evaluation, list(spec.evaluations), f"{at}.evaluation")
        ev = spec.evaluations[row.evaluation]
        if row.at is not None:
            require(row.at in ev.at, f"{at}.at", row.at, f"one of the evaluation's at {ev.at}")
    if spec.original is not None:
        choice(spec.original.run, list(spec.runs), f"{where}.original.run")
