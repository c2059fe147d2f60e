"""A sketch's strokes as 1-pixel centre lines: the control image a drawn line really stands for.

Canny finds both sides of every stroke, so each pencil line becomes two parallel contours and a canny
ControlNet renders two edges where the artist drew one. Line-art and scribble ControlNets are trained on
the lines themselves (white on black), and a canny ControlNet reads a 1-pixel line as one edge. This module
turns a normalised sketch (uint8, dark ink on light paper, already resized: see ``canny.sketch_to_edges``,
which owns the polarity, alpha and size rules for both modes) into that line map.

Two steps, each a well-kept implementation:

1. **Binarise** with Otsu's threshold (``cv2.threshold``): it splits the histogram where ink and paper
   separate best, so bold ink, anti-aliased tablet strokes and faint pencil all come out at their drawn
   width. A sketch whose histogram has no second mode (blank paper, paper grain, one flat tone) has no
   strokes: Otsu's own separability measure (between-class over total variance, Otsu 1979) is about
   2/pi = 0.64 for one bell of noise and above 0.9 for every example sketch, so below ``MIN_SEPARABILITY``
   — or with ink barely darker than paper — nothing is drawn.
2. **Thin** with scikit-image's ``skeletonize(method="lee")``. Why scikit-image and not
   ``cv2.ximgproc.thinning``: ximgproc ships only in opencv-contrib wheels, which install the same ``cv2``
   module as the opencv-python / opencv-python-headless wheels ComfyUI users already have and break each
   other when mixed; scikit-image is a BSD pure-wheel dependency that clashes with nothing (and is already
   pulled in by controlnet-aux). Why Lee's method and not the default (Zhang's): on the example sketches
   Zhang's left 2×2 blocks and stray three-neighbour "staircase" pixels away from any junction; Lee's left
   neither, i.e. the lines are 1 pixel wide everywhere but at true junctions.

scikit-image (with SciPy) takes about half a second to import, so it is imported on first use: loading
the node pack, or running canny mode, never pays for it.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

log = logging.getLogger(__name__)

MIN_SEPARABILITY = 0.7
"""Otsu's between-class / total variance below which the histogram is one mode (paper only, no strokes)."""

MIN_INK_CONTRAST = 6
"""Ink must be this many 8-bit levels darker than paper on average; less is paper grain or scanner noise."""

LINE = 255


def ink_mask(gray: np.ndarray) -> np.ndarray | None:
    """The stroke pixels of a uint8 dark-on-light sketch, or None when it has no strokes.

    Returns:
        bool ``(H, W)``, True on ink; None for a blank, flat or noise-only image.
    """
    hist = cv2.calcHist([gray], [0], None, [256], [0, 256]).ravel().astype(np.float64)
    threshold, _ = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    cut = int(threshold) + 1  # Otsu's ink class is the levels <= threshold
    levels = np.arange(256, dtype=np.float64)
    total = hist.sum()
    ink_weight, paper_weight = hist[:cut].sum() / total, hist[cut:].sum() / total
    if ink_weight == 0.0 or paper_weight == 0.0:
        return None
    ink_mean = float(hist[:cut] @ levels[:cut]) / (ink_weight * total)
    paper_mean = float(hist[cut:] @ levels[cut:]) / (paper_weight * total)
    variance = float(hist @ (levels - (ink_weight * ink_mean + paper_weight * paper_mean)) ** 2) / total
    separability = ink_weight * paper_weight * (paper_mean - ink_mean) ** 2 / variance
    if separability < MIN_SEPARABILITY or paper_mean - ink_mean < MIN_INK_CONTRAST:
        return None
    return gray <= threshold


def centre_lines(gray: np.ndarray) -> np.ndarray:
    """Thin the strokes of a uint8 dark-on-light sketch to 1-pixel centre lines.

    Args:
        gray: ``(H, W)`` uint8, dark ink on light paper, at the output size.

    Returns:
        uint8 ``(H, W)``: 255 on the centre lines, 0 elsewhere; all 0 (with a warning in the log) when the
        sketch has no strokes.
    """
    ink = ink_mask(gray)
    if ink is None:
        log.warning(
            "The sketch (%dx%d) has no strokes that stand out from the paper; the line map is empty. "
            "Load the drawing itself, or use blur to calm paper grain.",
            gray.shape[1],
            gray.shape[0],
        )
        return np.zeros(gray.shape, np.uint8)
    from skimage.morphology import skeletonize  # ~0.5 s import (SciPy): paid only by lines mode

    skeleton = skeletonize(ink, method="lee")
    return np.where(skeleton > 0, np.uint8(LINE), np.uint8(0))
