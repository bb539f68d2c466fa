"""The regeneration protocol: grow, measure Stage 1 and 2, perturb, regrow, measure Stage 3.

It sees a task through the :class:`~nca_cli.tasks.base.Task` contract only:
``evaluation_batches`` gives the samples, ``sample_metrics`` per-sample figures,
``eval_images`` the RGB pairs of image tasks (then LPIPS is the primary metric, otherwise
the task's ``objective``), ``mutate`` the alternative to damage, ``render`` the pictures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from nca_cli.config import ConfigError
from nca_cli.engine.damage import DamageConfig, damage_mask, validate_damage
from nca_cli.images import to_uint8
from nca_cli.measures import EvalError
from nca_cli.measures.metrics import IMAGE_METRICS, image_metrics, recovery_pct, summary
from nca_cli.measures.steps import ProtocolSteps, review_steps, validate_protocol_steps

if TYPE_CHECKING:
    from nca_cli.engine.cascade import CascadeNCA
    from nca_cli.engine.nca import NCA
    from nca_cli.engine.pool import Batch
    from nca_cli.tasks.base import Task

log = logging.getLogger(__name__)

STAGES = ("stage1", "stage2", "damaged", "stage3")
# Steps rolled out per call: bounds the memory of the kept trajectory.
CHUNK = 16
# Samples shown in the before/damaged/recovered strip.
STRIP_SAMPLES = 4


def default_damage(kind: str) -> DamageConfig:
    """The evaluation's damage of ``kind``: a centred disc of 0.4 (of half the shorter
    side), a rectangle of 0.4 of each side placed at random, the left half, or half the
    cells at random. Fixed shapes make runs comparable; the seed fixes the rest."""
    return DamageConfig(
        kind=kind, center=[0.0, 0.0], radius=[0.4, 0.4], size=[0.4, 0.4], side="left"
    )


@dataclass
class ProtocolConfig:
    """``damage`` None and ``mutate`` off: nothing perturbs (Recovery% is then undefined).
    ``curve_every`` > 0 also measures every that many steps for the metric curve (the
    stage steps are always measured); ``detail`` keeps pictures and the uncertainty map."""

    steps: ProtocolSteps = field(default_factory=review_steps)
    samples: int = 8
    seed: int = 0
    damage: DamageConfig | None = field(default_factory=lambda: default_damage("circle"))
    mutate: bool = False
    split: str = "val"
    curve_every: int = 5
    lpips_net: str = "alex"
    detail: bool = True


@dataclass
class ProtocolResult:
    """Per-sample metric values along the rollout and at the stages, and pictures."""

    primary: str
    directions: dict[str, str]  # metric -> "minimize" | "maximize" | "" (unknown)
    curve_steps: list[int]  # perturb_at appears twice: before and right after
    curves: dict[str, Tensor]  # metric -> (len(curve_steps), B)
    stages: dict[str, dict[str, Tensor]]  # stage or "before" (perturbation) -> metric -> (B,)
    samples: int
    frames: list[np.ndarray] = field(default_factory=list)  # sample 0 at every step, uint8
    strip: dict[str, np.ndarray] = field(default_factory=dict)  # column -> (n, H, W, 3)
    uncertainty: Tensor | None = None  # (H, W) per-cell std over the samples at stage 3
    uncertainty_of: str = ""


def validate_protocol(cfg: ProtocolConfig, task: Task) -> None:
    validate_protocol_steps(cfg.steps, "protocol")
    if cfg.samples < 1:
        raise ConfigError(f"invalid value for 'samples': {cfg.samples}; expected >= 1")
    if cfg.curve_every < 0:
        raise ConfigError(f"invalid value for 'curve_every': {cfg.curve_every}; expected >= 0")
    if cfg.damage is not None:
        validate_damage(cfg.damage, "damage")
    if cfg.mutate and cfg.damage is not None:
        raise ConfigError("mutation replaces damage: choose one perturbation")
    if cfg.mutate and not task.mutable:
        raise ConfigError(
            f"task {task.config.name!r} has no mutation: mutating needs a conditional task "
            "(the condition is switched) or a classification task (the input is switched); "
            "use damage instead"
        )
    if not task.has_split(cfg.split):
        raise ConfigError(f"task {task.config.name!r} has no {cfg.split!r} split to evaluate")


def _measure(task: Task, state: Tensor, batch: Batch, net: str) -> dict[str, Tensor]:
    """Every per-sample metric of ``state``: image metrics first, then the task's own."""
    out: dict[str, Tensor] = {}
    images = task.eval_images(state, batch)
    if images is not None:
        out.update(image_metrics(*images, net))
    for name, value in task.sample_metrics(state, batch).items():
        out.setdefault(name, value)
    return {k: v.detach().float().cpu() for k, v in out.items()}


def _perturb(
    task: Task, cfg: ProtocolConfig, state: Tensor, batch: Batch, g: torch.Generator
) -> tuple[Tensor, Batch]:
    """The state and batch right after the perturbation; fixed input channels survive."""
    if cfg.mutate:
        batch = task.mutate({**batch, "state": state}, g)
        return batch["state"], batch
    if cfg.damage is None:
        return state, batch
    n, _, h, w = state.shape
    fixed = task.layout.fixed
    mask = damage_mask(cfg.damage, n, h, w, g).to(state)
    return torch.cat([state[:, :fixed], state[:, fixed:] * mask], 1), batch


