"""``nca eval``: LPIPS wiring, Recovery%, the protocol, its outputs and its errors, and the
regeneration check of training runs."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from nca_cli.commands import eval as eval_command
from nca_cli.composition import apply_overrides, compose
from nca_cli.config import ConfigError
from nca_cli.evaluation.evaluate import build_summary
from nca_cli.evaluation.runs import find_checkpoint, load_run
from nca_cli.measures.metrics import lpips_distance, recovery_pct, summary
from nca_cli.measures.protocol import (
    ProtocolConfig,
    ProtocolSteps,
    default_damage,
    figures,
    run_protocol,
)
from nca_cli.tasks.growing import GrowingTask
from nca_cli.training.loggers import NullLogger
from nca_cli.training.schema import parse_run_config
from nca_cli.training.trainer import train

SHARED = Path(__file__).resolve().parents[3] / "shared"
STEPS = ProtocolSteps(stage1=[4, 6], stage2=9, perturb_at=10, stage3=20)
STEP_FLAGS = ["--stage1", "4", "6", "--stage2", "9", "--perturb-at", "10", "--stage3", "20"]
CHECK = [
    "trainer.regen_check.enabled=true",
    "trainer.regen_check.every=2",
    "trainer.regen_check.steps.stage1=[4,6]",
    "trainer.regen_check.steps.stage2=9",
    "trainer.regen_check.steps.perturb_at=10",
    "trainer.regen_check.steps.stage3=20",
]
SMOKE = ["trainer=smoke", "logger=none"]


def rgb(name: str) -> torch.Tensor:
    path = SHARED / "data" / "lpips_examples" / f"ex_{name}.png"
    image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(image).permute(2, 0, 1)[None]


def test_lpips_gives_the_published_example_values() -> None:
    ref, p0, p1 = rgb("ref"), rgb("p0"), rgb("p1")
    assert float(lpips_distance(ref, p0)) == pytest.approx(0.722, abs=0.002)
    assert float(lpips_distance(ref, p1)) == pytest.approx(0.138, abs=0.002)
    both = lpips_distance(torch.cat([ref, ref]), torch.cat([p0, p1]))
    assert both.shape == (2,) and float(lpips_distance(ref, ref)) == pytest.approx(0, abs=1e-6)
    # Grids smaller than AlexNet's pooling allows are enlarged, not rejected.
    small = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    assert lpips_distance(small, small.flip(0)).shape == (3,)


def test_recovery_formula_on_hand_made_numbers() -> None:
    # LPIPS-like (lower is better): 0.1 before, 0.5 damaged, back to 0.2: 75% recovered.
    assert recovery_pct(0.1, 0.5, 0.2)[0] == pytest.approx(75.0)
    # Accuracy-like (higher is better): the same formula.
    assert recovery_pct(0.9, 0.3, 0.75)[0] == pytest.approx(75.0)
    assert recovery_pct(0.1, 0.5, 0.1)[0] == pytest.approx(100.0)
    assert recovery_pct(0.1, 0.5, 0.5)[0] == pytest.approx(0.0)
    assert recovery_pct(0.1, 0.5, 0.7)[0] == pytest.approx(-50.0)  # worse than damaged
    assert recovery_pct(0.2, 0.5, 0.05)[0] == pytest.approx(150.0)  # better than before
    value, reason = recovery_pct(0.1, 0.5, 0.2)
    assert reason is None and value is not None
    # A perturbation that does not change the metric: undefined, with the reason.
    value, reason = recovery_pct(0.3, 0.3, 0.25)
    assert value is None and reason is not None and "nothing to recover" in reason
    # Measured right before the perturbation, the metric did not move: undefined too,
    # although Stage 2 (a step earlier) differs.
    value, reason = recovery_pct(0.31, 0.3, 0.25, before=0.3)
    assert value is None and "nothing to recover" in str(reason)
    value, reason = recovery_pct(0.3, 0.5, 0.4, before=0.45)  # moved: defined
    assert value == pytest.approx(50.0)
    value, reason = recovery_pct(float("nan"), 0.5, 0.4)
    assert value is None and "not finite" in str(reason)


def test_summary_keeps_undefined_samples_out_of_mean_and_std() -> None:
    s = summary([1.0, None, 3.0])
    assert s == {"mean": 2.0, "std": pytest.approx(2**0.5), "samples": [1.0, None, 3.0]}
    assert summary(torch.tensor([0.5]))["std"] == 0.0
    assert summary([None])["mean"] is None


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A smoke training with the regeneration check every 2 iterations, and one without."""
    root = tmp_path_factory.mktemp("runs")
    logged: list[tuple[int, dict[str, float]]] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", os.environ.get("TORCH_HOME", str(SHARED / "torch_home")))
        mp.setattr(NullLogger, "metrics", lambda self, values, step: logged.append((step, values)))
        metrics = train(compose([*SMOKE, *CHECK]), root / "checked")
        train(compose(SMOKE), root / "plain")
    return {"run": root / "checked", "plain": root / "plain", "metrics": metrics, "logged": logged}


