"""Synthetic segmentation of discs and blobs on textured noise: learnable on a CPU."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from nca_cli.config import require
from nca_cli.datasets.synthetic import make_shapes
from nca_cli.tasks._segmentation import SegmentationDataset, SegmentationTask


@dataclass
class ShapesDataset(SegmentationDataset):
    """``samples`` images generated from ``seed``."""

    size: int = 32
    samples: int = 400
    seed: int = 0
    max_shapes: int = 3


class ShapesTask(SegmentationTask):
    dataset_schema = ShapesDataset

    def load_cases(self) -> tuple[list[str], Tensor, Tensor]:
        d = self.dataset_config
        require(d.samples >= 3, "dataset.samples", d.samples, "an integer >= 3")
        images, masks = make_shapes(d.samples, d.size, d.seed, d.max_shapes)
        return [f"shape_{i:05d}" for i in range(d.samples)], images, masks


TASK = ShapesTask
