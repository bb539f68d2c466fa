"""Image helpers shared by tasks, training and evaluation: reading image files, uint8
conversion, grids, GIFs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL.Image import Image
    from torch import Tensor


def read_image(path: Path, mode: str, error: type[Exception]) -> Image:
    """The image file at ``path`` converted to ``mode`` ("RGB", "RGBA", "L"), read whole so
    the file is closed; a missing, truncated or non-image file raises ``error`` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert(mode)
    except (UnidentifiedImageError, OSError) as err:
        raise error(f"cannot read image {path}: {err}") from None


def image_tensor(image: Image) -> Tensor:
    """A Pillow image as a float ``(C, H, W)`` tensor in [0, 1]."""
    import torch

    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array.reshape(*array.shape[:2], -1)).permute(2, 0, 1)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] to uint8 in [0, 255] (W&B and PNG writers want uint8)."""
    return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def tile(images: np.ndarray, columns: int | None = None, gap: int = 2) -> np.ndarray:
    """Lay out ``(N, H, W, 3)`` uint8 images in a grid with white gaps."""
    n, h, w, c = images.shape
    cols = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, c), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, q = divmod(i, cols)
        out[r * (h + gap) : r * (h + gap) + h, q * (w + gap) : q * (w + gap) + w] = image
    return out


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement, so small grids stay crisp when viewed."""
    return image.repeat(factor, axis=-3).repeat(factor, axis=-2)


def save_png(path: Path, image: np.ndarray) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, image)


def save_gif(path: Path, frames: list[np.ndarray], fps: int = 20) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, np.stack(frames), duration=1000 / fps, loop=0)
