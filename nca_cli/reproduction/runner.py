"""Train, evaluate and compare the runs of a reproduction.

Every run is one ``nca train`` command line (saved in plan.json, so that any run can be
repeated by hand), trained in its own process into ``<folder>/runs/<run>/seed<k>/``. A run
that finished is skipped and one that was interrupted continues from its ``last.ckpt``,
so running a reproduction again on its folder resumes it. Runs go in parallel on joblib
workers; evaluations are cached beside each run (``reproduce/<evaluation>_<iteration>.json``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from nca_cli.atomic import write_text_atomic
from nca_cli.composition import compose
from nca_cli.config import ConfigError
from nca_cli.reproduction.spec import EvaluationSpec, Reproduction
from nca_cli.training.checks import check_config
from nca_cli.training.schema import parse_run_config

PLAN_FILE = "plan.json"
# What a reproduction sets for each of its runs, so the command line may not.
OWNED = {
    "seed": "each run's seeds are listed in its reproduction",
    "trainer.iterations": "--budget scales the recipe's iterations",
    "trainer.snapshots": "the rows' training lengths choose the snapshots",
    "hydra.run.dir": "runs go to <folder>/runs/<run>/seed<k> (--dir chooses the folder)",
    "resume": "running the reproduction on its folder again resumes its runs",
}
ORIGINAL_DIR = Path(__file__).parent / "original"


@dataclass
class PlannedRun:
    """One seed of one run: its ``nca train`` overrides and where it trains."""

    run: str
    seed: int
    folder: Path
    overrides: list[str]
    iterations: int  # after the budget
    recipe_iterations: int  # the recipe's own
    snapshots: list[int] = field(default_factory=list)

    @property
    def command(self) -> str:
        return "nca train " + " ".join(_quote(o) for o in self.overrides)


def _quote(token: str) -> str:
    return f"'{token}'" if any(c in token for c in " []${}*") else token


def scaled(value: int, budget: float) -> int:
    """``value`` iterations times ``budget``, at least 1."""
    return max(1, round(value * budget))


def evaluated_at(spec: Reproduction, run: str) -> list[int]:
    """The training iterations at which the rows measure ``run``."""
    return sorted({row.at for row in spec.rows if row.run == run and row.at is not None})


def plan(
    spec: Reproduction, folder: Path, budget: float, extra: list[str], jobs: int
) -> list[PlannedRun]:
    """The runs to train, their configs checked (every override read) before any starts.

    ``budget`` scales each recipe's iterations, its learning-rate milestones and warm-up;
    ``extra`` overrides go to every run (``device=cuda``, ``threads=4``)."""
    if not (budget > 0 and math.isfinite(budget)):
        raise ConfigError(f"invalid value for '--budget': {budget}; expected a number > 0")
    for line in extra:
        key = _key(line)
        if key in OWNED:
            raise ConfigError(f"the override {line!r} is not allowed: {OWNED[key]}")
    planned = []
    threads = (
        []
        if any(o.startswith("threads=") for o in extra)
        else [f"threads={max(1, (os.cpu_count() or 1) // jobs)}"]
    )
    for key, run in spec.runs.items():
        recipe = parse_run_config(compose([*run.overrides, *extra]))
        base = recipe.trainer
        group = (
            [f"logger.group=reproduce-{spec.name}-{folder.name}"]
            if recipe.logger.name == "wandb"
            else []
        )
        iterations = scaled(base.iterations, budget)
        scaling = []
        if budget != 1.0:
            scaling.append(f"trainer.iterations={iterations}")
            if base.schedule.name == "piecewise" and base.schedule.milestones:
                ms = ",".join(str(scaled(m, budget)) for m in base.schedule.milestones)
                scaling.append(f"trainer.schedule.milestones=[{ms}]")
            if base.schedule.warmup:
                scaling.append(f"trainer.schedule.warmup={scaled(base.schedule.warmup, budget)}")
        snapshots = [i for i in evaluated_at(spec, key) if i <= iterations]
        # A scaled value replaces the recipe's own, so the command shows one value a key.
        replaced = {_key(o) for o in scaling}
        recipe_overrides = [o for o in run.overrides if _key(o) not in replaced]
        for seed in run.seeds:
            run_folder = folder / "runs" / key / f"seed{seed}"
            overrides = [
                *recipe_overrides,
                *extra,
                *threads,
                f"seed={seed}",
                *scaling,
                *([f"trainer.snapshots=[{','.join(map(str, snapshots))}]"] if snapshots else []),
                *group,
                "trainer.progress=false",
            ]
            check_config(compose(overrides), overrides)
            planned.append(
                PlannedRun(
                    key,
                    seed,
                    run_folder,
                    [*overrides, f"hydra.run.dir={run_folder}"],
                    iterations,
                    base.iterations,
                    snapshots,
                )
            )
    return planned


def _key(override: str) -> str:
    """The config key an override sets (``+a.b=1`` and ``~a.b`` name ``a.b``)."""
    return override.split("=", 1)[0].lstrip("+~")


# Keys that decide how fast a run goes and how much memory it takes, not what it computes
# (gradient checkpointing recomputes the same steps): a reproduction may resume with others.
RESOURCES = ("threads", "trainer.gradient_checkpointing")


def _results_shaping(overrides: list[str]) -> dict[str, str]:
    """The values the overrides set, the last one for a repeated key as Hydra applies them:
    what decides what a run computes (not :data:`RESOURCES`), so a reproduction may resume
    on a machine with more or fewer cores, or less memory."""
    return {_key(o): o for o in overrides if _key(o) not in RESOURCES}


def save_plan(folder: Path, spec: Reproduction, budget: float, runs: list[PlannedRun]) -> None:
    """plan.json: the budget and every run's command line; a folder keeps its budget."""
    path = folder / PLAN_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("budget") != budget:
            raise ConfigError(
                f"invalid value for '--budget': {budget}; the reproduction in {folder} was "
                f"planned with --budget {saved.get('budget')} (resume it with that budget, or "
                "start a new folder)"
            )
        before = {(r["run"], r["seed"]): r["overrides"] for r in saved.get("runs", [])}
        for r in runs:
            old = before.get((r.run, r.seed))
            if old is not None and _results_shaping(old) != _results_shaping(r.overrides):
                changed = sorted(set(r.overrides) ^ set(old))
                raise ConfigError(
                    f"the runs in {folder} were planned with other overrides ({', '.join(changed)} "
                    "differ): a resumed run would mix two configs. Give the same key=value "
                    "overrides as before (plan.json lists them), or start a new folder"
                )
    payload = {
        "reproduction": spec.name,
        "budget": budget,
        "runs": [{**asdict(r), "folder": str(r.folder), "command": r.command} for r in runs],
    }
    write_text_atomic(path, json.dumps(payload, indent=1) + "\n")


