"""Kvasir-SEG polyp segmentation (Jha et al. 2020), from its published image/mask folders."""

from __future__ import annotations

import torch
from torch import Tensor

from nca_cli.datasets.images import kvasir_folder, load_pair, paired_files
from nca_cli.tasks._segmentation import SegmentationTask


class KvasirTask(SegmentationTask):
    """Images resized to ``dataset.size``; NCALab's 80/20 split by default."""

    def load_cases(self) -> tuple[list[str], Tensor, Tensor]:
        d = self.dataset_config
        cases = paired_files(kvasir_folder(None, d.download))
        pairs = [load_pair(image, mask, d.size) for _, image, mask in cases]
        ids = [name for name, _, _ in cases]
        return ids, torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


TASK = KvasirTask
