"""MedMNIST 2D classification (Yang et al. 2023) with an NCA.

The image sits in fixed input channels; the class logits are the spatial mean of the
visible class channels, so every cell votes. Official train/val/test splits; metrics
accuracy, AUROC and macro-F1 (scikit-learn).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nca_cli.config import choice, require
from nca_cli.datasets.arrays import MEDMNIST, Arrays, MedMNISTInfo, load_medmnist
from nca_cli.datasets.splits import Split
from nca_cli.engine.layout import ChannelLayout
from nca_cli.engine.pool import Batch
from nca_cli.images import to_uint8
from nca_cli.tasks._cases import CaseTask
from nca_cli.tasks.base import RunSections


@dataclass
class MedMNISTDataset:
    """``name``: a MedMNIST 2D set; ``resolution``: the official file (28 or 64 pixels);
    ``size``: the grid the images are resized to (default: the resolution); ``splits``: a
    split file of case ids ``<split>/<index>`` replacing the official train/val split (the
    official test split stays the test split)."""

    name: str = "pneumoniamnist"
    resolution: int = 28
    size: int | None = None
    splits: str | None = None
    download: bool = True


def classification_metrics(probs: Tensor, labels: Tensor) -> dict[str, float]:
    """Accuracy, AUROC (one-vs-rest for several classes) and macro-F1."""
    from sklearn.metrics import f1_score, roc_auc_score

    p, y = probs.double().numpy(), labels.numpy()
    pred = p.argmax(1)
    out = {
        "accuracy": float((pred == y).mean()),
        "f1": float(f1_score(y, pred, average="macro", labels=list(range(p.shape[1])))),
    }
    present = np.unique(y)
    if len(present) < 2:
        out["auroc"] = float("nan")
    elif p.shape[1] == 2:
        out["auroc"] = float(roc_auc_score(y, p[:, 1]))
    else:
        p = p / p.sum(1, keepdims=True)
        out["auroc"] = float(roc_auc_score(y, p, multi_class="ovr", labels=list(range(p.shape[1]))))
    return out


class MedMNISTTask(CaseTask):
    dataset_schema = MedMNISTDataset
    losses = ("cross_entropy",)
    objective = ("accuracy", "maximize")

    def __init__(self, run: RunSections) -> None:
        super().__init__(run)
        d = self.dataset_config
        choice(str(d.resolution), ["28", "64"], "dataset.resolution")
        self.size = d.size or d.resolution
        require(self.size >= 4, "dataset.size", self.size, "an integer >= 4 or null")
        arrays = load_medmnist(d.name, d.resolution, None, d.download)
        self.images, self.labels, ids = self._stack(arrays)
        official: Split = {s: [c for c in ids if c.startswith(f"{s}/")] for s in arrays}
        self.use_cases(ids, official, d.splits)

    def _stack(self, arrays: Arrays) -> tuple[Tensor, Tensor, list[str]]:
        images, labels, ids = [], [], []
        for split, (x, y) in arrays.items():
            t = torch.from_numpy(x).float() / 255.0
            t = t[:, None] if t.ndim == 3 else t.permute(0, 3, 1, 2)
            if t.shape[-1] != self.size:
                t = F.interpolate(t, size=(self.size, self.size), mode="bilinear")
            images.append(t)
            labels.append(torch.from_numpy(y))
            ids += [f"{split}/{i}" for i in range(len(y))]
        return torch.cat(images), torch.cat(labels), ids

    @property
    def info(self) -> MedMNISTInfo:
        name = self.dataset_config.name
        choice(name, sorted(MEDMNIST), "dataset.name")
        return MEDMNIST[name]

    def make_layout(self, channels: int) -> ChannelLayout:
        return ChannelLayout(
            channels=channels, inputs=self.info.channels, visible=self.info.classes, alpha=None
        )

    def batch_of(self, rows: list[int]) -> Batch:
        state = torch.zeros(len(rows), self.layout.channels, self.size, self.size)
        state[:, : self.info.channels] = self.images[rows]
        return {"state": state, "label": self.labels[rows]}

    def logits(self, state: Tensor) -> Tensor:
        return state[:, self.layout.visible_slice].float().mean((2, 3))

    def loss(self, state: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(
            self.logits(state), batch["label"].to(state.device), reduction="none"
        )

    def predict(self, state: Tensor, batch: Batch) -> dict[str, Tensor]:
        return {
            "probs": torch.softmax(self.logits(state), 1),
            "label": batch["label"],
            "loss": self.loss(state, batch),
        }

    def score(self, outputs: dict[str, Tensor]) -> dict[str, float]:
        return {
            **classification_metrics(outputs["probs"], outputs["label"]),
            "loss": float(outputs["loss"].mean()),
        }

    def render(self, state: Tensor) -> np.ndarray:
        image = state[:, : self.info.channels].detach().float().cpu().clamp(0, 1)
        if image.shape[1] == 1:
            image = image.repeat(1, 3, 1, 1)
        return to_uint8(image.permute(0, 2, 3, 1).numpy())


TASK = MedMNISTTask
