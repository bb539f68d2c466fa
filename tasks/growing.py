"""Growing NCA (Mordvintsev et al. 2020): grow a target image from a single living cell.

The three modes of the paper are pool settings (``task=growing``, ``task=persistent``,
``task=regenerating``); the target is a bundled emoji or any RGBA image file.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from nca_cli.config import ConfigError, require
from nca_cli.engine.layout import ChannelLayout
from nca_cli.engine.pool import Batch
from nca_cli.images import image_tensor, read_image, to_uint8
from nca_cli.tasks.base import DeviceCopies, Task


def bundled_emoji() -> list[str]:
    """Names of the emoji images shipped with nca (rendered from Noto Color Emoji)."""
    folder = resources.files(__package__) / "assets" / "emoji"
    return sorted(p.name.removesuffix(".png") for p in folder.iterdir() if p.name.endswith(".png"))


def load_rgba(target: str, size: int, key: str = "dataset.target") -> Tensor:
    """Load ``target`` (a bundled emoji name or an image path) as premultiplied RGBA.

    The image is shrunk to fit ``size`` x ``size`` keeping its aspect ratio, as the Distill
    notebook does; returns a ``(4, H, W)`` float tensor in [0, 1].
    """
    if target in bundled_emoji():
        ref = resources.files(__package__) / "assets" / "emoji" / f"{target}.png"
        with resources.as_file(ref) as p:
            image = read_image(p, "RGBA", ConfigError)
    else:
        path = Path(target).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"invalid value for '{key}': {target!r} is neither a bundled emoji ("
                + ", ".join(bundled_emoji())
                + ") nor an image file"
            )
        image = read_image(path, "RGBA", ConfigError)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    rgba = image_tensor(image)
    return torch.cat([rgba[:3] * rgba[3:], rgba[3:]])


def rgba_to_rgb(rgba: Tensor) -> Tensor:
    """Premultiplied RGBA ``(B, 4, H, W)`` over a white background, clipped to [0, 1]."""
    rgb, alpha = rgba[:, :3], rgba[:, 3:4].clamp(0.0, 1.0)
    return (1.0 - alpha + rgb).clamp(0.0, 1.0)


class RGBAOutput:
    """Scores and pictures of tasks that grow premultiplied RGBA images in their visible
    channels: MSE (with its log10, readable on a log scale) and renders over white."""

    layout: ChannelLayout

    def score(self, outputs: dict[str, Tensor]) -> dict[str, float]:
        mse = float(outputs["mse"].mean())
        return {"mse": mse, "log10_mse": float(np.log10(max(mse, 1e-12)))}

    def render(self, state: Tensor) -> np.ndarray:
        rgb = rgba_to_rgb(state[:, self.layout.visible_slice].detach().float().cpu())
        return to_uint8(rgb.permute(0, 2, 3, 1).numpy())


@dataclass
class EmojiDataset:
    """``target``: bundled emoji name or image path; ``size``: its longest side in cells;
    ``padding``: empty cells around it (the grid is size + 2 * padding)."""

    target: str = "lizard"
    size: int = 40
    padding: int = 16


class GrowingTask(RGBAOutput, Task):
    """RGBA visible channels with alpha at index 3, the rest hidden."""

    dataset_schema = EmojiDataset
    objective = ("mse", "minimize")

    def __init__(self, run):  # type: ignore[no-untyped-def]
        super().__init__(run)
        d = self.dataset_config
        require(d.size >= 1, "dataset.size", d.size, "a positive integer")
        require(d.padding >= 0, "dataset.padding", d.padding, "an integer >= 0")
        self.target = F.pad(load_rgba(d.target, d.size), (d.padding,) * 4)
        self.target_copies = DeviceCopies(self.target)

    def make_layout(self, channels: int) -> ChannelLayout:
        return ChannelLayout(channels=channels, visible=4, alpha=3)

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.target.shape[1]), int(self.target.shape[2])

    def seed(self, n: int) -> Tensor:
        """One living cell in the centre: alpha and hidden channels set to 1."""
        h, w = self.grid
        state = torch.zeros(n, self.layout.channels, h, w)
        state[:, self.layout.visible_slice.start + 3 :, h // 2, w // 2] = 1.0
        return state

    def fresh(self, n: int, generator: torch.Generator) -> Batch:
        return {"state": self.seed(n)}

    def loss(self, state: Tensor, batch: Batch) -> Tensor:
        rgba = state[:, self.layout.visible_slice].float()
        return ((rgba - self.target_copies.on(rgba.device)) ** 2).mean(dim=(1, 2, 3))

    def predict(self, state: Tensor, batch: Batch) -> dict[str, Tensor]:
        return {"mse": self.loss(state, batch)}

    def eval_images(self, state: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """What :meth:`render` shows, as floats: premultiplied RGBA over white."""
        pred = rgba_to_rgb(state[:, self.layout.visible_slice].float())
        target = rgba_to_rgb(self.target[None].to(pred.device))
        return pred, target.expand_as(pred)

    def render_target(self) -> np.ndarray:
        return to_uint8(rgba_to_rgb(self.target[None]).permute(0, 2, 3, 1).numpy())[0]


TASK = GrowingTask
