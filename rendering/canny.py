"""Sketch → control image (Canny edges or centre lines), the image that locks the geometry through ControlNet.

Sketches are not photographs: they come dark-on-light or light-on-dark, faint or bold, with
transparent paper, at any size. ``sketch_to_edges`` normalises all of that to "dark ink on white
paper" at the output size, then runs one of two detectors on it:

- ``canny``: OpenCV's Canny, so one set of thresholds behaves the same on every drawing. It finds
  both sides of every stroke (two parallel contours per drawn line).
- ``lines``: the strokes themselves, thinned to 1-pixel centre lines (``lines.centre_lines``): one
  line per drawn line, for line-art, scribble and canny ControlNets alike.

Both return the ControlNet convention: white 1-pixel lines on black, 3 channels, uint8.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import InvalidParameterError
from ..imaging import check_image_array, check_image_size, to_uint8
from .lines import centre_lines

DEFAULT_LOW_THRESHOLD = 50
DEFAULT_HIGH_THRESHOLD = 150
"""The seed design's thresholds on a 0–255 gradient scale (peers default to 100/200)."""

SIZE_MULTIPLE = 8
"""SD1.5's VAE downsamples by 8: both sides of an image it renders must be multiples of 8."""

SOBEL_L1_MAX_GAIN = 8
"""|dx| + |dy| of OpenCV's 3×3 Sobel on 8-bit input reaches 8 × 255."""

MAX_RESOLUTION = 4096
MAX_BLUR = 10.0
MAX_THICKEN = 8

MODES = ("canny", "lines")
"""canny: both sides of every stroke (today's edge map); lines: each stroke's 1-pixel centre line."""


@dataclass(frozen=True)
class CannySettings:
    """Everything that shapes the edge map, with the node's defaults."""

    low_threshold: int = DEFAULT_LOW_THRESHOLD
    high_threshold: int = DEFAULT_HIGH_THRESHOLD
    auto_threshold: bool = False
    resolution: int = 0
    """Target short side in pixels (aspect kept, both sides multiples of 8); 0 keeps the input size."""
    blur: float = 0.0
    """Gaussian smoothing sigma in pixels before edge detection; calms paper grain and pencil hatching."""
    thicken: int = 0
    """Grow strokes by this many pixels before edge detection; joins broken, faint pencil lines."""
    mode: str = "canny"
    """One of ``MODES``. Thresholds apply to canny only; resolution, blur and thicken to both."""

    def validate(self) -> None:
        """Raise InvalidParameterError naming the first setting out of range."""
        for name in ("low_threshold", "high_threshold"):
            value = getattr(self, name)
            if not 0 <= value <= 255:
                raise InvalidParameterError(f"{name} is {value}; it must be between 0 and 255.")
        if self.low_threshold > self.high_threshold:
            raise InvalidParameterError(
                f"low_threshold ({self.low_threshold}) is above high_threshold ({self.high_threshold}); "
                "set low_threshold to at most high_threshold."
            )
        if self.resolution != 0 and not SIZE_MULTIPLE <= self.resolution <= MAX_RESOLUTION:
            raise InvalidParameterError(
                f"resolution is {self.resolution}; use 0 to keep the input size or a short side "
                f"from {SIZE_MULTIPLE} to {MAX_RESOLUTION} pixels."
            )
        if not 0.0 <= self.blur <= MAX_BLUR:
            raise InvalidParameterError(f"blur is {self.blur}; it must be between 0 and {MAX_BLUR}.")
        if not 0 <= self.thicken <= MAX_THICKEN:
            raise InvalidParameterError(f"thicken is {self.thicken}; it must be between 0 and {MAX_THICKEN}.")
        if self.mode not in MODES:
            raise InvalidParameterError(f"mode is {self.mode!r}; use one of {', '.join(MODES)}.")


