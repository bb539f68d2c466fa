"""Edge-to-emoji: one NCA grows many images, each from its own starting environment
(GANCA, Otte et al. 2021). The state starts as the Canny edge image of an emoji face
(black ink whose alpha is the edge strength, hidden channels zero), and the NCA grows the
coloured face.

The 50 faces (Noto Color Emoji), their Canny edges and a few line drawings are bundled
(``tasks/assets/render_faces.py`` makes them). The faces are split into train and
validation by a seeded split; two more sets test generalisation: ``ood``, the validation
edges made hand-drawn-like (jittered, thicker or broken strokes, uneven pressure, drawn
from ``dataset.ood_seed``), and ``drawings``, line drawings without a ground truth.
``loss=mse`` trains supervised, ``loss=gan`` adversarially (the discriminator is the
task's co-trained module, see :mod:`nca_cli.tasks._adversarial`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from nca_cli.config import ConfigError, parse, require
from nca_cli.datasets.splits import random_split
from nca_cli.engine.layout import ChannelLayout
from nca_cli.engine.pool import Batch
from nca_cli.images import image_tensor, read_image
from nca_cli.tasks._adversarial import Adversary, GanConfig, validate_gan
from nca_cli.tasks._cases import CaseTask
from nca_cli.tasks.base import CoTrained, LossConfig, RunSections
from nca_cli.tasks.growing import RGBAOutput, rgba_to_rgb

# The side of the bundled images; other sizes are resampled from them.
BUNDLED_SIDE = 32


@dataclass
class EdgesDataset:
    """``size``: the side of a face in cells (bundled at 32; others are resampled);
    ``padding``: empty cells around it; ``val_fraction`` of the faces are held out by a
    split seeded with ``split_seed`` unless ``splits`` names a split file; ``augment``
    mirrors training samples at random; ``ood_seed``, ``ood_jitter`` (largest stroke
    displacement in cells) and ``ood_gaps`` (fraction of stroke cells erased) make the
    hand-drawn-like ``ood`` set."""

    size: int = 32
    padding: int = 4
    val_fraction: float = 0.2
    split_seed: int = 0
    splits: str | None = None
    augment: bool = True
    ood_seed: int = 0
    ood_jitter: float = 1.0
    ood_gaps: float = 0.15


def _read(name: str, mode: str, size: int) -> Tensor:
    """A bundled PNG (``faces/<name>``) as a float ``(C, size, size)`` tensor in [0, 1].

    Faces are resampled by Pillow (Lanczos, in premultiplied space); edge images
    (``mode="L"``) are max-pooled when shrunk, so thin strokes keep their strength."""
    ref = resources.files(__package__) / "assets" / "faces" / name
    with resources.as_file(ref) as path:
        image = read_image(path, mode, ConfigError)
    if mode != "L" and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    out = image_tensor(image)
    if mode == "L" and size < out.shape[-1]:
        out = F.adaptive_max_pool2d(out, size)
    elif mode == "L" and size > out.shape[-1]:
        out = F.interpolate(out[None], size=(size, size), mode="bilinear")[0]
    return out


def bundled_faces() -> list[str]:
    """Names of the bundled faces (Unicode names in lower case)."""
    folder = resources.files(__package__) / "assets" / "faces"
    return sorted(p.name.removesuffix(".png") for p in folder.iterdir() if p.name.endswith(".png"))


def bundled_drawings() -> list[str]:
    folder = resources.files(__package__) / "assets" / "faces" / "drawings"
    return sorted(p.name.removesuffix(".png") for p in folder.iterdir() if p.name.endswith(".png"))


def hand_drawn(
    edges: np.ndarray, rng: np.random.Generator, jitter: float, gaps: float
) -> np.ndarray:
    """An edge image ``(H, W)`` in [0, 1] redrawn as by hand: strokes displaced by a smooth
    random field of at most ``jitter`` cells, thickened to 2 cells half of the time,
    ``gaps`` of their cells erased in smooth patches (broken strokes) and their intensity
    scaled by a pen pressure in [0.7, 1]."""
    from scipy import ndimage

    h, w = edges.shape
    field = np.stack([ndimage.gaussian_filter(rng.normal(size=(h, w)), 2.0) for _ in range(2)])
    field *= jitter / max(float(np.abs(field).max()), 1e-8)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    out = ndimage.map_coordinates(edges, [rows + field[0], cols + field[1]], order=1, cval=0.0)
    if rng.random() < 0.5:
        out = ndimage.grey_dilation(out, size=(2, 2))
    if gaps > 0:
        patches = ndimage.gaussian_filter(rng.normal(size=(h, w)), 1.0)
        stroke = out > 0.1
        if stroke.any():
            cut = np.quantile(patches[stroke], 1.0 - gaps)
            out = np.where(patches > cut, 0.0, out)
    return (np.clip(out, 0.0, 1.0) * rng.uniform(0.7, 1.0)).astype(np.float32)


class Edges2EmojiTask(RGBAOutput, CaseTask):
    """RGBA visible channels (alpha at 3), the rest hidden; the edge image starts as the
    alpha channel, so the cells under the strokes live and the rest grows from them."""

    dataset_schema = EdgesDataset
    loss_schema = GanConfig
    losses = ("mse", "gan")
    objective = ("mse", "minimize")
    evaluation_sets = ("train", "val", "ood", "drawings")

    def __init__(self, run: RunSections) -> None:
        super().__init__(run)
        d = self.dataset_config
        require(d.size >= 4, "dataset.size", d.size, "an integer >= 4")
        require(d.padding >= 0, "dataset.padding", d.padding, "an integer >= 0")
        require(0 < d.val_fraction < 1, "dataset.val_fraction", d.val_fraction, "in (0, 1)")
        require(d.ood_jitter >= 0, "dataset.ood_jitter", d.ood_jitter, "a number >= 0")
        require(0 <= d.ood_gaps < 1, "dataset.ood_gaps", d.ood_gaps, "a fraction in [0, 1)")
        if self.loss_config.name == "gan":
            validate_gan(self.loss_config)
        else:  # settings of loss=gan are no settings of loss=mse
            parse(run.loss, LossConfig, "loss")
        pad = (d.padding,) * 4
        ids = bundled_faces()
        self.targets = F.pad(torch.stack([_read(f"{i}.png", "RGBA", d.size) for i in ids]), pad)
        self.targets = torch.cat(
            [self.targets[:, :3] * self.targets[:, 3:], self.targets[:, 3:]], 1
        )
        self.edges = F.pad(torch.stack([_read(f"edges/{i}.png", "L", d.size) for i in ids]), pad)
        default = None if d.splits else random_split(ids, d.val_fraction, 0.0, d.split_seed)
        self.use_cases(ids, default or {}, d.splits)
        rng = np.random.default_rng(d.ood_seed)
        redrawn = [
            torch.from_numpy(hand_drawn(self.edges[r, 0].numpy(), rng, d.ood_jitter, d.ood_gaps))
            for r in self.rows["val"]
        ]
        self.ood_edges = torch.stack(redrawn)[:, None] if redrawn else self.edges[:0]
        drawings = [_read(f"drawings/{n}.png", "L", d.size) for n in bundled_drawings()]
        self.drawings = F.pad(torch.stack(drawings), pad)
        self.adversary: Adversary | None = None

    def make_layout(self, channels: int) -> ChannelLayout:
        return ChannelLayout(channels=channels, visible=4, alpha=3)

    def seed(self, edges: Tensor) -> Tensor:
        """States whose alpha is the edge image ``(B, 1, H, W)``: black strokes."""
        state = torch.zeros(len(edges), self.layout.channels, *edges.shape[-2:])
        state[:, self.layout.visible_slice.start + 3] = edges[:, 0]
        return state

    def batch_of(self, rows: list[int]) -> Batch:
        edges = self.edges[rows]
        return {"state": self.seed(edges), "edges": edges, "target": self.targets[rows]}

    def fresh(self, n: int, generator: torch.Generator) -> Batch:
        batch = super().fresh(n, generator)
        if self.dataset_config.augment:
            flip = torch.rand(n, generator=generator) < 0.5
            batch = {
                k: torch.where(flip[:, None, None, None], v.flip(-1), v) for k, v in batch.items()
            }
        return batch

    def has_split(self, split: str) -> bool:
        if split == "ood":
            return bool(self.rows.get("val"))
        return split == "drawings" or super().has_split(split)

    def evaluation_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        if split not in ("ood", "drawings"):
            yield from super().evaluation_batches(split, batch_size)
            return
        rows = self.rows["val"]
        edges = self.ood_edges if split == "ood" else self.drawings
        for start in range(0, len(edges), batch_size):
            part = edges[start : start + batch_size]
            batch = {"state": self.seed(part), "edges": part}
            if split == "ood":
                batch["target"] = self.targets[rows[start : start + batch_size]]
            yield batch

    def rgba(self, state: Tensor) -> Tensor:
        return state[:, self.layout.visible_slice].float()

    def mse(self, state: Tensor, batch: Batch) -> Tensor:
        if "target" not in batch:
            raise ConfigError(
                "the drawings set has no ground truth: it has pictures only "
                "(`nca eval --sets drawings`), no metrics"
            )
        rgba = self.rgba(state)
        return ((rgba - batch["target"].to(rgba.device)) ** 2).mean(dim=(1, 2, 3))

    def loss(self, state: Tensor, batch: Batch) -> Tensor:
        if self.loss_config.name == "mse":
            return self.mse(state, batch)
        if self.adversary is None:
            raise RuntimeError("loss=gan needs the discriminator of build_cotrained()")
        adversarial = self.adversary.generator_loss(state, batch)
        return adversarial + self.loss_config.reconstruction * self.mse(state, batch)

    def rank_loss(self, state: Tensor, batch: Batch) -> Tensor:
        """The MSE to the target, whatever the loss: the adversarial term is relative to a
        discriminator that keeps changing (and unbounded for WGAN), so it orders the pool
        by no fixed measure."""
        return self.mse(state, batch)

    def build_cotrained(self, device: torch.device) -> CoTrained | None:
        if self.loss_config.name != "gan":
            return None
        grid = min(self.edges.shape[-2:])
        depth = self.loss_config.d_depth
        require(
            grid >= 2**depth,
            "loss.d_depth",
            depth,
            f"at most log2 of the grid side ({grid}): each layer halves it",
        )

        def inputs(state: Tensor, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
            device = state.device
            return self.rgba(state), batch["target"].to(device), batch["edges"].to(device)

        self.adversary = Adversary(self.loss_config, 4, 1, inputs, device, self.run.seed)
        return self.adversary

    def predict(self, state: Tensor, batch: Batch) -> dict[str, Tensor]:
        return {"mse": self.mse(state, batch)}

    def eval_images(self, state: Tensor, batch: Batch) -> tuple[Tensor, Tensor] | None:
        """The grown face and its emoji over white; None for the drawings (no truth)."""
        if "target" not in batch:
            return None
        pred = rgba_to_rgb(self.rgba(state))
        return pred, rgba_to_rgb(batch["target"].to(pred.device).float())


TASK = Edges2EmojiTask