def state(run: PlannedRun) -> str:
    """What its folder holds: finished, failed, interrupted at iteration N, not started."""
    from nca_cli.training.run_folder import run_state

    return run_state(run.folder)


class Processes:
    """The training processes running now. Each runs in its own session, so a Ctrl-C
    reaches this process alone and is passed on to each of them exactly once (``nca
    train`` stops at the end of its step with its checkpoint written; a second Ctrl-C
    quits at once, as it does for ``nca train``)."""

    def __init__(self) -> None:
        self.live: set[subprocess.Popen[bytes]] = set()
        self.lock = threading.Lock()

    def call(self, args: list[str], log: IO[str]) -> int:
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        with self.lock:
            self.live.add(p)
        code = p.wait()  # interrupted: p stays in live for stop() to signal and wait for
        with self.lock:
            self.live.discard(p)
        return code

    def stop(self) -> None:
        """Pass SIGINT on to every live process and wait for them all."""
        while True:
            with self.lock:
                live = list(self.live)
            for p in live:
                p.send_signal(signal.SIGINT)
            try:
                for p in live:
                    p.wait()
                return
            except KeyboardInterrupt:  # again: the processes quit at once
                continue


def train_one(run: PlannedRun, say: Callable[[str], None], processes: Processes) -> int:
    """Train (or resume) one run in its own ``nca train`` process; returns its exit status.
    Its output goes to ``<run folder>/reproduce.log``."""
    current = state(run)  # reads an interrupted run's checkpoint: once
    if current == "finished":
        say(f"{run.run} seed {run.seed}: finished before, skipped")
        return 0
    run.folder.mkdir(parents=True, exist_ok=True)
    how = "resuming" if current.startswith("interrupted") else "training"
    say(f"{run.run} seed {run.seed}: {how} ({run.iterations} iterations)\n  {run.command}")
    start = time.perf_counter()
    with (run.folder / "reproduce.log").open("a") as log:
        code = processes.call([sys.executable, "-m", "nca_cli", "train", *run.overrides], log)
        if code < 0:  # a signal ended it before it could say why: say it in its log
            log.write(f"nca reproduce: {killed_by(code)}\n")
    if code == 0:
        outcome = "done"
    elif code < 0:
        outcome = f"{killed_by(code)} (its log: {run.folder}/reproduce.log)"
    else:
        outcome = f"exit status {code} (see {run.folder}/reproduce.log)"
    say(f"{run.run} seed {run.seed}: {outcome} after {time.perf_counter() - start:.0f} s")
    return code


