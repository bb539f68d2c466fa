"""Regenerate the edge-to-emoji data in ``tasks/assets/faces/`` (``task=edges2emoji``).

Writes, for the 50 emoji faces U+1F600 to U+1F631 of Noto Color Emoji:

- ``faces/<name>.png``: the face as a 32x32 RGBA PNG (straight alpha), rendered as
  ``render_emoji.py`` renders the growing targets, then shrunk with Lanczos filtering;
- ``faces/edges/<name>.png``: its Canny edges (OpenCV, thresholds 50 and 150) as a 32x32
  greyscale PNG, 255 on an edge: the union of the edges of the face over white and of its
  alpha channel, so that pale outlines are found too;
- ``faces/drawings/<name>.png``: line drawings of faces made for the out-of-distribution
  set with Pillow's ``ImageDraw`` (1-pixel strokes, like the Canny images).

``<name>`` is the Unicode name of the emoji in lower case (``grinning_face``). The edges
are computed here and bundled because Canny (non-maximum suppression and hysteresis)
is in no dependency of nca; OpenCV is needed only to run this script::

    pip install opencv-python-headless
    python tasks/assets/render_faces.py [--font PATH] [--out DIR]

The hand-drawn-like variants of the validation edges are not stored: the task makes them
at load time from ``dataset.ood_seed``.
"""

from __future__ import annotations

import argparse
import unicodedata
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from render_emoji import DEFAULT_FONT, FONT_SIZE, render_emoji

DEFAULT_OUT = Path(__file__).resolve().parent / "faces"
SIDE = 32
# Canny hysteresis thresholds on 8-bit images.
LOW, HIGH = 50, 150
FACES = range(0x1F600, 0x1F632)


def face_name(codepoint: int) -> str:
    return unicodedata.name(chr(codepoint)).lower().replace(" ", "_").replace("-", "_")


def render_face(font: ImageFont.FreeTypeFont, codepoint: int) -> Image.Image:
    """The emoji rendered large and shrunk to ``SIDE`` pixels (straight-alpha RGBA)."""
    return render_emoji(font, chr(codepoint)).resize((SIDE, SIDE), Image.Resampling.LANCZOS)


def canny(face: Image.Image) -> Image.Image:
    """Canny edges of the face over white, united with those of its alpha channel."""
    import cv2

    rgba = np.asarray(face, dtype=np.float32) / 255.0
    over_white = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
    grey = cv2.cvtColor((over_white * 255.0 + 0.5).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    alpha = (rgba[..., 3] * 255.0 + 0.5).astype(np.uint8)
    edges = np.maximum(cv2.Canny(grey, LOW, HIGH), cv2.Canny(alpha, LOW, HIGH))
    return Image.fromarray(edges, mode="L")


def _face(draw: ImageDraw.ImageDraw) -> None:
    draw.ellipse((0, 0, SIDE - 1, SIDE - 1), outline=255)


def _smiling(d: ImageDraw.ImageDraw) -> None:
    _face(d)
    d.ellipse((9, 9, 12, 13), outline=255)
    d.ellipse((19, 9, 22, 13), outline=255)
    d.arc((7, 11, 24, 25), 20, 160, fill=255)


def _frowning(d: ImageDraw.ImageDraw) -> None:
    _face(d)
    d.point([(10, 11), (11, 11), (20, 11), (21, 11)], fill=255)
    d.arc((8, 19, 23, 30), 200, 340, fill=255)


def _surprised(d: ImageDraw.ImageDraw) -> None:
    _face(d)
    d.ellipse((8, 8, 13, 14), outline=255)
    d.ellipse((18, 8, 23, 14), outline=255)
    d.ellipse((13, 19, 18, 25), outline=255)


def _winking(d: ImageDraw.ImageDraw) -> None:
    _face(d)
    d.ellipse((9, 9, 12, 13), outline=255)
    d.line((18, 11, 23, 11), fill=255)
    d.arc((7, 11, 24, 25), 20, 160, fill=255)


def _neutral(d: ImageDraw.ImageDraw) -> None:
    _face(d)
    d.line((10, 9, 10, 14), fill=255)
    d.line((21, 9, 21, 14), fill=255)
    d.line((10, 21, 21, 21), fill=255)


def _grinning(d: ImageDraw.ImageDraw) -> None:
    _face(d)
    d.arc((8, 9, 13, 15), 200, 340, fill=255)
    d.arc((18, 9, 23, 15), 200, 340, fill=255)
    d.chord((7, 12, 24, 27), 0, 180, outline=255)


def _oval(d: ImageDraw.ImageDraw) -> None:
    d.ellipse((4, 0, SIDE - 5, SIDE - 1), outline=255)
    d.line((9, 8, 13, 7), fill=255)
    d.line((18, 7, 22, 8), fill=255)
    d.point([(11, 11), (20, 11)], fill=255)
    d.arc((10, 16, 21, 25), 30, 150, fill=255)


def _square(d: ImageDraw.ImageDraw) -> None:
    d.rounded_rectangle((1, 1, SIDE - 2, SIDE - 2), radius=6, outline=255)
    d.rectangle((8, 9, 12, 13), outline=255)
    d.rectangle((19, 9, 23, 13), outline=255)
    d.line((9, 22, 22, 22), fill=255)


DRAWINGS: dict[str, Callable[[ImageDraw.ImageDraw], None]] = {
    "smiling": _smiling,
    "frowning": _frowning,
    "surprised": _surprised,
    "winking": _winking,
    "neutral": _neutral,
    "grinning": _grinning,
    "oval": _oval,
    "square": _square,
}


def drawing(draw: Callable[[ImageDraw.ImageDraw], None]) -> Image.Image:
    image = Image.new("L", (SIDE, SIDE), 0)
    draw(ImageDraw.Draw(image))
    return image


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate the edges2emoji PNGs.")
    parser.add_argument("--font", type=Path, default=DEFAULT_FONT, help="NotoColorEmoji.ttf")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)

    font = ImageFont.truetype(str(args.font), size=FONT_SIZE)
    out: Path = args.out
    for folder in (out, out / "edges", out / "drawings"):
        folder.mkdir(parents=True, exist_ok=True)
    for codepoint in FACES:
        name = face_name(codepoint)
        face = render_face(font, codepoint)
        face.save(out / f"{name}.png", optimize=True)
        canny(face).save(out / "edges" / f"{name}.png", optimize=True)
    for name, draw in DRAWINGS.items():
        drawing(draw).save(out / "drawings" / f"{name}.png", optimize=True)
    total = sum(p.stat().st_size for p in out.rglob("*.png"))
    print(f"{len(FACES)} faces, {len(DRAWINGS)} drawings in {out} ({total} bytes)")


if __name__ == "__main__":
    main()
