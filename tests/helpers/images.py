"""Images as the tests hand them over: PNG bytes, ComfyUI IMAGE batches, and sketches as each reader loads them."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image


def png(colour: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> bytes:
    """A solid-colour RGB PNG, ``size`` as (width, height)."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), colour, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_of(pixels: np.ndarray, mode: str | None = None) -> bytes:
    """``pixels`` (uint8) as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def image_batch(*images: np.ndarray) -> torch.Tensor:
    """What ComfyUI hands a node for an IMAGE: float32 ``(B, H, W, C)`` in [0, 1] (uint8 arrays are scaled)."""
    arrays = [a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32) for a in images]
    return torch.from_numpy(np.stack(arrays))


def as_loaded_by_comfyui(path: Path) -> np.ndarray:
    """What ComfyUI's LoadImage hands a node: RGB float32 in [0, 1], ``(H, W, 3)``."""
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


def gray_u8(path: Path) -> np.ndarray:
    """The sketch as OpenCV reads it in grayscale: the independent reader the Canny tests compare with."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert image is not None, path
    return np.asarray(image, dtype=np.uint8)
