"""nca reproduce: every reproduction composes and builds the published models, runs end to
end at a smoke size, and resumes without retraining what finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nca_cli.composition import compose
from nca_cli.config import ConfigError
from nca_cli.engine.cascade import build_model
from nca_cli.reproduction import spec as specs
from nca_cli.reproduction.reproduce import reproduce
from nca_cli.reproduction.runner import Processes, plan, save_plan, train_one
from nca_cli.tasks import task_class
from nca_cli.training.schema import parse_run_config

# Published parameter counts, and how close a preset must come to each.
PUBLISHED = {
    "review-table1": {
        "sobel": 8_000,
        "conv3x3": 23_000,
        "conv5x5": 51_000,
        "deformable3x3": 27_000,
        "combined": 71_000,
        "attention3x3": 80_000,
    },
    "mnist-review": {"mse": 23_000, "cross_entropy": 23_000},  # Table 3: Conv3x3, 23k
    "mnist-notebook": {"notebook": 22_499},
    "distill": {"growing": 8_336, "persistent": 8_336, "regenerating": 8_336},
}
TOLERANCE = {"review-table1": 0.05, "mnist-review": 0.05}

# Small grids and short rollouts: every run trains in seconds.
SMOKE = {
    "mnist-notebook": ["dataset.size=12", "task.evaluation.samples=8"],
    "mnist-review": ["dataset.size=12", "dataset.padding=2", "task.evaluation.samples=8"],
    "review-table1": [
        "dataset.size=12",
        "dataset.padding=14",  # deformable3x3 reaches 20 cells: its circular padding wraps once
        "trainer.steps.min=2",
        "trainer.steps.max=3",
        "trainer.regen_check.enabled=false",
    ],
    "distill": [
        "dataset.size=12",
        "dataset.padding=2",
        "trainer.steps.min=2",
        "trainer.steps.max=3",
        "trainer.regen_check.enabled=false",
    ],
    "ganca": [
        "dataset.size=12",
        "dataset.padding=2",
        "trainer.steps.min=2",
        "trainer.steps.max=3",
        "trainer.regen_check.enabled=false",
    ],
}
SHORT_PROTOCOL = {"stage1": [2, 3], "stage2": 4, "perturb_at": 5, "stage3": 8}


def test_every_reproduction_has_a_smoke_size_and_parameter_counts_where_published() -> None:
    assert set(specs.names()) == set(SMOKE)
    assert set(PUBLISHED) <= set(specs.names())


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_every_run_of_a_reproduction_composes_and_is_checked(name: str, tmp_path: Path) -> None:
    spec = specs.load(name)
    runs = plan(spec, tmp_path, 1.0, [], 1)
    assert [r.run for r in runs] == [k for k, r in spec.runs.items() for _ in r.seeds]
    assert all(r.iterations == r.recipe_iterations for r in runs)
    for row in spec.rows:
        assert row.label and (row.published is None or row.source), row


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_runs_build_the_published_parameter_counts(name: str) -> None:
    spec = specs.load(name)
    for key, count in PUBLISHED[name].items():
        run = parse_run_config(compose(spec.runs[key].overrides))
        task = task_class(str(run.task["name"]))(run)
        nca = build_model(run.model, run.perception, task.layout, task.alive_channel)
        params = sum(p.numel() for p in nca.parameters())
        tolerance = TOLERANCE.get(name, 0.0)
        assert abs(params - count) <= tolerance * count, (key, params, count)


def test_budget_scales_iterations_milestones_and_warmup(tmp_path: Path) -> None:
    notebook = plan(specs.load("mnist-notebook"), tmp_path, 0.1, [], 1)[0]
    assert notebook.iterations == 10_000 and notebook.recipe_iterations == 100_000
    assert "trainer.schedule.milestones=[3000,7000]" in notebook.overrides
    assert "trainer.snapshots=[1000,2000,5000,10000]" in notebook.overrides
    review = plan(specs.load("mnist-review"), tmp_path, 0.1, [], 1)[0]
    assert "trainer.schedule.warmup=500" in review.overrides
    # ganca's recipe sets its own iterations: the scaled value replaces it in the command.
    adversarial = plan(specs.load("ganca"), tmp_path, 0.2, [], 1)[1]
    assert [o for o in adversarial.overrides if o.startswith("trainer.iterations=")] == [
        "trainer.iterations=2000"
    ]
    with pytest.raises(ConfigError, match="--budget"):
        plan(specs.load("mnist-review"), tmp_path, 0.0, [], 1)


def test_a_folder_keeps_its_budget(tmp_path: Path) -> None:
    spec = specs.load("distill")
    save_plan(tmp_path, spec, 0.5, plan(spec, tmp_path, 0.5, [], 1))
    with pytest.raises(ConfigError, match=r"planned with --budget 0.5"):
        save_plan(tmp_path, spec, 0.25, plan(spec, tmp_path, 0.25, [], 1))


def test_a_folder_keeps_its_overrides_and_the_reproduction_owns_seeds(tmp_path: Path) -> None:
    spec = specs.load("ganca")
    save_plan(tmp_path, spec, 1.0, plan(spec, tmp_path, 1.0, ["logger=none"], 1))
    with pytest.raises(ConfigError, match=r"other overrides \(.*logger=none differ\)"):
        save_plan(tmp_path, spec, 1.0, plan(spec, tmp_path, 1.0, [], 1))
    for line in ("seed=3", "trainer.iterations=5", "resume=x"):
        with pytest.raises(ConfigError, match=f"{line!r} is not allowed"):
            plan(spec, tmp_path, 1.0, [line], 1)


def test_a_folder_resumes_with_another_thread_count(tmp_path: Path) -> None:
    spec = specs.load("ganca")
    save_plan(tmp_path, spec, 1.0, plan(spec, tmp_path, 1.0, ["threads=1"], 1))
    save_plan(tmp_path, spec, 1.0, plan(spec, tmp_path, 1.0, ["threads=2"], 1))
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert all("threads=2" in run["overrides"] for run in saved["runs"])
    with pytest.raises(ConfigError, match="other overrides"):
        save_plan(tmp_path, spec, 1.0, plan(spec, tmp_path, 1.0, ["threads=2", "lr=0.1"], 1))
    # less memory (the same steps, recomputed): the folder resumes too
    lighter = plan(spec, tmp_path, 1.0, ["trainer.gradient_checkpointing=4"], 1)
    save_plan(tmp_path, spec, 1.0, lighter)


def test_a_folder_whose_plan_repeats_a_key_resumes_with_the_value_that_won(
    tmp_path: Path,
) -> None:
    """Earlier plans kept the recipe's own iterations before the scaled ones; Hydra applied
    the last, so the folder resumes under a plan that lists only that one."""
    spec = specs.load("ganca")
    runs = plan(spec, tmp_path, 0.2, [], 1)
    save_plan(tmp_path, spec, 0.2, runs)
    saved = json.loads((tmp_path / "plan.json").read_text())
    for run in saved["runs"]:
        run["overrides"].insert(1, "trainer.iterations=10000")
    (tmp_path / "plan.json").write_text(json.dumps(saved))
    save_plan(tmp_path, spec, 0.2, runs)
    for run in saved["runs"]:
        run["overrides"].append("trainer.iterations=10000")  # this one would have won
    (tmp_path / "plan.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="other overrides"):
        save_plan(tmp_path, spec, 0.2, runs)


def test_a_training_killed_by_sigkill_says_why_in_its_log(tmp_path: Path) -> None:
    """SIGKILL (the out-of-memory killer's) leaves a training no time to explain itself:
    the reproduction says it, and what lowers the memory, in the run's log."""
    extra = ["logger=none", *SMOKE["distill"]]
    run = plan(specs.load("distill"), tmp_path, 1.0, extra, 1)[0]
    processes = Processes()
    said: list[str] = []

    def kill_when_training() -> None:
        deadline = time.monotonic() + 120
        while not processes.live and time.monotonic() < deadline:
            time.sleep(0.05)
        for p in list(processes.live):
            p.kill()

    killer = threading.Thread(target=kill_when_training)
    killer.start()
    code = train_one(run, said.append, processes)
    killer.join()
    assert code == -signal.SIGKILL
    log = (run.folder / "reproduce.log").read_text()
    assert "killed by SIGKILL" in log and "trainer.gradient_checkpointing" in log, log
    assert "out-of-memory" in said[-1] and str(run.folder) in said[-1], said


def test_an_override_no_run_reads_is_refused_before_any_training(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="logger"):
        plan(specs.load("distill"), tmp_path, 1.0, ["logger=none", "logger.project=x"], 1)
    assert not (tmp_path / "runs").exists()


def test_a_row_naming_an_unknown_run_is_refused() -> None:
    spec = specs.load("ganca")
    spec.rows[0].run = "supervisd"
    with pytest.raises(ConfigError, match=r"rows\[0\].run.*'supervisd'"):
        specs.validate(spec)


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_reproduce_at_a_smoke_size_writes_the_table_with_every_row(
    name: str, tmp_path: Path
) -> None:
    spec = specs.load(name)
    for ev in spec.evaluations.values():  # the same protocol, fewer steps
        ev.steps = ev.steps.__class__(**SHORT_PROTOCOL)
    folder = tmp_path / "repro"
    outcome = reproduce(
        spec, folder, budget=2e-5, extra=["logger=none", *SMOKE[name]], jobs=2, samples=2
    )
    assert outcome.failed == []
    text = (folder / "table.md").read_text()
    saved = json.loads((folder / "table.json").read_text())
    assert saved["budget"] == 2e-5 and len(saved["rows"]) == len(spec.rows)
    for row, entry in zip(spec.rows, saved["rows"], strict=True):
        assert row.label in text
        if row.published is not None:
            assert entry["published"] == row.published and f"{row.published:.4g}" in text
        if row.at is None:  # reached: every run finished (Recovery% may be undefined)
            assert entry["ours"] is not None or entry["note"].startswith("undefined"), entry
        if row.metric.startswith("recovery_pct") and entry["ours"] is not None:
            # the stage figures behind it, so a perturbation that hardly moved them shows
            assert " before, " in entry["note"] and "perturbed (moved by" in entry["note"]
    assert (folder / "grid.png").is_file()
    if any(ev.kind == "protocol" for ev in spec.evaluations.values()):
        assert list(folder.glob("protocol_*.png"))
    if spec.original is not None:  # TensorFlow is an optional extra
        assert all("original" in e for e in saved["rows"])


def test_runs_trains_the_named_runs_and_the_table_keeps_earlier_ones(tmp_path: Path) -> None:
    """``--runs mse`` trains the MSE run alone (the others' rows say they have not
    started); a later ``--runs cross_entropy`` in the same folder fills the table."""
    spec = specs.load("mnist-review")
    for ev in spec.evaluations.values():
        ev.steps = ev.steps.__class__(**SHORT_PROTOCOL)
    folder = tmp_path / "review"
    extra = ["logger=none", *SMOKE["mnist-review"]]
    first = reproduce(spec, folder, 2e-5, extra, samples=2, only=["mse"])
    ce = [row for row in first.rows if row["run"] == "cross_entropy"]
    assert all(row["ours"] is None and "not started" in row["note"] for row in ce), ce
    assert all(row["ours"] is not None for row in first.rows if row["run"] == "mse")
    assert not (folder / "runs" / "cross_entropy").exists()
    stamp = (folder / "runs" / "mse" / "seed0" / "metrics.json").stat().st_mtime_ns
    second = reproduce(spec, folder, 2e-5, extra, samples=2, only=["cross_entropy"])
    assert all(row["ours"] is not None for row in second.rows)
    assert (folder / "runs" / "mse" / "seed0" / "metrics.json").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="--runs"):
        reproduce(spec, folder, 2e-5, extra, only=["mse", "nope"])


