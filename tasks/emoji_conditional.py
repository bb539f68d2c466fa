"""Conditional growing: one NCA grows one of several emoji, chosen by a one-hot condition
broadcast to every cell (the 5-emoji task of Spitznagel & Keuper 2026).

The condition lives in fixed channels; mutation switches it to another emoji while the
grown state stays, so `nca eval --mutate` measures how well the NCA re-grows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from nca_cli.config import require
from nca_cli.engine.layout import ChannelLayout
from nca_cli.engine.pool import Batch
from nca_cli.tasks.base import DeviceCopies, RunSections, Task
from nca_cli.tasks.growing import RGBAOutput, load_rgba, rgba_to_rgb


@dataclass
class ConditionalEmojiDataset:
    """``targets``: bundled emoji names or image paths, one per condition."""

    targets: list[str] = field(
        default_factory=lambda: ["lizard", "butterfly", "mushroom", "smiley", "fish"]
    )
    size: int = 40
    padding: int = 16


class ConditionalEmojiTask(RGBAOutput, Task):
    dataset_schema = ConditionalEmojiDataset
    objective = ("mse", "minimize")

    def __init__(self, run: RunSections) -> None:
        super().__init__(run)
        d = self.dataset_config
        require(d.size >= 1, "dataset.size", d.size, "a positive integer")
        require(d.padding >= 0, "dataset.padding", d.padding, "an integer >= 0")
        images = [load_rgba(t, d.size, f"dataset.targets[{i}]") for i, t in enumerate(d.targets)]
        h = max(im.shape[1] for im in images)
        w = max(im.shape[2] for im in images)
        # Centre every target on one grid, whatever its aspect ratio.
        self.targets = torch.stack(
            [
                F.pad(
                    im,
                    (
                        d.padding + (w - im.shape[2]) // 2,
                        d.padding + (w - im.shape[2] + 1) // 2,
                        d.padding + (h - im.shape[1]) // 2,
                        d.padding + (h - im.shape[1] + 1) // 2,
                    ),
                )
                for im in images
            ]
        )
        self.target_copies = DeviceCopies(self.targets)

    def make_layout(self, channels: int) -> ChannelLayout:
        n = len(self.dataset_config.targets)
        require(n >= 2, "dataset.targets", self.dataset_config.targets, "at least two emoji")
        return ChannelLayout(channels=channels, conditions=n, visible=4, alpha=3)

    def seed(self, labels: Tensor) -> Tensor:
        """One living cell in the centre, the condition one-hot everywhere."""
        n, (h, w) = len(labels), self.targets.shape[-2:]
        state = torch.zeros(n, self.layout.channels, h, w)
        state[:, self.layout.condition_slice] = F.one_hot(labels, len(self.targets)).float()[
            ..., None, None
        ]
        state[:, self.layout.visible_slice.start + 3 :, h // 2, w // 2] = 1.0
        return state

    def fresh(self, n: int, generator: torch.Generator) -> Batch:
        labels = torch.randint(0, len(self.targets), (n,), generator=generator)
        return {"state": self.seed(labels), "label": labels}

    def mutate(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Switch each sample's condition to another emoji; the grown state stays."""
        k = len(self.targets)
        shift = torch.randint(1, k, batch["label"].shape, generator=generator)
        labels = (batch["label"] + shift.to(batch["label"].device)) % k
        state = batch["state"].clone()
        onehot = F.one_hot(labels, k).to(state)[..., None, None]
        state[:, self.layout.condition_slice] = onehot.expand(-1, -1, *state.shape[-2:])
        return {**batch, "state": state, "label": labels}

    def target_of(self, batch: Batch, device: torch.device) -> Tensor:
        return self.target_copies.on(device)[batch["label"].to(device)]

    def loss(self, state: Tensor, batch: Batch) -> Tensor:
        rgba = state[:, self.layout.visible_slice].float()
        return ((rgba - self.target_of(batch, rgba.device)) ** 2).mean(dim=(1, 2, 3))

    def predict(self, state: Tensor, batch: Batch) -> dict[str, Tensor]:
        return {"mse": self.loss(state, batch)}

    def evaluation_batches(self, split: str, batch_size: int):  # type: ignore[no-untyped-def]
        """Every emoji, each grown from its seed."""
        labels = torch.arange(len(self.targets))
        for start in range(0, len(labels), batch_size):
            part = labels[start : start + batch_size]
            yield {"state": self.seed(part), "label": part}

    def eval_images(self, state: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """The grown image and the emoji its condition asks for, over white."""
        pred = rgba_to_rgb(state[:, self.layout.visible_slice].float())
        return pred, rgba_to_rgb(self.target_of(batch, pred.device))


TASK = ConditionalEmojiTask
