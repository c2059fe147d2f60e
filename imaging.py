"""Turning whatever image a user hands us into one well-defined array, or a clear error.

Sketches arrive as 8- or 16-bit PNGs, JPEGs, grayscale scans, transparent drawings and
float tensors from ComfyUI. Everything downstream works on ``float32`` arrays in ``[0, 1]``
of shape ``(H, W, C)``; this module is the one place that gets them there and refuses
what cannot be used.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidImageError

MAX_SIDE = 16384
"""Largest accepted side in pixels: far beyond SD1.5's needs, still small enough to process."""

MAX_PIXELS = 100_000_000
"""Largest accepted image area (100 MP, e.g. 10000×10000); a 20000×20000 scan is refused."""

T = TypeVar("T")

RANGE_TOLERANCE = 1.0 / 255.0
"""Float pixels this far outside [0, 1] are rounding noise and are clipped; further out is an error."""


def check_image_size(height: int, width: int, what: str = "image") -> None:
    """Refuse empty or oversized images before any memory is spent on them.

    Raises:
        InvalidImageError: the image has no pixels or exceeds MAX_SIDE / MAX_PIXELS.
    """
    if height < 1 or width < 1:
        raise InvalidImageError(f"The {what} is empty ({width}×{height} pixels); give an image with pixels.")
    if max(height, width) > MAX_SIDE or height * width > MAX_PIXELS:
        raise InvalidImageError(
            f"The {what} is {width}×{height} pixels ({height * width / 1e6:.0f} MP); the limit is "
            f"{MAX_SIDE} pixels a side and {MAX_PIXELS // 1_000_000} MP in all. Downscale it first."
        )


def check_image_array(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Validate an image array without converting it; return it as a ``(H, W, C)`` view.

    Accepts ``(H, W)`` or ``(H, W, 1..4)`` arrays of uint8, uint16, bool or float (float in
    ``[0, 1]`` give or take ``RANGE_TOLERANCE``).

    Raises:
        InvalidImageError: wrong type, shape, dtype or size; non-finite or out-of-range values.
    """
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(f"The {what} must be a numpy array, got {type(image).__name__}.")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise InvalidImageError(
            f"The {what} has shape {tuple(image.shape)}; expected (height, width) or "
            "(height, width, channels) with 1 to 4 channels."
        )
    check_image_size(image.shape[0], image.shape[1], what)
    if np.issubdtype(image.dtype, np.floating):
        # min/max propagate NaN and inf, so two reductions check finiteness and range at once.
        lo, hi = float(image.min()), float(image.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise InvalidImageError(f"The {what} contains NaN or infinite pixel values; fix the node that produced it.")
        if lo < -RANGE_TOLERANCE or hi > 1.0 + RANGE_TOLERANCE:
            raise InvalidImageError(
                f"The {what} has pixel values from {lo:.4g} to {hi:.4g}; images must lie in 0..1. "
                "Rescale or clamp it before this node."
            )
    elif image.dtype not in (np.uint8, np.uint16, np.bool_):
        raise InvalidImageError(
            f"The {what} has pixel type {image.dtype}; use uint8, uint16 or float values in 0..1."
        )
    return image


def to_float_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Return ``image`` as float32 ``(H, W, C)`` in ``[0, 1]`` with C in {1, 3, 4}.

    A 2-channel image is gray + alpha and becomes 4 channels (gray replicated), so callers see
    one layout.

    Raises:
        InvalidImageError: see ``check_image_array``.
    """
    image = check_image_array(image, what)
    if image.dtype == np.uint8:
        out = image.astype(np.float32) / 255.0
    elif image.dtype == np.uint16:
        out = image.astype(np.float32) / 65535.0
    elif image.dtype == np.bool_:
        out = image.astype(np.float32)
    else:
        out = np.clip(image.astype(np.float32, copy=False), 0.0, 1.0)
    if out.shape[2] == 2:
        out = np.concatenate([out[:, :, :1].repeat(3, axis=2), out[:, :, 1:]], axis=2)
    return out


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1] as uint8, rounded to nearest (out-of-range values clipped), shape kept."""
    return np.clip(np.asarray(image, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def decode_image(
    path: str | os.PathLike[str], decode: Callable[[Image.Image], T], what: str = "image", *,
    data: bytes | None = None,
) -> T:
    """Open an image file, check its size before any pixel is decoded, and run ``decode`` on it.

    The one place that turns every way a file can be unusable into an ``InvalidImageError``
    naming the file and the fix; callers only say how they want the pixels. With ``data``, those
    bytes are decoded instead of reading ``path`` (a caller that opened the file itself, without
    following links, say); ``path`` then only names it in messages.

    Raises:
        InvalidImageError: the file is missing, empty, corrupt, of an unsupported format or too big.
    """
    path = Path(path)
    if data is None and not path.is_file():
        raise InvalidImageError(f"No {what} file at {path}; check the path.")
    if (len(data) if data is not None else path.stat().st_size) == 0:
        raise InvalidImageError(f"The {what} file {path} is empty (0 bytes); export the image again.")
    try:
        with warnings.catch_warnings():
            # Our own size limit (checked before decoding) is the one that applies.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if data is not None else path) as opened:
                check_image_size(opened.height, opened.width, f"{what} {path.name}")
                return decode(opened)
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(
            f"The {what} {path.name} is too large to open ({exc}); the limit is {MAX_SIDE} pixels a side "
            f"and {MAX_PIXELS // 1_000_000} MP in all. Downscale it first."
        ) from exc
    except UnidentifiedImageError as exc:
        raise InvalidImageError(
            f"{path.name} is not an image format Pillow can read; save it as PNG or JPEG."
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, InvalidImageError):
            raise
        raise InvalidImageError(f"The {what} {path.name} is damaged or truncated ({exc}); export it again.") from exc


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as float32 ``(H, W, C)`` in ``[0, 1]``, keeping 16-bit depth and alpha.

    EXIF orientation is applied, as every viewer does, so the array matches what the user sees.

    Raises:
        InvalidImageError: see ``decode_image``.
    """
    array = decode_image(path, lambda opened: _pil_to_array(ImageOps.exif_transpose(opened)))
    return to_float_image(array, f"image {Path(path).name}")


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """Decode a PIL image to uint8/uint16 without losing 16-bit depth or transparency."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img, dtype=np.uint16)
    if img.mode == "I":
        data = np.asarray(img)
        # 16-bit PNGs often decode as 32-bit "I"; anything above 16 bits is not a sketch format.
        return np.clip(data, 0, 65535).astype(np.uint16)
    if img.mode in ("RGBA", "LA", "RGB", "L"):
        return np.asarray(img)
    if img.mode == "1":
        return np.asarray(img.convert("L"))
    if "transparency" in img.info or img.mode in ("PA", "RGBa", "La"):
        return np.asarray(img.convert("RGBA"))
    return np.asarray(img.convert("RGB"))


def write_image(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Write a uint8 ``(H, W)`` / ``(H, W, 3)`` array, or a float one in [0, 1], to ``path``.

    The file is written beside its final name and renamed into place, so an interrupted run
    never leaves a half-written image where a good one was.
    """
    path = Path(path)
    if image.dtype != np.uint8:
        image = to_uint8(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[2] == 1 else image).save(
        partial, format=Image.registered_extensions().get(path.suffix.lower(), "PNG")
    )
    os.replace(partial, path)
    return path