def test_training_logs_the_regeneration_check(trained: dict[str, Any]) -> None:
    metrics = trained["metrics"]
    for stage in ("stage1", "stage2", "damaged", "stage3"):
        assert 0 < metrics[f"regen_lpips_{stage}"] < 1, stage
    saved = json.loads((trained["run"] / "metrics.json").read_text())
    assert saved["regen_lpips_stage3"] == metrics["regen_lpips_stage3"]
    checks = [step for step, values in trained["logged"] if "regen/lpips_stage3" in values]
    assert checks == [2, 4]  # every 2 iterations, the last at the end
    rows = [json.loads(r) for r in (trained["run"] / "regen.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [2, 4]
    assert rows[-1]["lpips_stage3"] == metrics["regen_lpips_stage3"]
    assert all(r["seconds"] > 0 for r in rows)  # what the checks cost, beside the training
    assert saved["regen_check_seconds"] == pytest.approx(sum(r["seconds"] for r in rows))
    assert not any(
        k.startswith("regen") for k in json.loads((trained["plain"] / "metrics.json").read_text())
    )


def test_regeneration_check_leaves_training_unchanged(trained: dict[str, Any]) -> None:
    checked = torch.load(trained["run"] / "last.ckpt", weights_only=True)
    plain = torch.load(trained["plain"] / "last.ckpt", weights_only=True)
    for name, tensor in plain["model"].items():
        assert torch.equal(tensor, checked["model"][name]), name
    assert torch.equal(plain["rng"]["generator"], checked["rng"]["generator"])


def test_a_check_costlier_than_its_share_of_training_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A check (LPIPS on 20-step rollouts) costs far more than 5% of a few smoke
    iterations, so with the default share only the first and the final check run; with
    ``max_share=0`` every one does."""
    monkeypatch.setenv("TORCH_HOME", os.environ.get("TORCH_HOME", str(SHARED / "torch_home")))
    every = [*SMOKE, *CHECK, "trainer.regen_check.every=1", "trainer.iterations=6"]
    checked: dict[str, list[int]] = {}
    for share in ("0", "0.05"):
        run = tmp_path / share
        with caplog.at_level("INFO", logger="nca_cli.training.trainer"):
            train(compose([*every, f"trainer.regen_check.max_share={share}"]), run)
        rows = (run / "regen.jsonl").read_text().splitlines()
        checked[share] = [json.loads(r)["iteration"] for r in rows]
    assert checked == {"0": [1, 2, 3, 4, 5, 6], "0.05": [1, 6]}
    skipped = [r.getMessage() for r in caplog.records if "check skipped" in r.getMessage()]
    assert len(skipped) == 1 and "iteration 2" in skipped[0], skipped
    assert "trainer.regen_check.max_share=0.05" in skipped[0]


def nca_eval(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nca_cli", "eval", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def picture(path: Path) -> np.ndarray:
    image = np.asarray(Image.open(path))
    assert image.dtype == np.uint8
    return image


def test_eval_circle_writes_every_output(trained: dict[str, Any], tmp_path: Path) -> None:
    run = trained["run"]
    args = ["--run", str(run), "--damage", "circle", "--samples", "3", *STEP_FLAGS]
    overrides = ["logger.name=wandb", "logger.mode=offline"]  # the run itself logged nothing
    out = nca_eval(*args, *overrides, cwd=tmp_path, env={"WANDB_MODE": "offline"})
    assert out.returncode == 0, out.stderr
    assert "Recovery" in out.stdout and "lpips" in out.stdout
    (folder,) = (run / "eval").iterdir()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d{6}", folder.name)
    report = json.loads((folder / "eval.json").read_text())
    assert report["damage"]["kind"] == "circle" and report["mutate"] is False
    for stage in ("stage1", "stage2", "damaged", "stage3"):
        entry = report[f"lpips_{stage}"]
        assert len(entry["samples"]) == 3 and entry["mean"] == pytest.approx(
            np.mean(entry["samples"])
        )
        assert entry["std"] >= 0
    recovery = report["recovery_pct"]
    assert recovery["metric"] == "lpips" and {"value", "reason", "samples"} <= set(recovery)
    assert (recovery["value"] is None) == (recovery["reason"] is not None)
    assert report["protocol"]["stage3"] == 20 and report["uncertainty"]["mean"] >= 0
    for name in ("metrics.png", "strip.png", "uncertainty.png"):
        image = picture(folder / name)
        assert image.ndim == 3 and image.shape[2] in (3, 4) and image.std() > 10, name
    strip = picture(folder / "strip.png")
    assert strip.shape[0] > 3 * 44 and strip.shape[1] > 4 * 44  # 3 samples x 4 columns
    gif = Image.open(folder / "rollout.gif")
    durations = []  # Pillow merges repeated frames, adding up their durations
    for i in range(gif.n_frames):
        gif.seek(i)
        durations.append(gif.info["duration"])
    frames = sum(durations) / (1000 / 30)  # written at 30 frames per second
    assert abs(frames - (20 + 2)) < 2  # steps 0..20 and the state right after the damage
    (wandb_run,) = (folder / "wandb").glob("offline-run-*")
    media = list((wandb_run / "files" / "media" / "images").rglob("*.png"))
    assert len(media) == 3
    for path in media:
        assert picture(path).mean() > 50, "W&B image is black"


def test_an_override_that_eval_does_not_read_is_refused(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    cases = {
        "seed=1": "nca eval draws its samples and damage from --seed",
        "lr=0.1": "'lr=0.1' (trainer.optimizer.lr) changes nothing: nca eval does not train",
        "logger.project=mine": "logger=none logs nothing to W&B",
    }
    evals = trained["run"] / "eval"
    before = sorted(evals.iterdir()) if evals.is_dir() else []
    for override, needle in cases.items():
        out = nca_eval("--run", str(trained["run"]), *STEP_FLAGS, override, cwd=tmp_path, env={})
        assert out.returncode == 2, (override, out.stderr)
        assert needle in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert (sorted(evals.iterdir()) if evals.is_dir() else []) == before  # nothing evaluated


def test_missing_or_corrupt_runs_are_clear_errors(
    trained: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def fails(*args: str) -> str:
        with pytest.raises(SystemExit) as exit_:
            eval_command.main(list(args))
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    assert "is not a run folder" in fails("--run", str(tmp_path / "nothing"))
    # key=value after an option of one or two numbers is an override, not a radius.
    assert "is not a run folder" in fails("--radius", "0.3", "fire_rate=0.3", "--run", "x")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no last.ckpt" in fails("--run", str(empty))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    data = (trained["run"] / "last.ckpt").read_bytes()
    (corrupt / "last.ckpt").write_bytes(data[: len(data) // 3])
    assert "corrupt" in fails("--run", str(corrupt))
    (corrupt / "last.ckpt").write_text("not a checkpoint")
    assert "corrupt" in fails("--run", str(corrupt))
    assert "no training run" in fails()  # NCA_OUTPUT_DIR (tests: empty) has no runs
    run = str(trained["run"])
    assert "has no mutation" in fails("--run", run, "--mutate", *STEP_FLAGS)
    assert "unknown config key 'fire_rat'" in fails("--run", run, "fire_rat=0.3")
    assert "cannot change config group 'perception'" in fails("--run", run, "perception=conv")
    assert "stage3" in fails("--run", run, "--stage3", "5")
    with pytest.raises(SystemExit):  # argparse: a shape option of another damage kind
        eval_command.main(["--damage", "circle", "--side", "left"])
    assert "--side applies to --damage half" in capsys.readouterr().err


def test_the_most_recent_run_is_the_default(
    trained: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "elsewhere"
    monkeypatch.setenv("NCA_OUTPUT_DIR", str(root))
    ckpt = (trained["run"] / "last.ckpt").read_bytes()
    for name in ("2026-01-01_10-00-00_000001", "2026-01-02_10-00-00_000001"):
        (root / "train" / name).mkdir(parents=True)
        (root / "train" / name / "last.ckpt").write_bytes(ckpt)
    (root / "train" / "2026-01-03_10-00-00_000001").mkdir()  # no checkpoint yet
    assert find_checkpoint() == root / "train" / "2026-01-02_10-00-00_000001" / "last.ckpt"
    # A run is its folder or a checkpoint file itself (iter_<N>.ckpt, a copy elsewhere).
    copy = root / "kept.ckpt"
    copy.write_bytes(ckpt)
    assert find_checkpoint(copy) == copy
    assert find_checkpoint(trained["run"]) == trained["run"] / "last.ckpt"


def test_shortcuts_reach_the_fields_of_a_saved_config() -> None:
    saved = compose(["trainer=smoke", "logger=none"])
    changed = apply_overrides(saved, ["fire_rate=0.3", "hidden=64"], "a run")
    assert changed["model"]["fire_rate"] == 0.3 and changed["model"]["hidden"] == 64
    assert parse_run_config(changed).model.hidden == [64] and saved["model"]["fire_rate"] == 0.5
    old = {**copy.deepcopy(saved), "fire_rate": 0.5, "channels": 24}  # saved before shortcuts
    del old["model"]["channels"]  # named fields
    assert parse_run_config(apply_overrides(old, [], "a run")).model.channels == 24
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(saved, ["fire_rate"], "a run")


class Flipping(GrowingTask):
    """A 'mutation' for the test: mirror the state, as switching a condition would change
    what the cells should grow."""

    def mutate(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict:
        return {**batch, "state": batch["state"].flip(-1)}


class NoImages(GrowingTask):
    def eval_images(self, state: torch.Tensor, batch: Any) -> None:
        return None


def test_protocol_stages_perturbations_and_reproducibility(trained: dict[str, Any]) -> None:
    loaded = load_run(trained["run"] / "last.ckpt")
    cfg = ProtocolConfig(steps=STEPS, samples=2, curve_every=0, detail=False)
    result = run_protocol(loaded.task, loaded.nca, cfg)
    at = result.curve_steps.index
    for name, curve in result.curves.items():
        window = [at(t) for t in range(4, 7)]
        assert torch.allclose(result.stages["stage1"][name], curve[window].mean(0)), name
        assert torch.equal(result.stages["stage2"][name], curve[at(9)])
        assert torch.equal(result.stages["stage3"][name], curve[at(20)])
    assert result.curve_steps.count(10) == 2  # before and right after the damage
    again = figures(run_protocol(loaded.task, loaded.nca, cfg))
    assert again == figures(result)
    other = figures(run_protocol(loaded.task, loaded.nca, replace(cfg, seed=1)))
    assert other["lpips_stage1"] != again["lpips_stage1"]

    nothing = figures(run_protocol(loaded.task, loaded.nca, replace(cfg, damage=None)))
    assert nothing["recovery_pct"]["value"] is None
    assert "nothing to recover" in nothing["recovery_pct"]["reason"]
    assert nothing["recovery_pct"]["samples"] == [None, None]

    mutated = run_protocol(Flipping(loaded.run), loaded.nca, replace(cfg, damage=None, mutate=True))
    assert not torch.equal(mutated.stages["damaged"]["mse"], mutated.stages["before"]["mse"])
    assert figures(mutated)["recovery_pct"]["reason"] is None
    with pytest.raises(ConfigError, match="mutation replaces damage"):
        run_protocol(Flipping(loaded.run), loaded.nca, replace(cfg, mutate=True))

    plain = NoImages(loaded.run)
    result = run_protocol(plain, loaded.nca, replace(cfg, damage=default_damage("half")))
    assert result.primary == "mse" and "lpips" not in result.curves
    report = build_summary(replace(loaded, task=plain), cfg, result, [])
    assert report["lpips_stage3"] is None and report["recovery_pct"]["metric"] == "mse"
