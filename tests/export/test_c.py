"""``nca export --format c``: the C99 step, compiled here with the system's cc, runs 64 steps
like the PyTorch step for every perception, padding and activation it supports, float32
and int8; the others are refused by name."""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nca_cli import api
from nca_cli.export import ExportError
from nca_cli.export.c_source import TOLERANCE, export_c

SMOKE = ["task=growing", "trainer=smoke", "logger=none", "trainer.iterations=2"]
STEPS = 64

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc)")


def trained(folder: Path, *overrides: str) -> Path:
    api.train(api.compose([*SMOKE, *overrides]), folder)
    return folder


def c_rollout(folder: Path, state: torch.Tensor, fire: torch.Tensor) -> list[np.ndarray]:
    """Compile the exported step on its own and run it from ``state`` with the masks."""
    library = folder / "test_step.so"
    subprocess.run(
        ["cc", "-std=c99", "-O2", "-shared", "-fPIC", "-o", str(library), "nca.c", "-lm"],
        cwd=folder,
        check=True,
    )
    step = ctypes.CDLL(str(library)).nca_step
    step.argtypes = [ctypes.c_void_p] * 3
    now = np.ascontiguousarray(state[0].permute(1, 2, 0).numpy())
    states = []
    for mask in fire:
        nxt = np.empty_like(now)
        m = np.ascontiguousarray(mask[0, 0].numpy().astype(np.uint8))
        step(now.ctypes.data, nxt.ctypes.data, m.ctypes.data)
        states.append(nxt)
        now = nxt
    return states


def compare(loaded, folder: Path) -> float:
    """The max abs difference of the C rollout and the PyTorch one, from a random state
    whose alpha keeps most cells alive; asserts that the states did change."""
    nca = loaded.nca.eval()
    g = torch.Generator().manual_seed(11)
    h, w = loaded.task.fresh(1, g)["state"].shape[-2:]
    state = torch.rand((1, nca.layout.channels, h, w), generator=g)
    fire = (torch.rand((STEPS, 1, 1, h, w), generator=g) < 0.5).float()
    got = c_rollout(folder, state, fire)
    want, error = state, 0.0
    with torch.no_grad():
        for i in range(STEPS):
            want = nca.reference_step(want, fire[i])
            error = max(error, float(np.abs(got[i] - want[0].permute(1, 2, 0).numpy()).max()))
    moved = np.abs(got[-1] - state[0].permute(1, 2, 0).numpy()).max()
    assert moved > 0.1, "the rollout left the state where it was: the check would prove nothing"
    assert np.abs(got[-1]).max() < 1e6
    return error


@pytest.mark.parametrize(
    "overrides",
    [
        ["perception=sobel"],
        ["perception=conv"],
        ["perception=dilated"],
        ["perception=multi"],
        ["perception=residual"],
        ["perception=selfclassifying"],
        ["perception=sobel", "model.padding=circular", "model.activation=tanh"],
        ["perception=conv", "model.padding=reflect", "model.activation=gelu"],
        ["perception=conv", "perception.depthwise=true", "perception.features=48"],
    ],
    ids=lambda o: "-".join(x.split("=")[1] for x in o),
)
def test_the_c_step_runs_like_the_pytorch_step(
    tmp_path: Path, overrides: list[str], random_weights: Any
) -> None:
    loaded = random_weights(trained(tmp_path / "run", *overrides))
    report = export_c(loaded, tmp_path / "c", steps=8)
    assert report.max_abs_error is not None and report.max_abs_error <= TOLERANCE
    assert compare(loaded, tmp_path / "c") <= TOLERANCE


def test_int8_weights_are_a_quarter_and_run_like_their_rounded_pytorch_twin(
    tmp_path: Path, random_weights: Any
) -> None:
    run = trained(tmp_path / "run")
    loaded = random_weights(run)
    full = export_c(loaded, tmp_path / "float", steps=8)
    small = export_c(loaded, tmp_path / "int8", steps=8, quantization="int8")
    assert small.weight_bytes < 0.5 * full.weight_bytes
    assert small.max_abs_error is not None and small.max_abs_error <= TOLERANCE
    assert small.max_abs_error_float is not None and small.max_abs_error_float > 0
    header = (tmp_path / "int8" / "nca_model.h").read_text()
    assert "static const int8_t nca_weight_1[]" in header
    # The header's weights are what the PyTorch step runs with once rounded the same way.
    twin = random_weights(run)
    from nca_cli.export.c_source import quantize

    with torch.no_grad():
        for layer in twin.nca.update.layers:
            q, scale = quantize(layer.weight.numpy())
            layer.weight.copy_(torch.from_numpy(q.astype(np.float32) * scale[:, None]))
    assert compare(twin, tmp_path / "int8") <= TOLERANCE


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["perception=attention"], "perception 'attention' cannot be exported to c"),
        (["model.update_noise=0.02"], "model.update_noise=0.02 adds noise"),
    ],
    ids=["attention", "noise"],
)
def test_unsupported_models_are_refused_by_name(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    run = trained(tmp_path / "run", *overrides)
    with pytest.raises(ExportError, match=message):
        api.export(run, "c", tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_the_command_states_the_memory_and_the_example_grows_the_seed(tmp_path: Path) -> None:
    run = trained(tmp_path / "run")
    out = subprocess.run(
        [sys.executable, "-m", "nca_cli", "export", "--run", str(run), "--format", "c"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "bytes of weights" in out.stdout and "max abs error" in out.stdout
    folder = run / "export" / "c"
    saved = json.loads((folder / "export.json").read_text())
    assert saved["state_bytes"] == 4 * 16 * saved["grid"][0] * saved["grid"][1]
    subprocess.run(
        ["cc", "-std=c99", "-o", "example", "example.c", "nca.c", "-lm"], cwd=folder, check=True
    )
    shown = subprocess.run(
        [str(folder / "example"), "3"], capture_output=True, text=True, check=True
    ).stdout
    grid = [line for line in shown.splitlines() if set(line) <= set(".+#") and line]
    assert len(grid) == saved["grid"][0] and "#" in "".join(grid)  # the seed cell, alive
