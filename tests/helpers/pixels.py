"""Pixels of what a server returned: an image's bytes as an array to compare."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def pixels(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes as an RGB uint8 array ``(H, W, 3)``."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def raw_pixels(data: bytes) -> np.ndarray:
    """PNG bytes as stored (no mode conversion): what a saved edge map holds."""
    return np.asarray(Image.open(io.BytesIO(data)))
