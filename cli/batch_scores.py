"""Per-job scores that make a batch rankable without looking at every image, and the contact sheet.

- Structure fidelity: how many of the sketch's edges reappear in the render's edges (and vice versa), as
  an F1 score with a small pixel tolerance, both edge maps from ``rendering.canny``: 1.0 = the render keeps
  every line of the drawing and adds none.
- Style similarity: CLIP image-embedding cosine between the render and its style reference, from
  ``retrieval.embedder`` (the same model family the library is indexed with).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

EDGE_TOLERANCE_PX = 2
"""An edge counts as matched when the other map has an edge within this many pixels (line jitter)."""


def structure_fidelity(sketch: np.ndarray, render: np.ndarray, tolerance: int = EDGE_TOLERANCE_PX) -> float:
    """F1 agreement in [0, 1] of the sketch's and the render's Canny edges at the render's size."""
    import cv2

    from ..rendering import CannySettings, sketch_to_edges

    height, width = render.shape[:2]
    sketch_small = cv2.resize(sketch.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    sketch_edges = sketch_to_edges(sketch_small)[..., 0] > 0.5
    render_edges = sketch_to_edges(render.astype(np.float32), CannySettings(auto_threshold=True))[..., 0] > 0.5
    if not sketch_edges.any() or not render_edges.any():
        return 0.0
    kernel = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    near_sketch = cv2.dilate(sketch_edges.astype(np.uint8), kernel) > 0
    near_render = cv2.dilate(render_edges.astype(np.uint8), kernel) > 0
    precision = float((render_edges & near_sketch).sum() / render_edges.sum())
    recall = float((sketch_edges & near_render).sum() / sketch_edges.sum())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def style_similarity(embedder: Any, render: Image.Image, reference: Image.Image) -> float:
    """Cosine similarity of the CLIP image embeddings of the render and its reference."""
    vectors = embedder.embed_images([render.convert("RGB"), reference.convert("RGB")])
    return float(np.dot(vectors[0], vectors[1]))


def contact_sheet(rows: Sequence[dict[str, Any]], out_dir: Path, path: Path, cell: int = 160) -> Path:
    """A PNG grid, best structure fidelity first: sketch | style reference | render, with prompt and scores."""
    label_h = 48
    sheet = Image.new("RGB", (3 * cell, max(1, len(rows)) * (cell + label_h)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    ordered = sorted(rows, key=lambda r: -(r.get("structure_fidelity") or 0.0))
    for n, row in enumerate(ordered):
        top = n * (cell + label_h)
        paths = [row.get("sketch"), row.get("reference_file") and out_dir / row["reference_file"],
                 row.get("output") and out_dir / row["output"]]
        for col, source in enumerate(paths):
            if source and Path(source).is_file():
                with Image.open(source) as image:
                    # Scaled before converting (grey and RGB scale as they are; others, e.g. palettes, would
                    # scale by nearest neighbour): only the thumbnail's pixels are converted.
                    thumb = image if image.mode in ("L", "RGB") else image.convert("RGB")
                    thumb.thumbnail((cell, cell))
                    sheet.paste(thumb.convert("RGB"), (col * cell, top))
        scores = f"structure {row.get('structure_fidelity', 0) or 0:.3f}  style {row.get('style_similarity') or 0:.3f}"
        styles = ", ".join(row.get("styles") or []) or "-"
        text = f"{row.get('prompt', '')[:70]}\n{styles[:60]}\n{scores}{'  ERROR' if row.get('error') else ''}"
        draw.multiline_text((4, top + cell + 2), text, fill=(235, 235, 235))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, compress_level=1)  # like the renders: level 6 triples the time for a few % of size
    return path