@torch.no_grad()
def run_protocol(
    task: Task, nca: NCA | CascadeNCA, cfg: ProtocolConfig, device: torch.device | str = "cpu"
) -> ProtocolResult:
    """Roll out ``cfg.samples`` evaluation samples through the protocol."""
    validate_protocol(cfg, task)
    s = cfg.steps
    g = torch.Generator().manual_seed(cfg.seed)
    batch = next(iter(task.evaluation_batches(cfg.split, cfg.samples)))
    batch = {k: v[: cfg.samples].to(device) for k, v in batch.items()}
    record = set(range(s.stage1[0], s.stage1[1] + 1)) | {s.stage2, s.perturb_at, s.stage3}
    if cfg.curve_every:
        record |= set(range(0, s.stage3 + 1, cfg.curve_every))
    steps: list[int] = []
    values: list[dict[str, Tensor]] = []
    frames: list[np.ndarray] = []

    def observe(t: int, x: Tensor) -> None:
        if t in record:  # `batch` as it is now: a mutation may change the targets
            steps.append(t)
            values.append(_measure(task, x, batch, cfg.lpips_net))
        if cfg.detail:
            frames.append(task.render(x[:1])[0])

    def grow(x: Tensor, t: int, end: int) -> Tensor:
        while t < end:
            n = min(CHUNK, end - t)
            x, states = nca.rollout(x, n, g, trajectory=True)
            for state in states[-n:]:  # a cascade's finest level comes last
                t += 1
                observe(t, state)
        return x

    x = batch["state"]
    observe(0, x)
    before = grow(x, 0, s.perturb_at)
    x, batch = _perturb(task, cfg, before, batch, g)
    damaged = _measure(task, x, batch, cfg.lpips_net)
    steps.append(s.perturb_at)
    values.append(damaged)
    if cfg.detail:
        frames.append(task.render(x[:1])[0])
    after = x
    final = grow(x, s.perturb_at, s.stage3)

    names = list(values[0])
    curves = {m: torch.stack([v[m] for v in values]) for m in names}
    at = {t: i for i, t in reversed(list(enumerate(steps)))}  # first index: before damage
    window = [at[t] for t in range(s.stage1[0], s.stage1[1] + 1)]
    stages = {
        "before": {m: curves[m][at[s.perturb_at]] for m in names},
        "stage1": {m: curves[m][window].mean(0) for m in names},
        "stage2": {m: curves[m][at[s.stage2]] for m in names},
        "damaged": damaged,
        "stage3": {m: curves[m][at[s.stage3]] for m in names},
    }
    images = task.eval_images(final, batch)
    primary = "lpips" if images is not None else task.objective[0]
    if primary not in names:
        raise EvalError(
            f"task {task.config.name!r}: its objective {primary!r} is not among its "
            f"sample_metrics ({', '.join(names)}); the protocol needs it per sample"
        )
    directions = {m: IMAGE_METRICS.get(m, "") for m in names}
    directions[task.objective[0]] = task.objective[1]
    result = ProtocolResult(primary, directions, steps, curves, stages, len(x), frames)
    if cfg.detail:
        k = STRIP_SAMPLES
        result.strip = {
            "before": task.render(before[:k]),
            "damaged": task.render(after[:k]),
            "recovered": task.render(final[:k]),
        }
        if images is not None:
            result.strip["target"] = to_uint8(images[1][:k].permute(0, 2, 3, 1).cpu().numpy())
        if len(final) > 1:
            shown = images[0] if images is not None else final[:, task.layout.visible_slice]
            result.uncertainty = shown.float().std(dim=0, unbiased=False).mean(0).cpu()
            result.uncertainty_of = "RGB" if images is not None else "visible channels"
    return result


def figures(result: ProtocolResult) -> dict[str, Any]:
    """The numbers of a protocol run: ``<metric>_<stage>`` summaries (mean, std,
    per-sample), ``recovery_pct`` on the primary metric and ``recovery_by_metric``.

    The headline Recovery% uses the stage means; per-sample values come beside it.
    """
    out: dict[str, Any] = {}
    for metric in result.curves:
        for stage in STAGES:
            out[f"{metric}_{stage}"] = summary(result.stages[stage][metric])
    by_metric: dict[str, Any] = {}
    for metric in result.curves:
        pre, dmg, fin, bef = (
            result.stages[st][metric] for st in ("stage2", "damaged", "stage3", "before")
        )
        value, reason = recovery_pct(
            float(pre.mean()), float(dmg.mean()), float(fin.mean()), before=float(bef.mean())
        )
        per_sample = [
            recovery_pct(float(a), float(b), float(c), before=float(d))[0]
            for a, b, c, d in zip(pre, dmg, fin, bef, strict=True)
        ]
        by_metric[metric] = {"value": value, "reason": reason, **summary(per_sample)}
    out["recovery_pct"] = {"metric": result.primary, **by_metric[result.primary]}
    out["recovery_by_metric"] = by_metric
    return out