def target_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(height, width) whose short side is ``resolution``, aspect kept, both rounded to multiples of 8.

    ``resolution == 0`` returns the input size unchanged.
    """
    if resolution == 0:
        return height, width
    scale = resolution / min(height, width)

    def snap(side: float) -> int:
        return max(SIZE_MULTIPLE, int(round(side / SIZE_MULTIPLE)) * SIZE_MULTIPLE)

    return snap(height * scale), snap(width * scale)


def sketch_to_edges(image: np.ndarray, settings: CannySettings | None = None) -> np.ndarray:
    """The control image of one sketch: its Canny edges (mode ``canny``) or centre lines (mode ``lines``).

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` with C in 1..4; uint8, uint16, bool or float in 0..1.
            Transparent pixels count as paper.
        settings: mode, thresholds and options; defaults to ``CannySettings()`` (canny).

    Returns:
        uint8 ``(H', W', 3)`` array, 255 on edges (lines) and 0 elsewhere; ``(H', W')`` is the input
        size, or the size asked for by ``settings.resolution``. The three channels are one plane seen
        three times (a read-only broadcast view): every consumer copies it into its own format anyway,
        and a real 3-channel copy would cost more than the rest of the work besides Canny. Copy it
        (``np.array(edges)``) to modify it.

    Raises:
        InvalidImageError: the image cannot be used (see ``images.check_image_array``).
        InvalidParameterError: a setting is out of range.
    """
    settings = settings or CannySettings()
    settings.validate()
    gray = prepared_gray(image, settings)
    if settings.mode == "lines":
        plane = centre_lines(gray)
    else:
        if settings.auto_threshold:
            low, high = auto_thresholds(gray)
        else:
            low, high = settings.low_threshold, settings.high_threshold
        plane = cv2.Canny(gray, low, high)
    return np.broadcast_to(plane[:, :, None], (*plane.shape, 3))


def prepared_gray(image: np.ndarray, settings: CannySettings) -> np.ndarray:
    """A sketch as uint8 dark ink on light paper at the output size, thickened and blurred: what both modes detect on.

    Resizing comes first, so canny edges and centre lines are 1 pixel wide at the output size. ``thicken``
    grows the dark strokes (joining broken pencil lines, merging a doubled stroke into one); ``blur``
    smooths paper grain, hatching and ragged stroke outlines.
    """
    gray = ink_on_paper(check_image_array(image, "sketch"))
    height, width = target_size(gray.shape[0], gray.shape[1], settings.resolution)
    check_image_size(height, width, "resized sketch")
    if (height, width) != gray.shape:
        shrinking = height * width < gray.size
        gray = cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    if settings.thicken:
        size = 2 * settings.thicken + 1
        gray = cv2.erode(gray, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    if settings.blur > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), sigmaX=settings.blur)
    return gray


def ink_on_paper(image: np.ndarray) -> np.ndarray:
    """Checked ``(H, W, C)`` image → uint8 ``(H, W)`` luminance with dark ink on light paper.

    Transparent pixels become paper. A drawing whose paper is dark (chalk on a blackboard, a
    negative scan) is inverted: paper is whatever most of the picture is. 8-bit input stays in
    8 bits throughout, so the common case costs little more than Canny itself.
    """
    channels = image.shape[2]
    color = image[:, :, :3] if channels >= 3 else image[:, :, :1]
    alpha = image[:, :, -1] if channels in (2, 4) else None
    gray = _luminance_u8(color)

    if alpha is not None:
        alpha_u8 = _to_u8(np.ascontiguousarray(alpha))
        if int(alpha_u8.min()) < 255:
            opaque = alpha_u8 > 127
            # Paper under the transparency takes the tone opposite to the strokes drawn on it.
            strokes_are_light = bool(opaque.any()) and float(np.median(gray[opaque])) > 127
            weight = alpha_u8.astype(np.float32) / 255.0
            paper = 0.0 if strokes_are_light else 255.0
            gray = _to_u8((gray * weight + paper * (1.0 - weight)) / 255.0)

    if _mostly_dark(gray):
        gray = cv2.bitwise_not(gray)
    return gray


def _luminance_u8(color: np.ndarray) -> np.ndarray:
    """(H, W, 1 or 3) of any accepted dtype → uint8 (H, W) luminance (ITU-R BT.601, as OpenCV)."""
    if color.dtype == np.bool_:
        color = color.astype(np.uint8) * 255
    if color.shape[2] == 3:
        src = np.ascontiguousarray(color if color.dtype != np.float64 else color.astype(np.float32))
        gray = cv2.cvtColor(src, cv2.COLOR_RGB2GRAY)
    else:
        gray = np.ascontiguousarray(color[:, :, 0])
    return _to_u8(gray)


def _to_u8(gray: np.ndarray) -> np.ndarray:
    """uint8 / uint16 / float-in-[0, 1] (H, W) → uint8 (H, W), rounding to nearest."""
    if gray.dtype == np.uint8:
        return gray
    if gray.dtype == np.uint16:
        return cv2.convertScaleAbs(gray, alpha=255.0 / 65535.0)
    return to_uint8(gray)


POLARITY_SAMPLE_SIDE = 64
"""Paper is told from ink on about 64×64 evenly spread pixels: a majority vote needs no more."""


def _mostly_dark(gray: np.ndarray) -> bool:
    """Whether most of a uint8 image is darker than mid-grey (its median is below 128)."""
    step = max(1, max(gray.shape) // POLARITY_SAMPLE_SIDE)
    sample = gray[::step, ::step]
    return 2 * int(np.count_nonzero(sample < 128)) > sample.size


def auto_thresholds(gray8: np.ndarray) -> tuple[int, int]:
    """Pick Canny thresholds from the image's own gradient strengths.

    The high threshold is Otsu's split of the non-zero Sobel magnitudes (the same gradient Canny
    uses), so it separates stroke edges from paper texture whether the drawing is bold ink or faint
    pencil; the low threshold is half of it, the usual 1:2 hysteresis ratio.
    """
    gx = cv2.Sobel(gray8, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray8, cv2.CV_32F, 0, 1, ksize=3)
    # Canny's default L1 magnitude of the 3×3 Sobel reaches 8 × 255; Otsu wants 8 bits.
    magnitude = (np.abs(gx) + np.abs(gy)) / SOBEL_L1_MAX_GAIN
    strong = magnitude[magnitude >= 1.0]
    if strong.size == 0:
        return DEFAULT_LOW_THRESHOLD, DEFAULT_HIGH_THRESHOLD
    otsu, _ = cv2.threshold(strong.astype(np.uint8).reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    high = max(2, int(otsu * SOBEL_L1_MAX_GAIN))
    return high // 2, high
