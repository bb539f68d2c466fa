"""Pictures, files, console table and W&B logging of a protocol run.

Every picture is built as a uint8 array first (W&B shows float images black), then saved
as PNG; plots are drawn with matplotlib's Agg canvas, without pyplot's global state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nca_cli.atomic import write_text_atomic
from nca_cli.images import save_gif, save_png, upscale

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from nca_cli.measures.protocol import ProtocolResult
    from nca_cli.measures.steps import ProtocolSteps

ARROWS = {"minimize": " (lower is better)", "maximize": " (higher is better)", "": ""}
STAGE_TITLES = {
    "stage1": "Stage 1",
    "stage2": "Stage 2",
    "damaged": "perturbed",
    "stage3": "Stage 3",
}
# Pictures are enlarged to about this many pixels a side; grey lines part them.
VIEW_SIDE = 192
GAP = 160


def _factor(image: np.ndarray) -> int:
    return max(1, VIEW_SIDE // max(image.shape[-3], image.shape[-2]))


def _to_uint8(fig: Figure) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def curve_plot(result: ProtocolResult, steps: ProtocolSteps, perturbation: str) -> np.ndarray:
    """Mean ± std over samples of every metric against the step, with the Stage 1 window
    shaded, Stage 2 and 3 marked and the perturbation as a red line."""
    from matplotlib.figure import Figure

    names = [result.primary, *(m for m in result.curves if m != result.primary)]
    fig = Figure(figsize=(8, 1.9 * len(names) + 0.6), layout="constrained")
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    x = np.asarray(result.curve_steps)
    for ax, name in zip(axes, names, strict=True):
        values = result.curves[name].numpy()
        mean, std = values.mean(1), values.std(1)
        ax.plot(x, mean, color="tab:blue", lw=1.5)
        ax.fill_between(x, mean - std, mean + std, color="tab:blue", alpha=0.2, lw=0)
        ax.axvspan(steps.stage1[0], steps.stage1[1], color="0.85", zorder=0)
        ax.axvline(steps.perturb_at, color="tab:red", ls="--", lw=1.2)
        for stage, step in (("stage2", steps.stage2), ("stage3", steps.stage3)):
            ax.plot([step], [float(result.stages[stage][name].mean())], "o", color="black", ms=4)
        ax.set_ylabel(name, fontsize=9)
        ax.set_title(name + ARROWS[result.directions.get(name, "")], fontsize=9, loc="left")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    fig.suptitle(
        f"{result.samples} samples; grey: Stage 1 window, dots: Stage 2 and 3, "
        f"red: {perturbation} at step {steps.perturb_at}",
        fontsize=9,
    )
    return _to_uint8(fig)


def _label(width: int, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, 16), "white")
    ImageDraw.Draw(image).text((2, 2), text, fill="black")
    return np.asarray(image)


def strip_image(result: ProtocolResult, steps: ProtocolSteps, perturbation: str) -> np.ndarray:
    """One row per sample: before the perturbation, right after it, at Stage 3, and the
    target when the task has one; a label above each column, grey lines between cells."""
    titles = {
        "before": f"before (step {steps.perturb_at})",
        "damaged": f"after {perturbation}",
        "recovered": f"recovered (step {steps.stage3})",
        "target": "target",
    }
    factor = _factor(result.strip["before"])
    columns = []
    for key, images in result.strip.items():
        cells = [upscale(image, factor) for image in images]
        gap = np.full((2, cells[0].shape[1], 3), GAP, np.uint8)
        body = np.concatenate([c for cell in cells for c in (cell, gap)][:-1])
        columns.append(np.concatenate([_label(body.shape[1], titles[key]), body]))
    gap = np.full((columns[0].shape[0], 2, 3), GAP, np.uint8)
    return np.concatenate([c for column in columns for c in (column, gap)][:-1], axis=1)


def heatmap_image(result: ProtocolResult, steps: ProtocolSteps) -> np.ndarray:
    """The per-cell standard deviation over the stochastic rollouts at Stage 3."""
    from matplotlib.figure import Figure

    assert result.uncertainty is not None
    u = result.uncertainty.numpy()
    fig = Figure(figsize=(4.6, 4.0), layout="constrained")
    ax = fig.subplots()
    shown = ax.imshow(u, cmap="magma", vmin=0.0, interpolation="nearest")
    fig.colorbar(shown, ax=ax, shrink=0.85, label=f"std of {result.uncertainty_of}")
    ax.set_axis_off()
    ax.set_title(
        f"per-cell std over {result.samples} rollouts, step {steps.stage3}\n"
        f"mean {u.mean():.4f}, max {u.max():.4f}",
        fontsize=9,
    )
    return _to_uint8(fig)


def write_outputs(
    result: ProtocolResult, summary: dict[str, Any], steps: ProtocolSteps, out: Path
) -> dict[str, np.ndarray]:
    """Write eval.json, metrics.png, strip.png, rollout.gif and uncertainty.png into
    ``out``; returns the pictures (uint8) for logging."""
    perturbation = summary["perturbation"]
    pictures = {"metrics": curve_plot(result, steps, perturbation)}
    if result.strip:
        pictures["strip"] = strip_image(result, steps, perturbation)
    if result.uncertainty is not None:
        pictures["uncertainty"] = heatmap_image(result, steps)
    files = {name: f"{name}.png" for name in pictures}
    if result.frames:
        factor = _factor(result.frames[0])
        save_gif(out / "rollout.gif", [upscale(f, factor) for f in result.frames], fps=30)
        files["rollout"] = "rollout.gif"
    for name, image in pictures.items():
        save_png(out / files[name], image)
    summary["files"] = {**files, "eval": "eval.json"}
    write_text_atomic(out / "eval.json", json.dumps(summary, indent=2) + "\n")
    return pictures


def _fmt(entry: dict[str, Any] | None) -> str:
    if entry is None or entry["mean"] is None:
        return "—"
    return f"{entry['mean']:.4g}±{entry['std']:.1g}"


def print_table(summary: dict[str, Any], result: ProtocolResult, out: Path) -> None:
    """The figures as a rich table on the console."""
    from rich import box
    from rich.table import Table

    from nca_cli.tables import table_console

    table = Table(
        title=f"Regeneration after {summary['perturbation']} ({result.samples} "
        f"sample{'s' if result.samples != 1 else ''}, mean±std)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("metric", no_wrap=True)
    for stage in STAGE_TITLES.values():
        table.add_column(stage, justify="right", no_wrap=True)
    table.add_column("Recovery %", justify="right", no_wrap=True)
    names = [result.primary, *(m for m in result.curves if m != result.primary)]
    for name in names:
        rec = summary["recovery_by_metric"][name]["value"]
        label = name + {"minimize": " ↓", "maximize": " ↑"}.get(result.directions[name], "")
        table.add_row(
            f"[bold]{label}[/bold]" if name == result.primary else label,
            *(_fmt(summary[f"{name}_{stage}"]) for stage in STAGE_TITLES),
            "undefined" if rec is None else f"{rec:.2f}",
        )
    console = table_console()
    console.print(table)
    recovery = summary["recovery_pct"]
    if recovery["value"] is None:
        console.print(f"Recovery% ({recovery['metric']}) undefined: {recovery['reason']}")
    else:
        console.print(f"Recovery% ({recovery['metric']}): {recovery['value']:.2f}")
    u = summary["uncertainty"]
    if u["mean"] is not None:
        console.print(
            f"uncertainty (per-cell std of {u['of']} over {result.samples} rollouts at step "
            f"{u['step']}): mean {u['mean']:.4g}, max {u['max']:.4g}"
        )
    console.print(f"outputs: {out}")


def flat_figures(summary: dict[str, Any], result: ProtocolResult) -> dict[str, float]:
    """Stage means and Recovery% as flat ``eval/...`` numbers for W&B."""
    values = {
        f"eval/{name}_{stage}": summary[f"{name}_{stage}"]["mean"]
        for name in result.curves
        for stage in STAGE_TITLES
    }
    values["eval/recovery_pct"] = summary["recovery_pct"]["value"]
    values["eval/uncertainty_mean"] = summary["uncertainty"]["mean"]
    return {k: float(v) for k, v in values.items() if v is not None}
