"""Regenerate the bundled emoji target images in ``tasks/assets/emoji/``.

The NCA tasks train towards small RGBA emoji images.  Those images are
bundled with the project as PNG files so that a fresh install needs no
emoji font at all; this script is only the record of how they were made,
and the way to make them again.

It renders each emoji with Pillow from the Noto Color Emoji font, which on
Debian comes from the package ``fonts-noto-color-emoji``
(``apt-get install fonts-noto-color-emoji``).  Each image is cropped to the
emoji's alpha bounding box, padded to a centred square, resized to
128x128 with Lanczos filtering and saved as an RGBA PNG with straight
(not premultiplied) alpha.

This script is standalone: it is not imported by the ``nca`` package.

Usage::

    python tasks/assets/render_emoji.py [--font PATH] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

DEFAULT_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
DEFAULT_OUT = Path(__file__).resolve().parent / "emoji"

# Noto Color Emoji is a bitmap (CBDT) font whose strikes load only at size 109.
FONT_SIZE = 109
CANVAS_SIZE = 160
TARGET_SIZE = 128

EMOJI: dict[str, str] = {
    "lizard": "\U0001f98e",
    "butterfly": "\U0001f98b",
    "mushroom": "\U0001f344",
    "smiley": "\U0001f600",
    "fish": "\U0001f420",
    "heart": "\u2764\ufe0f",
    "cat_face": "\U0001f431",
    "rocket": "\U0001f680",
    "tree": "\U0001f332",
}


def render_emoji(font: ImageFont.FreeTypeFont, text: str, size: int = TARGET_SIZE) -> Image.Image:
    """Render ``text`` as a centred square straight-alpha RGBA image, ``size`` px."""
    canvas = Image.new("RGBA", (CANVAS_SIZE, CANVAS_SIZE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text(
        (CANVAS_SIZE / 2, CANVAS_SIZE / 2),
        text,
        font=font,
        anchor="mm",
        embedded_color=True,
    )
    bbox = canvas.getchannel("A").getbbox()
    if bbox is None:
        msg = f"the font drew nothing for {text!r}"
        raise ValueError(msg)
    glyph = canvas.crop(bbox)
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    # Pillow resamples RGBA in premultiplied space internally, so transparent
    # pixels do not bleed into the edges; the result has straight alpha.
    return square.resize((size, size), Image.Resampling.LANCZOS)


def main(argv: list[str] | None = None) -> None:
    """Render every emoji in ``EMOJI`` into the output folder."""
    parser = argparse.ArgumentParser(description="Regenerate the bundled emoji target PNGs.")
    parser.add_argument(
        "--font",
        type=Path,
        default=DEFAULT_FONT,
        help=f"path to NotoColorEmoji.ttf (default: {DEFAULT_FONT})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"output folder (default: {DEFAULT_OUT})",
    )
    args = parser.parse_args(argv)

    font = ImageFont.truetype(str(args.font), size=FONT_SIZE)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name, text in EMOJI.items():
        path = out / f"{name}.png"
        render_emoji(font, text).save(path, optimize=True)
        print(f"{path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