def _nca(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "nca_cli", "reproduce", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,  # type: ignore[call-overload]
    )


def test_an_interrupted_reproduction_resumes_without_retraining_finished_runs(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "review"
    args = [
        "mnist-review",
        "--budget",
        "0.001",  # 100 iterations a run: long enough to be interrupted while training
        "--dir",
        str(folder),
        "--samples",
        "2",
        "logger=none",
        *SMOKE["mnist-review"],
    ]
    first = _nca(*args)
    second_run = folder / "runs" / "cross_entropy" / "seed0"
    deadline = time.monotonic() + 900  # a guard against a hang, not a speed target
    while not (second_run / "last.ckpt").is_file():  # the first run finished, the second began
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0]
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)  # Ctrl-C
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 130, out
    assert "--resume" in out
    done = folder / "runs" / "mse" / "seed0" / "metrics.json"
    assert done.is_file() and not (second_run / "metrics.json").is_file()
    stamp = done.stat().st_mtime_ns
    second = _nca(*args)
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out
    assert "mse seed 0: finished before, skipped" in out
    assert "cross_entropy seed 0: resuming" in out
    assert done.stat().st_mtime_ns == stamp
    assert json.loads((second_run / "metrics.json").read_text())["iteration"] == 100
    assert "continuing" in (second_run / "train.log").read_text()


