"""The comparison a reproduction writes: table.md, table.json and the plots beside them."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nca_cli.atomic import write_text_atomic
from nca_cli.config import ConfigError
from nca_cli.reproduction.runner import PlannedRun, state
from nca_cli.reproduction.spec import Reproduction, RowSpec

# (row, planned run) -> the figures of the row's evaluation, or None (not reached, failed)
Measure = Callable[[RowSpec, PlannedRun], dict[str, Any] | None]


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _why_missing(row: RowSpec, runs: list[PlannedRun]) -> str:
    if row.at is not None and runs and row.at > runs[0].iterations:
        return f"not reached: the budget trains {runs[0].iterations} iterations"
    states = {state(r) for r in runs}
    return "; ".join(sorted(states))


def build_rows(
    spec: Reproduction,
    runs: list[PlannedRun],
    measure: Measure,
    original: dict[int, list[dict[str, Any]]] | None,
    original_note: str,
) -> list[dict[str, Any]]:
    """Per row: the published value, ours (mean ± std over seeds), the original code's, the
    differences, and the budget the runs had."""
    out = []
    for row in spec.rows:
        mine = [r for r in runs if r.run == row.run]
        values, seconds, undefined, measured = [], 0.0, [], []
        for run in mine:
            figures = measure(row, run)
            if figures is None:
                continue
            measured.append(figures)
            if row.metric not in figures:
                known = ", ".join(k for k, v in figures.items() if isinstance(v, int | float))
                raise ConfigError(
                    f"invalid value for 'reproduce/{spec.name}' row {row.label!r} metric: "
                    f"{row.metric!r}; the {row.evaluation!r} evaluation gives {known}"
                )
            if figures[row.metric] is not None:
                values.append(float(figures[row.metric]) * row.scale)
            elif figures.get(f"{row.metric}_undefined"):
                undefined.append(f"undefined: {figures[f'{row.metric}_undefined']}")
            seconds += float(figures.get("seconds", 0.0))
        ours, std = _mean_std(values)
        entry: dict[str, Any] = {
            "label": row.label,
            "run": row.run,
            "metric": row.metric,
            "at": row.at,
            "published": row.published,
            "source": row.source,
            "ours": ours,
            "std": std,
            "seeds": len(values),
            "values": values,
            "difference": None if ours is None or row.published is None else ours - row.published,
            "iterations": mine[0].iterations if mine else None,
            "recipe_iterations": mine[0].recipe_iterations if mine else None,
            "eval_seconds": seconds,
            "note": _recovery_basis(row.metric, measured)
            if values
            else "; ".join(undefined) or _why_missing(row, mine),
        }
        if spec.original is not None and row.run == spec.original.run:
            entry["original"], entry["original_note"] = _original_value(
                spec, row, mine, original, original_note
            )
            entry["original_difference"] = (
                None if ours is None or entry["original"] is None else ours - entry["original"]
            )
        out.append(entry)
    return out


def _recovery_basis(metric: str, measured: list[dict[str, Any]]) -> str:
    """For a Recovery% row, the stage figures it comes from (means over seeds), so that a
    perturbation that hardly moved the metric, which makes Recovery% large and
    meaningless, shows in the table; "" for other rows."""
    if not measured or not metric.startswith("recovery_pct"):
        return ""
    name = metric.removeprefix("recovery_pct").removeprefix("_")
    if not name:
        curve = measured[0].get("curve")
        name = str(curve.get("metric", "")) if isinstance(curve, dict) else ""
    keys = [f"{name}_{stage}" for stage in ("stage2", "damaged", "stage3")]
    if not name or not all(isinstance(f.get(k), int | float) for f in measured for k in keys):
        return ""
    before, damaged, after = (statistics.fmean(float(f[k]) for f in measured) for k in keys)
    return (
        f"{name} {before:.4g} before, {damaged:.4g} perturbed (moved by "
        f"{abs(damaged - before):.2g}), {after:.4g} at the end"
    )


def _original_value(
    spec: Reproduction,
    row: RowSpec,
    runs: list[PlannedRun],
    original: dict[int, list[dict[str, Any]]] | None,
    note: str,
) -> tuple[float | None, str]:
    assert spec.original is not None
    key = spec.original.metrics.get(row.metric)
    if key is None:
        return None, "the original code does not measure this"
    if not original:
        return None, note or "not run"
    at = row.at if row.at is not None else (runs[0].iterations if runs else None)
    values = [float(r[key]) for rows in original.values() for r in rows if r.get("iteration") == at]
    if not values:
        return None, f"no figure at iteration {at}"
    return statistics.fmean(values), ""


def _fmt(value: float | None, std: float | None = None, seeds: int = 1) -> str:
    if value is None:
        return "—"
    text = f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return f"{text} ± {std:.2g}" if std is not None and seeds > 1 else text


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.3g}"


def markdown(spec: Reproduction, rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """table.md: the title, the budget and wall time, then one line per published row."""
    has_original = spec.original is not None
    label = spec.original.label if spec.original is not None else ""
    head = ["row", "published", "ours (mean ± std)"]
    head += [label, "ours − original"] if has_original else []
    head += ["ours − published", "iterations (recipe)", "source / note"]
    lines = [
        f"# {spec.title}",
        "",
        f"Source: {spec.source}",
        "",
        f"Reproduction `{spec.name}`, budget ×{meta['budget']:g}, wall time "
        f"{meta['wall_seconds'] / 60:.1f} min ({meta['train_seconds'] / 60:.1f} min "
        f"training, summed over runs); folder `{meta['folder']}`.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [r["label"], _fmt(r["published"]), _fmt(r["ours"], r["std"], r["seeds"])]
        if has_original:
            orig = r.get("original")
            cells += [_fmt(orig) if orig is not None else r.get("original_note", "—")]
            cells += [_signed(r.get("original_difference"))]
        note = r["note"] or ""
        cells += [
            _signed(r["difference"]),
            f"{r['iterations']} ({r['recipe_iterations']})",
            "; ".join(x for x in (r["source"], note) if x) or "—",
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    if spec.notes:
        lines += ["", spec.notes.strip()]
    lines += ["", "Runs (each is one `nca train` command):", ""]
    lines += [f"- `{c}`" for c in meta["commands"]]
    return "\n".join(lines) + "\n"


def write_table(
    folder: Path, spec: Reproduction, rows: list[dict[str, Any]], meta: dict[str, Any]
) -> tuple[Path, Path]:
    md = folder / "table.md"
    write_text_atomic(md, markdown(spec, rows, meta))
    js = folder / "table.json"
    payload = {"reproduction": spec.name, "title": spec.title, **meta, "rows": rows}
    write_text_atomic(js, json.dumps(payload, indent=1) + "\n")
    return md, js


# -- plots -----------------------------------------------------------------------------------
def plot_training_curves(folder: Path, rows: list[dict[str, Any]], label: str) -> list[Path]:
    """One plot per metric measured at several training lengths: ours (± std over seeds),
    the original code's and the published value against iterations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["at"] is not None:
            groups.setdefault((r["run"], r["metric"]), []).append(r)
    paths = []
    for (run, metric), entries in groups.items():
        done = [e for e in entries if e["ours"] is not None]
        if not done:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        x = [e["at"] for e in done]
        y = np.array([e["ours"] for e in done])
        s = np.array([e["std"] or 0.0 for e in done])
        ax.plot(x, y, "o-", color="tab:blue", label="nca")
        ax.fill_between(x, y - s, y + s, color="tab:blue", alpha=0.2)
        orig = [e for e in entries if e.get("original") is not None]
        if orig:
            ax.plot([e["at"] for e in orig], [e["original"] for e in orig], "s--",
                    color="tab:orange", label=label)  # fmt: skip
        published = [e for e in entries if e["published"] is not None]
        for e in published:
            ax.axhline(e["published"], color="tab:green", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("training iterations")
        ax.set_ylabel(metric)
        ax.set_title(f"{run}: {metric}")
        ax.legend()
        fig.tight_layout()
        path = folder / f"curve_{run}_{metric.replace('/', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_protocol_curves(folder: Path, curves: dict[str, list[dict[str, Any]]]) -> list[Path]:
    """Per protocol evaluation, the primary metric against rollout step, one line per run
    (mean over its seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for evaluation, entries in curves.items():
        if not entries:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.8))
        for entry in entries:
            ax.plot(entry["steps"], entry["mean"], label=entry["run"], lw=1.2)
        ax.set_xlabel("step")
        ax.set_ylabel(entries[0]["metric"])
        ax.set_title(evaluation)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = folder / f"protocol_{evaluation}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def image_grid(folder: Path, runs: list[PlannedRun]) -> Path | None:
    """grid.png: every run's final.png (first seed) one under another, labelled."""
    from PIL import Image, ImageDraw

    shown = {}
    for run in runs:
        if run.run not in shown and (run.folder / "final.png").is_file():
            shown[run.run] = Image.open(run.folder / "final.png").convert("RGB")
    if not shown:
        return None
    width = max(im.width for im in shown.values()) + 140
    height = sum(im.height + 6 for im in shown.values())
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    y = 0
    for name, im in shown.items():
        draw.text((4, y + im.height // 2), name, fill="black")
        grid.paste(im, (140, y))
        y += im.height + 6
    path = folder / "grid.png"
    grid.save(path)
    return path
