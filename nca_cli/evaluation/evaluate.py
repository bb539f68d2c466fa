"""``nca eval`` end to end: load a run, run the protocol, write and log what it found."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from nca_cli.engine.damage import DamageConfig
from nca_cli.evaluation.report import flat_figures, print_table, write_outputs
from nca_cli.evaluation.runs import LoadedRun, load_run
from nca_cli.measures.protocol import (
    STAGES,
    ProtocolConfig,
    ProtocolResult,
    figures,
    run_protocol,
)
from nca_cli.paths import timestamp
from nca_cli.zoo import results_folder

# The DamageConfig fields each kind reads.
DAMAGE_FIELDS = {
    "circle": ("center", "center_y", "radius"),
    "rect": ("size",),
    "half": ("side",),
    "noise": ("rate",),
}


def describe(cfg: ProtocolConfig) -> tuple[str, dict[str, Any] | None]:
    """A short name of the perturbation and the damage settings that matter."""
    if cfg.mutate:
        return "mutation", None
    if cfg.damage is None:
        return "no perturbation", None
    d: DamageConfig = cfg.damage
    fields = {k: getattr(d, k) for k in DAMAGE_FIELDS[d.kind] if getattr(d, k) is not None}
    return f"{d.kind} damage", {"kind": d.kind, **fields}


def build_summary(
    loaded: LoadedRun, cfg: ProtocolConfig, result: ProtocolResult, overrides: list[str]
) -> dict[str, Any]:
    """Everything eval.json holds."""
    s = cfg.steps
    perturbation, damage = describe(cfg)
    figs = figures(result)
    for stage in STAGES:  # a stable schema: LPIPS keys exist (null) for non-image tasks
        figs.setdefault(f"lpips_{stage}", None)
    u = result.uncertainty
    return {
        "run": str(loaded.path.parent),
        "checkpoint": str(loaded.path),
        "iteration": loaded.iteration,
        "task": loaded.task.config.name,
        "perturbation": perturbation,
        "damage": damage,
        "mutate": cfg.mutate,
        "protocol": {
            "stage1": list(s.stage1),
            "stage2": s.stage2,
            "perturb_at": s.perturb_at,
            "stage3": s.stage3,
            "samples": result.samples,
            "seed": cfg.seed,
            "split": cfg.split,
            "lpips_net": cfg.lpips_net,
            "curve_every": cfg.curve_every,
        },
        "overrides": overrides,
        "primary_metric": result.primary,
        "direction": result.directions[result.primary],
        **figs,
        "uncertainty": {
            "of": result.uncertainty_of or None,
            "step": s.stage3,
            "mean": None if u is None else float(u.mean()),
            "max": None if u is None else float(u.max()),
            "reason": None if u is not None else "needs at least 2 samples",
        },
        "curves": {
            "steps": list(result.curve_steps),
            **{
                name: {"mean": c.mean(1).tolist(), "std": c.std(1, unbiased=False).tolist()}
                for name, c in result.curves.items()
            },
        },
    }


def log_to_wandb(
    loaded: LoadedRun,
    out: Path,
    summary: dict[str, Any],
    pictures: dict[str, np.ndarray],
    result: ProtocolResult,
) -> None:
    """An eval run in the training run's W&B group (its folder name when it had none)."""
    from nca_cli.training.loggers import make_logger

    cfg = loaded.run.logger
    if cfg.name == "none" or cfg.mode == "disabled":
        return
    run_dir = loaded.path.parent
    logger = make_logger(
        replace(cfg, group=cfg.group or run_dir.name, tags=[*cfg.tags, "eval"]),
        out,
        {
            "eval": {k: summary[k] for k in ("perturbation", "damage", "mutate", "protocol")},
            "train_run": str(run_dir),
            "train_wandb_id": loaded.wandb_id,
            "train": loaded.config,
        },
    )
    exit_code = 1
    try:
        step = loaded.iteration
        logger.metrics(flat_figures(summary, result), step=step)
        for name, image in pictures.items():
            logger.image(f"eval/{name}", image, step=step)
        if (out / "rollout.gif").is_file():
            logger.video("eval/rollout", out / "rollout.gif", step=step)
        exit_code = 0
    finally:
        logger.finish(exit_code)


def evaluate(
    checkpoint: Path, cfg: ProtocolConfig, overrides: list[str], wandb: bool = True
) -> tuple[Path, dict[str, Any]]:
    """Evaluate ``checkpoint`` into ``<run>/eval/<timestamp>/``; returns it and eval.json."""
    start = time.perf_counter()
    loaded = load_run(checkpoint, overrides)
    result = run_protocol(loaded.task, loaded.nca, cfg, loaded.run.device)
    stamp = timestamp()
    out = results_folder(checkpoint) / "eval" / stamp
    out.mkdir(parents=True)
    summary = build_summary(loaded, cfg, result, overrides)
    summary["seconds"] = time.perf_counter() - start
    pictures = write_outputs(result, summary, cfg.steps, out)
    print_table(summary, result, out)
    if wandb:
        log_to_wandb(loaded, out, summary, pictures, result)
    return out, summary
