"""What the export tests share: a trained model with weights drawn afresh, and a real
headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by selenium) for
the web export's tests, where WebGL2 runs on its SwiftShader software GPU."""

from __future__ import annotations

import base64
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nca_cli.evaluation.runs import LoadedRun, load_run

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
FLAGS = [
    "--headless=new",
    "--no-sandbox",  # CI runs as root
    "--disable-dev-shm-usage",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--window-size=1000,1000",
]


def randomised(run: Path, seed: int = 3) -> LoadedRun:
    """The run loaded with every trained weight drawn afresh, so that the update is far from
    the zero that a new NCA's last layer starts at, yet small enough (a gain below one per
    layer) that 64 steps do not blow the state up."""
    loaded = load_run(run / "last.ckpt", ["device=cpu"])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in loaded.nca.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 / fan_in**0.5)
    return loaded


@pytest.fixture
def random_weights() -> Callable[..., LoadedRun]:
    return randomised


def _missing(reason: str) -> None:
    """Skip where the browser is absent; in CI (which installs it), fail."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs it: see .ci/run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session's page tests."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ModuleNotFoundError:
        _missing("selenium (dev extras) is not installed")
    binary = next((shutil.which(b) for b in CHROMIUM if shutil.which(b)), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        _missing("Chromium or its driver not found: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(binary)
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(driver_path)))
    driver.set_script_timeout(600)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The web export's page in the browser: open it, read its state."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    def open(self, folder: Path, query: str = "", timeout: float = 60) -> None:
        """Load ``folder``'s page from file:// and wait until its NCA is ready; the page's
        error text fails the test."""
        url = (folder / "index.html").resolve().as_uri() + (f"?{query}" if query else "")
        self.driver.get(url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, error = self.run(
                "return [window.nca ? window.nca.ready : null, "
                "document.getElementById('error').textContent]"
            )
            if ready is True:
                return
            if error:
                pytest.fail(f"the page failed: {error[:2000]}")
            time.sleep(0.1)
        logs = "\n".join(str(line) for line in self.driver.get_log("browser"))
        pytest.fail(f"the page was not ready after {timeout} s; console:\n{logs}")

    def run(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def state(self, height: int, width: int, channels: int) -> np.ndarray:
        """The page's state, ``(H, W, C)``."""
        text = self.run("return nca.readState()")
        return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(height, width, channels)


@pytest.fixture
def page(browser: Any) -> Iterator[Page]:
    yield Page(browser)
    browser.get("about:blank")  # no page left animating (software WebGL) between tests
