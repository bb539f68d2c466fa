"""``nca export --format web`` and ``nca view``: the page, opened from ``file://`` in a real
headless Chromium, steps like the PyTorch step (the same hashed fire masks), for every
perception, padding and activation it supports; conditions switch; the server answers on
its port and stops on SIGINT."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nca_cli import api
from nca_cli.evaluation.runs import LoadedRun, load_run
from nca_cli.export.onnx_graph import ExportError
from nca_cli.export.web_page import export_web, hash_fire

SMOKE = ["trainer=smoke", "logger=none", "trainer.iterations=2"]
STEPS = 16
TOLERANCE = 1e-4  # float32 in the shader against float32 in PyTorch, 16 steps


def trained(folder: Path, *overrides: str) -> Path:
    api.train(api.compose([*SMOKE, *overrides]), folder)
    return folder


def randomised(run: Path) -> LoadedRun:
    """The run with its trained weights drawn afresh (a gain below one per layer), so that
    the update is far from zero yet the state stays bounded."""
    loaded = load_run(run / "last.ckpt", ["device=cpu"])
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in loaded.nca.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 / fan_in**0.5)
    return loaded


def as_base64(state: torch.Tensor) -> str:
    return base64.b64encode(state[0].permute(1, 2, 0).numpy().astype("<f4").tobytes()).decode()


@pytest.mark.parametrize(
    "overrides",
    [
        ["task=growing", "perception=sobel"],
        ["task=growing", "perception=dilated", "model.padding=circular"],
        ["task=growing", "perception=residual", "model.activation=gelu"],
        ["task=growing", "perception=selfclassifying", "model.padding=reflect"],
        ["task=growing", "perception=conv", "perception.depthwise=true", "fire_rate=1.0"],
    ],
    ids=["sobel", "dilated-circular", "residual-gelu", "conv-relu-reflect", "depthwise-all"],
)
def test_the_page_steps_like_the_pytorch_step(
    page: Any, tmp_path: Path, overrides: list[str]
) -> None:
    loaded = randomised(trained(tmp_path / "run", *overrides))
    report = export_web(loaded, tmp_path / "web")
    h, w, c = report.grid
    page.open(tmp_path / "web", "paused&seed=7")
    g = torch.Generator().manual_seed(2)
    state = torch.rand((1, c, h, w), generator=g)
    page.run("nca.setState(arguments[0])", as_base64(state))
    page.run(f"nca.step({STEPS})")
    got = page.state(h, w, c)
    nca = loaded.nca.eval()
    fire = hash_fire(7, STEPS, h, w, nca.fire_rate)
    want = state
    with torch.no_grad():
        for i in range(STEPS):
            want = nca.reference_step(want, fire[i])
    want_hwc = want[0].permute(1, 2, 0).numpy()
    assert np.abs(got - want_hwc).max() <= TOLERANCE * max(1.0, np.abs(want_hwc).max())
    assert np.abs(got - state[0].permute(1, 2, 0).numpy()).max() > 0.1  # it did step
    if nca.fire_rate < 1:  # the hashed mask is a fair coin, and differs between steps
        assert 0.4 < fire.mean() < 0.6 and (fire[0] != fire[1]).any()


def test_the_condition_switches_and_the_brush_erases(page: Any, tmp_path: Path) -> None:
    run = trained(tmp_path / "run", "task=emoji_conditional")
    loaded = load_run(run / "last.ckpt", ["device=cpu"])
    report = export_web(loaded, tmp_path / "web")
    h, w, c = report.grid
    layout = loaded.nca.layout
    page.open(tmp_path / "web", "paused")
    names = page.run(
        "return Array.from(document.getElementById('condition').options).map(o => o.text)"
    )
    assert names == list(loaded.task.dataset_config.targets)
    page.run("nca.setCondition(2)")
    state = page.state(h, w, c)
    conditions = state[..., layout.condition_slice]
    assert (conditions[..., 2] == 1).all() and conditions.sum() == h * w
    alive = torch.zeros((1, c, h, w))
    alive[:, layout.fixed :] = 1.0
    page.run("nca.setState(arguments[0])", as_base64(alive))
    page.run(f"nca.erase({w / 2}, {h / 2}, 5)")
    state = page.state(h, w, c)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    inside = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < 25
    assert (state[inside][:, layout.fixed :] == 0).all()
    assert (state[~inside][:, layout.fixed :] == 1).all()


def test_unsupported_models_are_refused_by_name(tmp_path: Path) -> None:
    run = trained(tmp_path / "run", "task=growing", "perception=attention")
    with pytest.raises(ExportError, match="perception 'attention' cannot be exported to web"):
        api.export(run, "web", tmp_path / "web")


def test_nca_view_answers_on_its_port_and_stops_on_sigint(tmp_path: Path) -> None:
    run = trained(tmp_path / "run", "task=growing")
    view = subprocess.Popen(
        [sys.executable, "-m", "nca_cli", "view", "--run", str(run), "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert view.stdout is not None
        line = view.stdout.readline()
        assert line.startswith("serving http://127.0.0.1:"), line + view.stderr.read()
        url = line.split()[1]
        with urllib.request.urlopen(url, timeout=30) as page:
            assert page.status == 200 and b'<canvas id="canvas">' in page.read()
        model = url.replace("index.html", "model.js")
        with urllib.request.urlopen(model, timeout=30) as script:
            text = script.read().decode()
        description = json.loads(text[text.index("{") : text.rindex("}") + 1])
        assert description["channels"] == 16 and description["fire_rate"] == 0.5
        view.send_signal(signal.SIGINT)
        assert view.wait(timeout=30) == 0
        assert "stopped" in view.stdout.read()
    finally:
        view.kill()
