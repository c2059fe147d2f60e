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
