"""Library images as CLIP input (small PIL RGB) and as style references (square float arrays).

CLIP looks at 224 px, so a library image is decoded at reduced size (JPEG draft mode, then a
thumbnail) instead of at full resolution: a 10k library of photos embeds without holding any
full-size bitmap. The size limits are the pack's own (``rendering.images``), so a file refused
here is refused everywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..imaging import decode_image, to_float_image, to_uint8

EMBED_SIDE = 448
"""Longest side kept for embedding: twice CLIP's 224 so its own resize/crop still has detail."""


def open_rgb(path: Path, max_side: int, *, data: bytes | None = None) -> Image.Image:
    """Decode ``path`` (or its bytes ``data``, read by the caller) to RGB no larger than ``max_side``, transparency
    composited on white.

    Raises:
        InvalidImageError: missing, empty, corrupt, unsupported or too large.
    """

    def reduced(opened: Image.Image) -> Image.Image:
        opened.draft("RGB", (max_side, max_side))
        img = ImageOps.exif_transpose(opened)
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        return flatten_alpha(img)

    return decode_image(path, reduced, "style image", data=data)


def flatten_alpha(img: Image.Image) -> Image.Image:
    """RGB with any transparency composited on white (CLIP has no alpha channel)."""
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def array_to_pil(image: np.ndarray) -> Image.Image:
    """A float ``(H, W, C)`` array in [0, 1] (an IMAGE from a workflow) as a PIL RGB image."""
    image = to_float_image(image, "query image")
    pixels = to_uint8(image)
    if pixels.shape[2] == 1:
        return Image.fromarray(pixels[:, :, 0]).convert("RGB")
    return flatten_alpha(Image.fromarray(pixels))  # (H, W, 3) decodes as RGB, (H, W, 4) as RGBA


def square_reference(path: Path, side: int) -> np.ndarray:
    """The style image scaled to cover ``side``×``side`` and centre-cropped, as float32 in [0, 1].

    All references of one IMAGE batch must share a size; a centre crop is also what IP-Adapter
    image encoders see, so nothing visible to them is lost.
    """
    img = open_rgb(path, max(side * 2, EMBED_SIDE))
    fitted = ImageOps.fit(img, (side, side), Image.Resampling.LANCZOS)
    return np.asarray(fitted, dtype=np.float32) / 255.0
