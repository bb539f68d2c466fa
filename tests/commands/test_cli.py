"""The ``nca`` command through real subprocesses, as a user types it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

SMOKE = ["trainer=smoke", "logger=none"]


def nca(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nca_cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_dirs(root: Path) -> list[Path]:
    return sorted((root / "outputs" / "train").iterdir())


def test_help_lists_commands_without_importing_torch(tmp_path: Path) -> None:
    out = nca("--help", cwd=tmp_path)
    assert out.returncode == 0 and "train" in out.stdout
    probe = (
        "import sys; from nca_cli import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules and 'hydra' not in sys.modules, 'heavy import'"
    )
    check = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    bad = nca("tran", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown command 'tran'" in bad.stderr


def test_train_help_and_cfg(tmp_path: Path) -> None:
    out = nca("train", "--help", cwd=tmp_path)
    assert out.returncode == 0 and "nca train" in out.stdout and "resume=" in out.stdout
    cfg = nca("train", "--cfg", "job", "fire_rate=0.3", "perception=dilated", cwd=tmp_path)
    assert cfg.returncode == 0
    assert "fire_rate: 0.3" in cfg.stdout and "kind: multi" in cfg.stdout
    shown = nca("train", "--cfg", "job", "task=mnist", "fire_rate=0.3", "hidden=64", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    model = yaml.safe_load(shown.stdout)["model"]  # the value that runs, in one place
    assert model["fire_rate"] == 0.3 and model["hidden"] == 64
    assert "fire_rate" not in yaml.safe_load(shown.stdout)


def test_completion_queries_reach_the_train_app(tmp_path: Path) -> None:
    env = {"COMP_LINE": "nca train perc", "COMP_POINT": "14"}
    out = nca("-sc", "query=bash", cwd=tmp_path, env=env)
    assert out.returncode == 0 and "perception=" in out.stdout
    env = {"COMP_LINE": "nca tr", "COMP_POINT": "6"}
    assert nca("-sc", "query=bash", cwd=tmp_path, env=env).stdout.split() == ["train"]


def test_smoke_training_writes_a_complete_run_folder(tmp_path: Path) -> None:
    out = nca("train", *SMOKE, cwd=tmp_path, env={"NCA_OUTPUT_DIR": "outputs"})
    assert out.returncode == 0, out.stderr
    (run,) = run_dirs(tmp_path)
    for name in ("config.yaml", "train.log", "last.ckpt", "final.png", "rollout.gif"):
        assert (run / name).is_file(), name
    assert json.loads((run / "metrics.json").read_text())["iteration"] == 4
    assert str(run) in out.stdout or run.name in out.stdout


def test_resume_continues_in_the_same_folder(tmp_path: Path) -> None:
    env = {"NCA_OUTPUT_DIR": "outputs"}
    first = nca("train", *SMOKE, "trainer.iterations=2", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    (run,) = run_dirs(tmp_path)
    second = nca("train", f"resume={run}", "trainer.iterations=4", cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    assert run_dirs(tmp_path) == [run]
    assert json.loads((run / "metrics.json").read_text())["iteration"] == 4
    iterations = [json.loads(r)["iteration"] for r in (run / "metrics.jsonl").open()]
    assert iterations == [1, 2, 3, 4]
    bad = nca("train", f"resume={run}", "perception=conv", cwd=tmp_path, env=env)
    assert bad.returncode == 2 and "perception" in bad.stderr


def test_bad_overrides_fail_with_a_message_naming_the_key(tmp_path: Path) -> None:
    cases = {
        "fire_rate=abc": "fire_rate",
        "fire_rate=0": "fire_rate",
        "trainer.itrations=5": "trainer.itrations",
        "perception=sobol": "sobol",
        "task=nothing": "nothing",
    }
    for override, key in cases.items():
        out = nca("train", *SMOKE, override, cwd=tmp_path)
        assert out.returncode != 0, override
        assert key in out.stderr, (override, out.stderr)
        assert "Traceback" not in out.stderr, (override, out.stderr)
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("last.ckpt"))


def test_wandb_offline_run_holds_uint8_images_and_a_gif(tmp_path: Path) -> None:
    out = nca("train", "trainer=smoke", cwd=tmp_path, env={"NCA_OUTPUT_DIR": "outputs"})
    assert out.returncode == 0, out.stderr
    (run,) = run_dirs(tmp_path)
    (wandb_run,) = (run / "wandb").glob("offline-run-*")
    assert list(wandb_run.glob("*.wandb"))
    media = wandb_run / "files" / "media"
    finals = list((media / "images").glob("final_*.png"))
    assert finals and list((media / "videos").glob("rollout_*.gif"))
    image = np.asarray(Image.open(finals[0]).convert("RGB"))
    assert image.max() == 255 and image.mean() > 100, "W&B image is black or empty"


def test_shortcuts_reach_the_run_of_a_preset_that_sets_the_field(tmp_path: Path) -> None:
    env = {"NCA_OUTPUT_DIR": "outputs"}
    args = ["task=mnist", "fire_rate=0.3", "hidden=128", "lr=1e-4", *SMOKE, "trainer.iterations=1"]
    out = nca("train", *args, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    (run,) = run_dirs(tmp_path)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["fire_rate"] == 0.3 and saved["model"]["hidden"] == 128
    assert saved["trainer"]["optimizer"]["lr"] == 1e-4
    rows = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert rows[0]["lr"] == 1e-4  # what the optimiser stepped with
    assert "22499 parameters" not in (run / "train.log").read_text()  # hidden 128, not 80


def test_an_override_that_changes_nothing_is_refused(tmp_path: Path) -> None:
    cases = {
        "logger.project=mine": "logger=none logs nothing to W&B",
        "trainer.schedule.min_lr=0.1": "trainer.schedule.name is 'piecewise'",
        "model.alive_threshold=0.2": "model.alive_mask is false",
        "hydra.sweep.dir=elsewhere": "nca train makes one run folder",
    }
    for override, reason in cases.items():
        mask = ["model.alive_mask=false"] if override.startswith("model.") else []
        out = nca("train", *SMOKE, *mask, override, cwd=tmp_path)
        assert out.returncode == 2, (override, out.stderr)
        assert f"the override '{override}' changes nothing: {reason}" in out.stderr
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


def test_a_multirun_checks_every_job_before_the_first(tmp_path: Path) -> None:
    folder = tmp_path / "multirun"
    out = nca("train", "-m", "fire_rate=0.3,abc", *SMOKE, f"hydra.sweep.dir={folder}", cwd=tmp_path)
    assert out.returncode == 2 and "'fire_rate' (model.fire_rate): 'abc'" in out.stderr
    assert "Traceback" not in out.stderr and not folder.exists()
