"""Binary segmentation with an NCA: the image sits in fixed input channels, one visible
channel holds the mask logit, and every cell is alive (no alpha)."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nca_cli.config import require
from nca_cli.datasets.splits import random_split
from nca_cli.engine.layout import ChannelLayout
from nca_cli.engine.pool import Batch
from nca_cli.images import to_uint8
from nca_cli.tasks._cases import CaseTask
from nca_cli.tasks.base import LossConfig, RunSections


@dataclass
class SegmentationDataset:
    """``size``: side of the (square) grid the images are resized to; ``val_fraction`` and
    ``test_fraction`` of the cases are held out by a split seeded with ``split_seed``
    unless ``splits`` names a split file (``{"train": [...], "val": [...], "test": [...]}``
    of case ids); ``augment`` flips and rotates training samples."""

    size: int = 64
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    split_seed: int = 0
    splits: str | None = None
    augment: bool = True
    download: bool = True


@dataclass
class SegmentationLoss(LossConfig):
    """``dice_bce``: Dice loss + binary cross-entropy, weighted."""

    name: str = "dice_bce"
    dice_weight: float = 1.0
    bce_weight: float = 1.0


def dice_score(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-sample Dice of probabilities or binary masks ``(B, 1, H, W)``."""
    inter = (pred * target).flatten(1).sum(1)
    total = pred.flatten(1).sum(1) + target.flatten(1).sum(1)
    return (2 * inter + eps) / (total + eps)


def iou_score(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-sample intersection over union of binary masks ``(B, 1, H, W)``."""
    inter = (pred * target).flatten(1).sum(1)
    union = ((pred + target) > 0).float().flatten(1).sum(1)
    return (inter + eps) / (union + eps)


def augment(images: Tensor, masks: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random flips and quarter turns, the same for an image and its mask."""
    out_i, out_m = [], []
    for image, mask in zip(images, masks, strict=True):
        k = int(torch.randint(0, 4, (1,), generator=g))
        flip = bool(torch.randint(0, 2, (1,), generator=g))
        image, mask = image.rot90(k, (1, 2)), mask.rot90(k, (1, 2))
        if flip:
            image, mask = image.flip(2), mask.flip(2)
        out_i.append(image)
        out_m.append(mask)
    return torch.stack(out_i), torch.stack(out_m)


class SegmentationTask(CaseTask):
    """Shared by every binary segmentation data set; subclasses load the cases."""

    dataset_schema = SegmentationDataset
    loss_schema = SegmentationLoss
    losses = ("dice_bce",)
    objective = ("dice", "maximize")

    def __init__(self, run: RunSections) -> None:
        super().__init__(run)
        d = self.dataset_config
        require(d.size >= 4, "dataset.size", d.size, "an integer >= 4")
        for key in ("val_fraction", "test_fraction"):
            value = getattr(d, key)
            require(0 <= value < 1, f"dataset.{key}", value, "a fraction in [0, 1)")
        ids, self.images, self.masks = self.load_cases()
        default = (
            None if d.splits else random_split(ids, d.val_fraction, d.test_fraction, d.split_seed)
        )
        self.use_cases(ids, default or {}, d.splits)

    @abstractmethod
    def load_cases(self) -> tuple[list[str], Tensor, Tensor]:
        """Case ids, images ``(N, 3, S, S)`` in [0, 1] and masks ``(N, 1, S, S)`` in {0, 1}."""

    def make_layout(self, channels: int) -> ChannelLayout:
        return ChannelLayout(channels=channels, inputs=3, visible=1, alpha=None)

    def batch_of(self, rows: list[int]) -> Batch:
        images, masks = self.images[rows], self.masks[rows]
        state = torch.zeros(len(rows), self.layout.channels, *images.shape[-2:])
        state[:, :3] = images
        return {"state": state, "mask": masks}

    def fresh(self, n: int, generator: torch.Generator) -> Batch:
        batch = super().fresh(n, generator)
        if self.dataset_config.augment:
            image, mask = augment(batch["state"][:, :3], batch["mask"], generator)
            batch["state"][:, :3], batch["mask"] = image, mask
        return batch

    def logits(self, state: Tensor) -> Tensor:
        return state[:, self.layout.visible_slice].float()

    def loss(self, state: Tensor, batch: Batch) -> Tensor:
        logits, target = self.logits(state), batch["mask"].to(state.device)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((1, 2, 3))
        dice = 1 - dice_score(torch.sigmoid(logits), target)
        c = self.loss_config
        return c.dice_weight * dice + c.bce_weight * bce

    def predict(self, state: Tensor, batch: Batch) -> dict[str, Tensor]:
        pred = (self.logits(state) > 0).float()
        target = batch["mask"].to(state.device)
        return {
            "dice": dice_score(pred, target),
            "iou": iou_score(pred, target),
            "loss": self.loss(state, batch),
        }

    def render(self, state: Tensor) -> np.ndarray:
        """The input image with the predicted mask tinted red."""
        image = state[:, :3].detach().float().cpu().clamp(0, 1)
        mask = (self.logits(state.detach().cpu()) > 0).float()
        red = torch.tensor([1.0, 0.2, 0.2]).view(1, 3, 1, 1)
        shown = image * (1 - 0.5 * mask) + red * 0.5 * mask
        return to_uint8(shown.permute(0, 2, 3, 1).numpy())
