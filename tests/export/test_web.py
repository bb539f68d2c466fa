"""``nca export --format web`` and ``nca view``: the page, opened from ``file://`` in a real
headless Chromium, steps like the PyTorch step (the same hashed fire masks), for every
perception, padding and activation it supports; conditions switch; the server answers on
its port and stops on SIGINT."""

from __future__ import annotations

import base64
import io
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
from nca_cli.evaluation.runs import load_run
from nca_cli.export import ExportError
from nca_cli.export.web_page import export_web, hash_fire
from nca_cli.tasks.growing import rgba_to_rgb
from nca_cli.zoo import catalogue

MODELS = catalogue()

SMOKE = ["trainer=smoke", "logger=none", "trainer.iterations=2"]
STEPS = 16
TOLERANCE = 1e-4  # float32 in the shader against float32 in PyTorch, 16 steps


def trained(folder: Path, *overrides: str) -> Path:
    api.train(api.compose([*SMOKE, *overrides]), folder)
    return folder


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
    page: Any, tmp_path: Path, overrides: list[str], random_weights: Any
) -> None:
    loaded = random_weights(trained(tmp_path / "run", *overrides), seed=5)
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


def canvas_cells(page: Any, height: int, width: int) -> np.ndarray:
    """The canvas as the browser drew it (a PNG read back), one pixel at each cell's
    centre: ``(H, W, 3)`` uint8."""
    from PIL import Image

    url = page.run("return document.getElementById('canvas').toDataURL('image/png')")
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    zoom = image.shape[0] // height
    centres = np.arange(height) * zoom + zoom // 2, np.arange(width) * zoom + zoom // 2
    return image[np.ix_(*centres)][..., :3]


def rendered(state: torch.Tensor) -> np.ndarray:
    """PyTorch's picture of a lizard state, as the page draws it (RGB over white)."""
    rgb = rgba_to_rgb(state[:, :4])[0].permute(1, 2, 0).numpy()
    return np.rint(rgb * 255).astype(np.int16)


def test_the_lizard_grows_on_the_canvas_is_erased_by_a_drag_and_regrows(
    page: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    report = api.export(Path("zoo:regenerating-lizard"), "web", tmp_path / "web")
    h, w, c = report.grid
    loaded = load_run(MODELS["regenerating-lizard"].path, ["device=cpu"])
    nca = loaded.nca.eval()
    page.open(tmp_path / "web", "paused&seed=0")
    grown, regrown = 96, 96
    page.run(f"nca.step({grown})")
    state = loaded.task.fresh(1, torch.Generator().manual_seed(0))["state"].float()
    fire = hash_fire(0, grown + regrown, h, w, nca.fire_rate)
    with torch.no_grad():
        for i in range(grown):
            state = nca.reference_step(state, fire[i])
    before = canvas_cells(page, h, w).astype(np.int16)
    assert np.abs(before - rendered(state)).max() <= 2  # the page draws PyTorch's lizard
    assert (before.sum(-1) < 3 * 200).sum() > 300  # and it is a lizard, not a blank grid

    # A drag across the lizard with the default brush (6 cells) erases a band.
    canvas = page.driver.find_element(By.ID, "canvas")
    zoom = canvas.size["height"] / h
    actions = ActionChains(page.driver)
    actions.move_to_element_with_offset(canvas, int(-6 * zoom), 0).click_and_hold()
    actions.move_by_offset(int(12 * zoom), 0).release().perform()
    erased = page.state(h, w, c)
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    band = (np.abs(yy - h / 2) < 5) & (np.abs(xx - w / 2) < 5)
    assert (erased[band] == 0).all()
    damaged = canvas_cells(page, h, w).astype(np.int16)
    assert np.abs(damaged - before).mean() > 2  # the hole shows

    # It regrows, step for step as PyTorch regrows the same damaged state, close to where
    # the undamaged lizard would be by then.
    page.run(f"nca.step({regrown})")
    after = canvas_cells(page, h, w).astype(np.int16)
    regrowing = torch.from_numpy(erased.copy()).permute(2, 0, 1)[None]
    with torch.no_grad():
        for i in range(grown, grown + regrown):
            regrowing = nca.reference_step(regrowing, fire[i])
            state = nca.reference_step(state, fire[i])
    assert np.abs(after - rendered(regrowing)).max() <= 2
    undamaged = rendered(state)
    assert np.abs(after - undamaged).mean() < 0.3 * np.abs(damaged - before).mean()
