"""The CLIP Style Retriever's preview: a gallery of captioned thumbnails, and one text line per result."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ..retrieval import StyleMatch

PREVIEW_SIDE = 192
"""Side of each thumbnail of the retriever's preview gallery (the style images themselves keep ``resolution``)."""
CAPTION_LINE = 13
"""Height of one caption line in the preview, in pixels (PIL's default bitmap font is 11 px high)."""


def thumbnail(image: np.ndarray, lines: list[str]) -> np.ndarray:
    """A small copy of a style image with a caption band below (one line each), for the preview gallery only."""
    pil = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))
    side = PREVIEW_SIDE  # one size whatever the resolution, so captions stay legible and k large stays light
    pil = pil.resize((side, side), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (side, side + CAPTION_LINE * len(lines) + 4), (20, 20, 20))
    canvas.paste(pil, (0, 0))
    draw = ImageDraw.Draw(canvas)
    width = max(8, side // 6)  # characters of the default font that fit the thumbnail's width
    for n, line in enumerate(lines):
        draw.text((3, side + 2 + n * CAPTION_LINE), line[:width], fill=(240, 240, 240))
    return np.asarray(canvas, dtype=np.float32) / 255.0


def caption_lines(rank: int, match: StyleMatch) -> list[str]:
    """The caption under a result's thumbnail: rank and name, raw score and z-score, percentile and blend weight."""
    return [f"{rank + 1}. {match.name}", f"cos {match.score:.3f}  z {match.z_score:+.2f}",
            f"pct {match.percentile:.1f}  w {match.weight:.2f}"]


def label(match: StyleMatch) -> str:
    """One line per result: name, raw score, standing in the library (z, percentile), then the blend weight."""
    return (f"{match.name[:48]}  score {match.score:.3f}  z {match.z_score:+.2f}  "
            f"p {match.percentile:.1f}  w {match.weight:.2f}")
