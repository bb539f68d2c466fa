"""Image-folder data sets: Kvasir-SEG in its published layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from nca_cli.datasets.storage import DataError, data_root, download, safe_extract
from nca_cli.images import image_tensor, read_image

KVASIR_URL = "https://datasets.simula.no/downloads/kvasir-seg.zip"
KVASIR_SHA256 = "03b30e21d584e04facf49397a2576738fd626815771afbbf788f74a7153478f7"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def kvasir_folder(root: Path | None, fetch: bool) -> Path:
    """The ``Kvasir-SEG`` folder (``images/`` and ``masks/``), downloaded if allowed."""
    base = root or data_root()
    folder = base / "Kvasir-SEG"
    if (folder / "images").is_dir():
        return folder
    if not fetch:
        raise DataError(
            f"Kvasir-SEG not found: expected {folder}/images and {folder}/masks. Download "
            f"{KVASIR_URL} and unzip it into {base}, or set NCA_DATA_DIR (dataset.download=true "
            "downloads it)"
        )
    archive = download(KVASIR_URL, base / "kvasir-seg.zip", KVASIR_SHA256, "sha256")
    work = base / ".kvasir-extract"
    try:
        safe_extract(archive, work)
        extracted = work / "Kvasir-SEG"
        if not (extracted / "images").is_dir():
            raise DataError(f"{archive} does not hold Kvasir-SEG/images")
        extracted.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # nothing half-extracted stays behind
    return folder


def paired_files(folder: Path) -> list[tuple[str, Path, Path]]:
    """``(case id, image, mask)`` triples, paired by file stem; unpaired files are errors."""
    images_dir, masks_dir = folder / "images", folder / "masks"
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise DataError(f"{d} is missing: a segmentation data set needs images/ and masks/")

    def stems(d: Path) -> dict[str, Path]:
        return {p.stem: p for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}

    images, masks = stems(images_dir), stems(masks_dir)
    if not images:
        raise DataError(f"{images_dir} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    for name in sorted(set(images) - set(masks)):
        raise DataError(f"image {images[name]} has no mask in {masks_dir}")
    for name in sorted(set(masks) - set(images)):
        raise DataError(f"mask {masks[name]} has no image in {images_dir}")
    return [(name, images[name], masks[name]) for name in sorted(images)]


def load_pair(image_path: Path, mask_path: Path, size: int) -> tuple[Tensor, Tensor]:
    """An RGB image ``(3, size, size)`` in [0, 1] and its binarised mask ``(1, size, size)``."""
    image, mask = read_image(image_path, "RGB", DataError), read_image(mask_path, "L", DataError)
    if image.size != mask.size:
        raise DataError(
            f"image {image_path} is {image.size[0]}x{image.size[1]} but its mask {mask_path} is "
            f"{mask.size[0]}x{mask.size[1]}"
        )
    image = image.resize((size, size), Image.Resampling.BILINEAR)
    mask = mask.resize((size, size), Image.Resampling.BILINEAR)
    rgb = image_tensor(image)
    binary = torch.from_numpy((np.asarray(mask, dtype=np.float32) / 255.0 > 0.5).astype(np.float32))
    return rgb, binary[None]
