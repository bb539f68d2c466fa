"""The regeneration check of a training run: the NCA review's protocol on a few samples
every ``trainer.regen_check.every`` iterations, so that every run logs LPIPS per stage and
Recovery% as it trains."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from nca_cli.measures import EvalError
from nca_cli.measures.protocol import STAGES, ProtocolConfig, default_damage, figures, run_protocol
from nca_cli.training.schema import RegenCheckConfig

if TYPE_CHECKING:
    from nca_cli.engine.cascade import CascadeNCA
    from nca_cli.engine.nca import NCA
    from nca_cli.tasks.base import Task

log = logging.getLogger(__name__)


def regeneration_check(
    task: Task, nca: NCA | CascadeNCA, cfg: RegenCheckConfig, seed: int, device: torch.device | str
) -> dict[str, float]:
    """The protocol on ``cfg.samples`` samples without pictures: stage means of every
    metric and Recovery% (when defined), as flat floats for a training log.

    Missing LPIPS weights (offline, no TORCH_HOME copy) skip the check with a warning
    rather than end the training run they would only annotate.
    """
    mutate = cfg.perturbation == "mutate"
    protocol = ProtocolConfig(
        steps=cfg.steps,
        samples=cfg.samples,
        seed=seed,
        damage=None if mutate else default_damage(cfg.perturbation),
        mutate=mutate,
        curve_every=0,
        detail=False,
    )
    try:
        figs = figures(run_protocol(task, nca, protocol, device))
    except EvalError as err:
        log.warning("regeneration check skipped: %s", err)
        return {}
    out = {k: v["mean"] for k, v in figs.items() if k.endswith(STAGES) and v["mean"] is not None}
    if figs["recovery_pct"]["value"] is not None:
        out["recovery_pct"] = figs["recovery_pct"]["value"]
    return out