def killed_by(code: int) -> str:
    """Why a training process that exited with ``code`` < 0 ended: the signal, and for
    SIGKILL, which no process can catch, the usual sender and what to change."""
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    if -code != signal.SIGKILL:
        return f"the training was killed by {name}"
    return (
        f"the training was killed by {name}, most often the system's out-of-memory killer "
        "(`dmesg` says): lower trainer.batch_size or trainer.steps, or trade time for "
        "memory with trainer.gradient_checkpointing=N (steps per recomputed block; the "
        "same gradients), then run the reproduction again: it resumes"
    )


def train_all(runs: list[PlannedRun], jobs: int, say: Callable[[str], None]) -> list[int]:
    """Every run, ``jobs`` at a time on joblib's thread workers (each drives a process);
    on Ctrl-C every running training stops with its checkpoint written."""
    from joblib import Parallel, delayed

    processes = Processes()
    try:
        if jobs <= 1:
            return [train_one(r, say, processes) for r in runs]
        parallel = Parallel(n_jobs=jobs, prefer="threads")
        return list(parallel(delayed(train_one)(r, say, processes) for r in runs))
    except KeyboardInterrupt:
        processes.stop()
        raise


def train_seconds(run: PlannedRun) -> float:
    """The training time a finished run's metrics.json records (0 before it finishes)."""
    path = run.folder / "metrics.json"
    return float(json.loads(path.read_text()).get("seconds", 0.0)) if path.is_file() else 0.0


# -- evaluation -----------------------------------------------------------------------------
def checkpoint_at(run: PlannedRun, at: int | None) -> Path | None:
    """The checkpoint of iteration ``at`` (None: the end), if the run reached it."""
    from nca_cli.training.trainer import snapshot_name

    if at is None or at == run.iterations:
        path = run.folder / "last.ckpt"
        return path if state(run) == "finished" else None
    path = run.folder / snapshot_name(at)
    return path if path.is_file() else None


def evaluate(
    run: PlannedRun, name: str, ev: EvaluationSpec, at: int | None, samples: int | None
) -> dict[str, float] | None:
    """The figures of evaluation ``name`` of ``run`` at iteration ``at``, cached in the run
    folder; None when the run has no checkpoint there (not reached, failed)."""
    checkpoint = checkpoint_at(run, at)
    if checkpoint is None:
        return None
    iteration = at if at is not None else run.iterations
    cache = run.folder / "reproduce" / f"{name}_{iteration}.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("samples") == samples:
            return cached["figures"]
    start = time.perf_counter()
    if ev.kind == "task":
        figures = _task_figures(checkpoint, ev, samples)
    elif ev.kind == "protocol":
        figures = _protocol_figures(checkpoint, ev, samples)
    else:
        figures = _set_figures(checkpoint, ev)
    figures["seconds"] = time.perf_counter() - start
    cache.parent.mkdir(exist_ok=True)
    write_text_atomic(cache, json.dumps({"samples": samples, "figures": figures}, indent=1))
    return figures


def _task_figures(checkpoint: Path, ev: EvaluationSpec, samples: int | None) -> dict[str, Any]:
    """The task's own evaluation of ``ev.split``, grown for the run's longest training
    rollout with a fixed seed."""
    from nca_cli.evaluation.task_figures import task_figures

    limit = samples if samples is not None else ev.samples
    return task_figures(checkpoint, ev.overrides, ev.split, ev.batch_size, limit)


