"""Conversions between ComfyUI's tensors and the engine's numpy arrays.

ComfyUI's IMAGE is a float32 torch tensor ``(B, H, W, C)`` in ``[0, 1]``; the engine works on
one ``(H, W, C)`` numpy array at a time.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidImageError


def image_batch_to_arrays(images: torch.Tensor, what: str = "image") -> list[np.ndarray]:
    """IMAGE ``(B, H, W, C)`` → B float32 arrays ``(H, W, C)``, on the CPU."""
    if not isinstance(images, torch.Tensor):
        raise InvalidImageError(f"The {what} input must be an IMAGE tensor, got {type(images).__name__}.")
    if images.ndim == 3:  # a single image without its batch axis
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[0] == 0:
        raise InvalidImageError(
            f"The {what} input has shape {tuple(images.shape)}; expected an IMAGE batch (B, H, W, C)."
        )
    batch = images.detach().to("cpu", torch.float32).numpy()
    return list(batch)


def arrays_to_image_batch(arrays: list[np.ndarray]) -> torch.Tensor:
    """uint8 or float arrays ``(H, W, 3)`` of one size → IMAGE ``(B, H, W, 3)`` float32 in [0, 1]."""
    stacked = np.stack(arrays)
    if stacked.dtype == np.uint8:
        stacked = stacked.astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(stacked, dtype=np.float32))


def single_image(images: torch.Tensor | None, what: str) -> np.ndarray | None:
    """An optional IMAGE input that must hold one image (None when unconnected)."""
    if images is None:
        return None
    arrays = image_batch_to_arrays(images, what)
    if len(arrays) != 1:
        raise InvalidImageError(
            f"The {what} input is a batch of {len(arrays)} images; it takes one. Pick one with ImageFromBatch."
        )
    return arrays[0]


def single_mask(mask: torch.Tensor | None, what: str = "mask") -> np.ndarray | None:
    """An optional MASK input ``(B, H, W)`` or ``(H, W)`` holding one mask → float32 ``(H, W)``."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise InvalidImageError(f"The {what} input must be a MASK tensor, got {type(mask).__name__}.")
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3 or mask.shape[0] != 1:
        raise InvalidImageError(
            f"The {what} input has shape {tuple(mask.shape)}; it takes one mask (1, H, W)."
        )
    return mask[0].detach().to("cpu", torch.float32).numpy()
