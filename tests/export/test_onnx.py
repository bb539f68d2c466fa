"""``nca export --format onnx``: the step and a rollout as ONNX graphs that onnxruntime runs
like the PyTorch step, for every perception it supports; the others refused by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nca_cli import api
from nca_cli.evaluation.runs import load_run
from nca_cli.export import ExportError
from nca_cli.export.onnx_graph import ROLLOUT_TOLERANCE, STEP_TOLERANCE, StepGraph

onnxruntime = pytest.importorskip("onnxruntime", reason="pip install 'nca-cli[export]'")

SMOKE = ["task=growing", "trainer=smoke", "logger=none", "trainer.iterations=2"]


def trained(folder: Path, *overrides: str) -> Path:
    api.train(api.compose([*SMOKE, *overrides]), folder)
    return folder


@pytest.mark.parametrize(
    "overrides",
    [
        ["perception=sobel"],
        ["perception=conv"],
        ["perception=dilated"],
        ["perception=multi"],
        ["perception=residual"],
        ["perception=attention"],
        ["model.update_noise=0.02", "fire_rate=1.0"],  # noise an input; every cell fires
    ],
    ids=lambda o: o[0].split("=")[1],
)
def test_onnx_runs_like_the_pytorch_step(tmp_path: Path, overrides: list[str]) -> None:
    run = trained(tmp_path / "run", *overrides)
    report = api.export(run, "onnx", tmp_path / "onnx", steps=4)
    assert report.max_abs_error_step <= STEP_TOLERANCE
    assert report.max_abs_error_rollout <= ROLLOUT_TOLERANCE
    saved = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert saved["max_abs_error_rollout"] == report.max_abs_error_rollout
    # The graph alone, on inputs of our own: the next state, not the state it was given.
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "rollout_4.onnx"))
    shapes = saved["inputs"]
    g = torch.Generator().manual_seed(7)
    feeds = {name: torch.rand(shape, generator=g).numpy() for name, shape in shapes.items()}
    feeds["fire"] = (feeds["fire"] < 0.5).astype(np.float32)
    got = session.run(None, feeds)[0]
    loaded = load_run(run / "last.ckpt", ["device=cpu"])
    with torch.no_grad():
        inputs = [torch.from_numpy(feeds[n]) for n in shapes]
        want = StepGraph(loaded.nca.eval(), 4)(*inputs).numpy()
    assert np.abs(got - want).max() <= ROLLOUT_TOLERANCE
    assert np.abs(got - feeds["state"]).max() > 1e-3


def test_unsupported_models_are_refused_by_name(tmp_path: Path) -> None:
    run = trained(tmp_path / "run", "perception=deformable")
    with pytest.raises(ExportError, match="perception 'deformable' cannot be exported"):
        api.export(run, "onnx", tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_the_command_prints_the_check(tmp_path: Path) -> None:
    run = trained(tmp_path / "run")
    out = subprocess.run(
        [sys.executable, "-m", "nca_cli", "export", "--run", str(run), "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "max abs error" in out.stdout and (run / "export" / "onnx" / "step.onnx").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "nca_cli", "export", "--run", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "not a run folder" in bad.stderr