def _protocol_figures(checkpoint: Path, ev: EvaluationSpec, samples: int | None) -> dict[str, Any]:
    """``nca eval``'s regeneration protocol (its eval folder, plots and W&B run are
    written as usual): every stage's mean and Recovery% by metric."""
    from nca_cli.evaluation.evaluate import evaluate as evaluate_protocol
    from nca_cli.measures.protocol import ProtocolConfig, default_damage

    mutate = ev.perturbation == "mutate"
    damage = None
    if ev.perturbation not in ("mutate", "none"):
        damage = default_damage(ev.perturbation)
        if ev.damage is not None:
            damage.center = [ev.damage.center[0]] * 2
            damage.center_y = [ev.damage.center[1]] * 2
            damage.radius = list(ev.damage.radius)
    cfg = ProtocolConfig(
        steps=ev.steps,
        samples=samples or ev.samples or 8,
        seed=0,
        damage=damage,
        mutate=mutate,
        split=ev.split,
    )
    out, summary = evaluate_protocol(checkpoint, cfg, list(ev.overrides), wandb=True)
    figures: dict[str, Any] = {"eval_folder": str(out)}
    for key, value in summary.items():
        if isinstance(value, dict) and "mean" in value:
            figures[key] = value["mean"]
    for metric, rec in summary["recovery_by_metric"].items():
        figures[f"recovery_pct_{metric}"] = rec["value"]
        figures[f"recovery_pct_{metric}_undefined"] = rec["reason"]
    figures["recovery_pct"] = summary["recovery_pct"]["value"]
    figures["recovery_pct_undefined"] = summary["recovery_pct"]["reason"]
    figures["curve"] = {
        "steps": summary["curves"]["steps"],
        "metric": summary["primary_metric"],
        "mean": summary["curves"][summary["primary_metric"]]["mean"],
    }
    return figures


def _set_figures(checkpoint: Path, ev: EvaluationSpec) -> dict[str, Any]:
    """``nca eval --sets``: LPIPS and MSE of every named set, as ``<set>/<metric>``."""
    from nca_cli.evaluation.runs import load_run
    from nca_cli.evaluation.sets import evaluate_sets

    out, result = evaluate_sets([load_run(checkpoint, ev.overrides)], list(ev.sets))
    figures: dict[str, Any] = {"eval_folder": str(out)}
    for name, entry in result["sets"].items():
        for metric, value in (entry.get("A") or {}).items():
            figures[f"{name}/{metric}"] = value["mean"]
    return figures


# -- the original code ------------------------------------------------------------------------
def original_python(spec: Reproduction, python: str | None) -> tuple[str | None, str]:
    """The interpreter that runs the original code, or None and why not."""
    original = spec.original
    assert original is not None
    exe = python or sys.executable
    if shutil.which(exe) is None and not Path(exe).is_file():
        return None, f"no Python at {exe}"
    probe = subprocess.run([exe, "-c", f"import {original.requires}"], capture_output=True)
    if probe.returncode != 0:
        return None, (
            f"not run: {original.requires} is not installed (pip install "
            f"'nca-cli[{original.extra}]', or --original-python PATH)"
        )
    return exe, ""


def original_results(folder: Path, seeds: list[int]) -> dict[int, list[dict[str, Any]]]:
    """The original code's rows already in ``folder`` (a finished or cut-short run)."""
    out = {}
    for seed in seeds:
        path = folder / "original" / f"seed{seed}.json"
        if path.is_file():
            out[seed] = json.loads(path.read_text())
    return out


def run_original(
    spec: Reproduction,
    folder: Path,
    budget: float,
    seeds: list[int],
    python: str,
    say: Callable[[str], None],
) -> dict[int, list[dict[str, Any]]]:
    """The original code for every seed of its run, the same iterations and evaluation
    points as ours; its rows per seed (a finished seed's JSON is reused; an interrupted
    one starts over: the notebook's code keeps no checkpoints)."""
    original = spec.original
    assert original is not None
    iterations = scaled(original.iterations, budget)
    at = [i for i in evaluated_at(spec, original.run) if i <= iterations] or [iterations]
    out: dict[int, list[dict[str, Any]]] = {}
    for seed in seeds:
        path = folder / "original" / f"seed{seed}.json"
        rows = json.loads(path.read_text()) if path.is_file() else []
        if not rows or rows[-1]["iteration"] != at[-1]:
            path.parent.mkdir(parents=True, exist_ok=True)
            env = {
                **os.environ,
                "EVAL_AT": ",".join(map(str, at)),
                "MILESTONES": ",".join(str(scaled(m, budget)) for m in original.milestones),
                "OUT": str(path),
            }
            say(f"{original.label} seed {seed}: {iterations} iterations ({original.script})")
            with (path.parent / f"seed{seed}.log").open("w") as log:
                code = subprocess.call(
                    [python, str(ORIGINAL_DIR / original.script), str(iterations), str(seed)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if code != 0:
                say(f"{original.label} seed {seed}: exit status {code} (see {path.parent})")
                continue
            rows = json.loads(path.read_text())
        out[seed] = rows
    return out
