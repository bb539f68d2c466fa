"""A reproduction end to end: plan, train, run the original code, evaluate, tabulate."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nca_cli.config import choice
from nca_cli.paths import output_root, timestamp
from nca_cli.reproduction import runner, table
from nca_cli.reproduction.spec import Reproduction


def root(name: str) -> Path:
    """Where the folders of reproduction ``name`` go: ``$NCA_OUTPUT_DIR/reproduce/<name>``."""
    return output_root() / "reproduce" / name


def latest(name: str) -> Path | None:
    """The most recent folder of reproduction ``name`` (by its timestamped name)."""
    folders = sorted(p.parent for p in root(name).glob(f"*/{runner.PLAN_FILE}"))
    return folders[-1] if folders else None


def new_folder(name: str) -> Path:
    return root(name) / timestamp()


def protocol_curves(
    spec: Reproduction, runs: list[runner.PlannedRun], samples: int | None
) -> dict[str, list[dict[str, Any]]]:
    """Per protocol evaluation and run, the primary metric against step (mean over the
    run's seeds), from the evaluations' caches."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for name, ev in spec.evaluations.items():
        if ev.kind != "protocol":
            continue
        for key in spec.runs:
            found = [runner.evaluate(r, name, ev, None, samples) for r in runs if r.run == key]
            done = [f["curve"] for f in found if f is not None and "curve" in f]
            if done:
                mean = np.mean([c["mean"] for c in done], axis=0).tolist()
                curves.setdefault(name, []).append({**done[0], "run": key, "mean": mean})
    return curves


def _original(
    spec: Reproduction,
    folder: Path,
    budget: float,
    run: bool,
    python: str | None,
    say: Callable[[str], None],
) -> tuple[dict[int, list[dict[str, Any]]] | None, str]:
    """The original code's rows per seed (run now, or without ``run`` those an earlier
    run left in ``folder``), and why there are none."""
    if spec.original is None:
        return None, ""
    seeds = spec.runs[spec.original.run].seeds
    if not run:
        found = runner.original_results(folder, seeds)
        return (found, "") if found else (None, "not run (--no-original, or its run not in --runs)")
    exe, why = runner.original_python(spec, python)
    if exe is None:
        say(f"{spec.original.label}: {why}")
        return None, why
    return runner.run_original(spec, folder, budget, seeds, exe, say), ""


@dataclass
class Outcome:
    folder: Path
    table: Path
    rows: list[dict[str, Any]]
    failed: list[str]  # runs that did not finish


def reproduce(
    spec: Reproduction,
    folder: Path,
    budget: float = 1.0,
    extra: list[str] | None = None,
    jobs: int = 1,
    samples: int | None = None,
    original: bool = True,
    original_python: str | None = None,
    only: list[str] | None = None,
    say: Callable[[str], None] = print,
) -> Outcome:
    """Train every run of ``spec`` (or those named in ``only``) into ``folder`` (finished
    runs skipped, interrupted ones resumed), run the original code where the spec has one,
    evaluate, and write table.md, table.json and the plots; the rows of runs not trained
    yet say so. ``samples`` caps every evaluation (smoke tests)."""
    start = time.perf_counter()
    for key in only or []:
        choice(key, list(spec.runs), "--runs")
    runs = runner.plan(spec, folder, budget, list(extra or []), jobs)
    folder.mkdir(parents=True, exist_ok=True)
    runner.save_plan(folder, spec, budget, runs)
    chosen = [r for r in runs if only is None or r.run in only]
    say(f"nca reproduce {spec.name}: {len(chosen)} of {len(runs)} runs in {folder} "
        f"(budget ×{budget:g})")  # fmt: skip
    with_original = original and (
        only is None or spec.original is None or spec.original.run in only
    )
    with ThreadPoolExecutor(1) as pool:
        # the original code runs beside our runs when more than one job may run
        later = pool.submit(_original, spec, folder, budget, with_original, original_python, say)
        if jobs <= 1:
            later.result()
        codes = runner.train_all(chosen, jobs, say)
    rows_by_seed, note = later.result()
    failed = [f"{r.run} seed {r.seed}" for r, c in zip(chosen, codes, strict=True) if c != 0]

    def measure(row: Any, run: runner.PlannedRun) -> dict[str, Any] | None:
        return runner.evaluate(run, row.evaluation, spec.evaluations[row.evaluation], row.at,
                               samples)  # fmt: skip

    rows = table.build_rows(spec, runs, measure, rows_by_seed, note)
    curves = protocol_curves(spec, runs, samples)
    train_seconds = sum(runner.train_seconds(r) for r in runs)
    meta = {
        "budget": budget,
        "folder": str(folder),
        "wall_seconds": time.perf_counter() - start,
        "train_seconds": train_seconds,
        "commands": [r.command for r in runs],
        "failed": failed,
    }
    md, _ = table.write_table(folder, spec, rows, meta)
    label = spec.original.label if spec.original is not None else ""
    table.plot_training_curves(folder, rows, label)
    table.plot_protocol_curves(folder, curves)
    table.image_grid(folder, runs)
    return Outcome(folder, md, rows, failed)
