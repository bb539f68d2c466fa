"""The NCA live in the browser: a self-contained folder (``index.html``, ``nca.js``, and
``model.js`` with the weights) that opens from ``file://`` or any static server and runs the
step on the GPU with WebGL2 fragment shaders, as the Distill article's demo does. The fire
mask is a hash of (seed, step, cell) that :func:`hash_fire` computes the same way, so the
page's steps can be compared with the PyTorch step (``tests/export/test_web.py`` does, in a
headless Chromium)."""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from nca_cli.atomic import write_text_atomic
from nca_cli.engine.nca import NCA
from nca_cli.evaluation.runs import LoadedRun
from nca_cli.export import ExportError
from nca_cli.export.portable import portable, seed_entries
from nca_cli.export.staging import staged

PAGE = ("index.html", "nca.js")
MAX_CHANNELS = 32  # 8 RGBA render targets, what most WebGL2 GPUs (and SwiftShader) allow


@dataclass
class WebExport:
    """What ``export.json`` records."""

    folder: str
    files: list[str]
    grid: list[int]  # height, width, channels
    fire_rate: float
    weight_bytes: int
    checkpoint: str
    iteration: int


def _pcg(v: np.ndarray) -> np.ndarray:
    """The PCG hash of uint32 values (the page's ``pcg``)."""
    s = v * np.uint32(747796405) + np.uint32(2891336453)
    w = ((s >> ((s >> np.uint32(28)) + np.uint32(4))) ^ s) * np.uint32(277803737)
    return (w >> np.uint32(22)) ^ w


def hash_fire(
    seed: int, steps: int, height: int, width: int, rate: float, start: int = 0
) -> torch.Tensor:
    """The page's fire masks for steps ``start`` .. ``start + steps - 1``: ``(steps, 1, 1, H,
    W)`` in {0, 1}, cell (y, x) firing when ``pcg(x + pcg(y + pcg(step + seed))) >> 8`` over
    2**24 is below the fire rate."""
    with np.errstate(over="ignore"):
        step = np.arange(start, start + steps, dtype=np.uint32)[:, None, None]
        y = np.arange(height, dtype=np.uint32)[None, :, None]
        x = np.arange(width, dtype=np.uint32)[None, None, :]
        h = _pcg(x + _pcg(y + _pcg(step + np.uint32(seed))))
    u = (h >> np.uint32(8)).astype(np.float32) / np.float32(16777216.0)
    fire = u < np.float32(rate) if rate < 1 else np.ones_like(u, dtype=bool)
    return torch.from_numpy(fire.astype(np.float32))[:, None, None]


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def export_web(loaded: LoadedRun, out: Path, title: str = "", seed: int = 0) -> WebExport:
    """Write the page for one sample on the task's grid to ``out``, headed ``title``
    (default: the task and the checkpoint's folder)."""
    nca = loaded.nca
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        seed_state = loaded.task.fresh(1, g)["state"].float().cpu()
    model = portable(nca, loaded.config, tuple(seed_state.shape[-2:]), "web")
    assert isinstance(nca, NCA)
    if model.channels > MAX_CHANNELS:
        raise ExportError(
            f"the NCA has {model.channels} channels; the web page keeps at most {MAX_CHANNELS} "
            "(8 RGBA float render targets): export with --format onnx or c"
        )
    layout = nca.layout
    index, values = seed_entries(seed_state)
    targets = getattr(loaded.task.dataset_config, "targets", None)
    names = [str(t) for t in targets] if layout.conditions and targets else []
    task_name = loaded.config.get("task", {}).get("name", "nca")
    title = title or f"{task_name}, {loaded.path.parent.name}"
    description = {
        "title": f"nca: {title} (iteration {loaded.iteration})",
        "width": model.width,
        "height": model.height,
        "channels": model.channels,
        "fixed": model.fixed,
        "inputs": layout.inputs,
        "conditions": layout.conditions,
        "condition_names": names or [str(i) for i in range(layout.conditions)],
        "visible": layout.visible,
        "alpha_channel": layout.alpha_channel,
        "alive_channel": model.alive_channel,
        "alive_threshold": model.alive_threshold,
        "alive_pool": model.alive_pool,
        "fire_rate": model.fire_rate,
        "padding": model.padding,
        "activation": model.activation,
        "convolutions": [
            {
                "kernel": c.kernel,
                "dilation": c.dilation,
                "features": c.features,
                "depthwise": c.depthwise,
                "activation": c.activation,
                "weight": _b64(c.weight),
                "bias": None if c.bias is None else _b64(c.bias),
            }
            for c in model.convolutions
        ],
        "layers": [
            {
                "inputs": layer.weight.shape[1],
                "outputs": layer.weight.shape[0],
                "weight": _b64(layer.weight),
                "bias": _b64(layer.bias),
            }
            for layer in model.layers
        ],
        "seed": {"index": index.tolist(), "value": values.tolist()},
    }
    report = WebExport(
        folder=str(out),
        files=[*PAGE, "model.js"],
        grid=[model.height, model.width, model.channels],
        fire_rate=model.fire_rate,
        weight_bytes=model.float32_bytes,
        checkpoint=str(loaded.path),
        iteration=loaded.iteration,
    )
    with staged(out) as folder:
        for name in PAGE:
            text = resources.files("nca_cli.export").joinpath("web", name).read_text()
            (folder / name).write_text(text)
        (folder / "model.js").write_text(
            "// The NCA's sizes and weights (float32, little-endian, base64), written by nca "
            "export.\nwindow.NCA_MODEL = " + json.dumps(description) + ";\n"
        )
        write_text_atomic(folder / "export.json", json.dumps(asdict(report), indent=2) + "\n")
    return report