def test_cli_lists_reproductions_and_names_bad_input() -> None:
    listing = _nca("--list")
    out, _ = listing.communicate(timeout=60)
    assert listing.returncode == 0
    assert all(name in out for name in specs.names())
    wrong = _nca("mnist-reviews", env={**os.environ})
    out, _ = wrong.communicate(timeout=60)
    assert wrong.returncode == 2 and "unknown reproduction 'mnist-reviews'" in out


def test_the_original_codes_figures_stand_beside_ours_at_each_training_length(
    tmp_path: Path,
) -> None:
    spec = specs.load("mnist-notebook")
    spec.evaluations["test"].at = [1, 2]
    spec.rows = spec.rows[:2]
    for row, at in zip(spec.rows, (1, 2), strict=True):
        row.at = at
    folder = tmp_path / "notebook"
    (folder / "original").mkdir(parents=True)
    rows = [{"iteration": 1, "accuracy_20_30": 11.0}, {"iteration": 2, "accuracy_20_30": 12.5}]
    (folder / "original" / "seed0.json").write_text(json.dumps(rows))
    outcome = reproduce(
        spec,
        folder,
        budget=2e-5,
        extra=["logger=none", *SMOKE["mnist-notebook"]],
        samples=4,
        original=False,  # its figures are in the folder already
    )
    first, second = outcome.rows
    assert (first["original"], second["original"]) == (11.0, 12.5)
    assert first["ours"] is not None and second["ours"] is not None
    assert second["original_difference"] == pytest.approx(second["ours"] - 12.5)
    assert "| 12.5 |" in (folder / "table.md").read_text()
    assert (folder / "curve_notebook_accuracy_20_30.png").is_file()
    # the snapshot of iteration 1 was kept and measured, not the final state
    assert (folder / "runs" / "notebook" / "seed0" / "iter_000001.ckpt").is_file()
