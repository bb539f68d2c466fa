"""``nca eval --sets``: grow every sample set of a task (train, validation and the task's
own, such as out-of-distribution inputs) and measure LPIPS and MSE where a ground truth
exists; with a second run, compare both side by side (input | run A | run B | target)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nca_cli.atomic import write_text_atomic
from nca_cli.evaluation.report import GAP, _label
from nca_cli.evaluation.runs import LoadedRun
from nca_cli.images import save_png, to_uint8, upscale
from nca_cli.measures import EvalError
from nca_cli.measures.metrics import image_metrics, summary
from nca_cli.paths import timestamp
from nca_cli.zoo import results_folder

# The metrics of sets with a ground truth (RGB over white, as `nca eval` names them).
METRICS = ("lpips", "image_mse")
# Grid cells are enlarged to about this many pixels a side.
CELL = 128


@dataclass
class GrownSet:
    """Per-sample metrics (None: the set has no ground truth) and uint8 pictures."""

    metrics: dict[str, torch.Tensor] | None
    inputs: np.ndarray
    outputs: np.ndarray
    targets: np.ndarray | None


@torch.no_grad()
def grow_set(
    loaded: LoadedRun, name: str, steps: int, seed: int, net: str, batch_size: int = 16
) -> GrownSet:
    """Every sample of set ``name`` grown ``steps`` steps (fire-rate randomness from
    ``seed``), its pictures and, where the task gives target images, LPIPS and MSE."""
    task, nca, device = loaded.task, loaded.nca, loaded.run.device
    g = torch.Generator().manual_seed(seed)
    values: dict[str, list[torch.Tensor]] = {}
    inputs, outputs, targets = [], [], []
    truth = True
    for batch in task.evaluation_batches(name, batch_size):
        batch = {k: v.to(device) for k, v in batch.items()}
        state = nca.rollout(batch["state"], steps, g)[0]
        inputs.append(task.render(batch["state"]))
        outputs.append(task.render(state))
        images = task.eval_images(state, batch)
        if images is None:
            truth = False
            continue
        for key, value in image_metrics(*images, net).items():
            if key in METRICS:
                values.setdefault(key, []).append(value.cpu())
        targets.append(to_uint8(images[1].permute(0, 2, 3, 1).cpu().numpy()))
    return GrownSet(
        {k: torch.cat(v) for k, v in values.items()} if truth else None,
        np.concatenate(inputs),
        np.concatenate(outputs),
        np.concatenate(targets) if truth else None,
    )


def check_comparable(runs: list[LoadedRun]) -> None:
    """Runs compared side by side must grow the same samples."""
    first = runs[0]
    for other in runs[1:]:
        same = (
            other.task.config.name == first.task.config.name
            and other.config.get("dataset") == first.config.get("dataset")
            and other.task.splits == first.task.splits
        )
        if not same:
            raise EvalError(
                f"{other.path.parent} and {first.path.parent} do not grow the same samples: "
                "their task, dataset settings or splits differ"
            )


def set_names(task: Any, wanted: list[str]) -> list[str]:
    """``wanted`` (all the task's sets when empty), each checked to exist."""
    available = [s for s in task.evaluation_sets if task.has_split(s)]
    for name in wanted:
        if name not in available and not task.has_split(name):
            raise EvalError(
                f"task {task.config.name!r} has no set {name!r}; its sets: " + ", ".join(available)
            )
    return wanted or available


def grid_image(
    names: list[str], grown: dict[str, list[GrownSet]], labels: list[str], show: int
) -> np.ndarray:
    """Per set, up to ``show`` samples as rows: input | each run | target (grey: none)."""
    side = max(grown[names[0]][0].inputs.shape[1:3])
    factor = max(1, CELL // side)
    blocks = []
    for name in names:
        runs = grown[name]
        n = min(show, len(runs[0].inputs))
        blank = np.full_like(runs[0].inputs[:n], 230)
        cols = [("input", runs[0].inputs[:n])]
        cols += [(label, r.outputs[:n]) for label, r in zip(labels, runs, strict=True)]
        cols.append(("target", runs[0].targets[:n] if runs[0].targets is not None else blank))
        columns = []
        for title, images in cols:
            cells = [upscale(image, factor) for image in images]
            gap = np.full((2, cells[0].shape[1], 3), GAP, np.uint8)
            body = np.concatenate([c for cell in cells for c in (cell, gap)][:-1])
            columns.append(np.concatenate([_label(body.shape[1], title), body]))
        gap = np.full((columns[0].shape[0], 2, 3), GAP, np.uint8)
        body = np.concatenate([c for column in columns for c in (column, gap)][:-1], axis=1)
        figures = [
            f"{label} LPIPS {float(r.metrics['lpips'].mean()):.3f}"
            for label, r in zip(labels, runs, strict=True)
            if r.metrics is not None
        ]
        title = f"{name} ({len(runs[0].inputs)} samples)" + (
            ": " + ", ".join(figures) if figures else ": no ground truth"
        )
        blocks.append(np.concatenate([_label(body.shape[1], title), body]))
    width = max(b.shape[1] for b in blocks)
    blocks = [
        np.pad(b, ((0, 8), (0, width - b.shape[1]), (0, 0)), constant_values=255) for b in blocks
    ]
    return np.concatenate(blocks)[:-8]


def print_sets_table(result: dict[str, Any], out: Path) -> None:
    from rich import box
    from rich.table import Table

    from nca_cli.tables import table_console

    labels = [r["label"] for r in result["runs"]]
    table = Table(
        title=f"Sample sets after {result['steps']} steps (mean±std; MSE of RGB over white)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("set", no_wrap=True)
    table.add_column("samples", justify="right")
    for metric in ("LPIPS ↓", "MSE ↓"):
        for label in labels:
            table.add_column(f"{metric} {label}", justify="right", no_wrap=True)
    for name, entry in result["sets"].items():
        cells = []
        for metric in METRICS:
            for label in labels:
                figs = entry[label]
                if figs is None:
                    cells.append("—")
                else:
                    cells.append(f"{figs[metric]['mean']:.4g}±{figs[metric]['std']:.1g}")
        table.add_row(name, str(entry["samples"]), *cells)
    console = table_console()
    console.print(table)
    for run in result["runs"]:
        console.print(
            f"{run['label']}: {run['run']} (loss {run['loss']}, iteration {run['iteration']})"
        )
    console.print(f"outputs: {out}")


def log_sets(runs: list[LoadedRun], out: Path, result: dict[str, Any], grid: np.ndarray) -> None:
    """A W&B run in run A's group: ``sets/<set>/<run>_<metric>`` and the grid."""
    from nca_cli.training.loggers import make_logger

    first = runs[0]
    cfg = first.run.logger
    if cfg.name == "none" or cfg.mode == "disabled":
        return
    logger = make_logger(
        replace(cfg, group=cfg.group or first.path.parent.name, tags=[*cfg.tags, "eval", "sets"]),
        out,
        {"sets": {k: result[k] for k in ("steps", "seed", "lpips_net")}, "runs": result["runs"]},
    )
    exit_code = 1
    try:
        values = {
            f"sets/{name}/{label}_{metric}": figs[metric]["mean"]
            for name, entry in result["sets"].items()
            for label in (r["label"] for r in result["runs"])
            if (figs := entry[label]) is not None
            for metric in METRICS
        }
        logger.metrics(values, step=first.iteration)
        logger.image("sets/grid", grid, step=first.iteration)
        exit_code = 0
    finally:
        logger.finish(exit_code)


def evaluate_sets(
    runs: list[LoadedRun],
    names: list[str],
    steps: int | None = None,
    seed: int = 0,
    net: str = "alex",
    show: int = 4,
    wandb: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Grow the sets ``names`` (all the task's when empty) with every run; write sets.json
    and grid.png into ``<first run>/eval/<timestamp>/``; returns that folder and sets.json."""
    start = time.perf_counter()
    check_comparable(runs)
    names = set_names(runs[0].task, names)
    steps = steps or runs[0].run.trainer.steps.max
    labels = ["A", "B", "C", "D"][: len(runs)]
    grown = {name: [grow_set(r, name, steps, seed, net) for r in runs] for name in names}
    result: dict[str, Any] = {
        "runs": [
            {
                "label": label,
                "run": str(r.path.parent),
                "checkpoint": str(r.path),
                "iteration": r.iteration,
                "loss": r.run.loss.get("name"),
            }
            for label, r in zip(labels, runs, strict=True)
        ],
        "task": runs[0].task.config.name,
        "steps": steps,
        "seed": seed,
        "lpips_net": net,
        "sets": {
            name: {
                "samples": len(grown[name][0].inputs),
                "ground_truth": grown[name][0].metrics is not None,
                **{
                    label: None
                    if g.metrics is None
                    else {m: summary(g.metrics[m]) for m in METRICS}
                    for label, g in zip(labels, grown[name], strict=True)
                },
            }
            for name in names
        },
    }
    stamp = timestamp()
    out = results_folder(runs[0].path) / "eval" / stamp
    out.mkdir(parents=True)
    grid = grid_image(
        names,
        grown,
        [f"{lab} ({r['loss']})" for lab, r in zip(labels, result["runs"], strict=True)],
        show,
    )
    save_png(out / "grid.png", grid)
    result["files"] = {"grid": "grid.png", "sets": "sets.json"}
    result["seconds"] = time.perf_counter() - start
    write_text_atomic(out / "sets.json", json.dumps(result, indent=2) + "\n")
    print_sets_table(result, out)
    if wandb:
        log_sets(runs, out, result, grid)
    return out, result
