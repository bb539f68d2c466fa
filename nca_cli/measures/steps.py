"""The steps of the regeneration protocol (no torch: ``nca eval --help`` reads them). The
review's values live in ``conf/protocol/review.yaml``, which the trainer presets load too."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from importlib import resources

from nca_cli.config import parse, require


@dataclass
class ProtocolSteps:
    """Stage 1 is the mean over steps ``stage1`` (both ends included), Stage 2 the step
    ``stage2``, the perturbation hits the state after ``perturb_at`` steps, Stage 3 is step
    ``stage3``."""

    stage1: list[int]
    stage2: int
    perturb_at: int
    stage3: int


def review_steps() -> ProtocolSteps:
    """The protocol steps of the NCA review (Spitznagel & Keuper 2026): a fresh copy, as
    every config parse builds one and may change it."""
    steps = _review_steps()
    return replace(steps, stage1=list(steps.stage1))


@functools.cache
def _review_steps() -> ProtocolSteps:
    """The file, read once per process (every parsed config takes its defaults from it)."""
    import yaml

    text = resources.files("nca_cli.conf").joinpath("protocol/review.yaml").read_text()
    return parse(yaml.safe_load(text), ProtocolSteps, "protocol")


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
