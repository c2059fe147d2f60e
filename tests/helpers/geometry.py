"""A test embedder whose geometry we choose, and helpers to build libraries of solid-colour images.

An image embeds as its mean RGB colour (normalised, padded to DIM); a text embeds as the sum of
the colours it names (any other words point along one axis of their own, WORDLESS, orthogonal to
every colour). So "red" finds the red image first, then orange (cos 0.89), then the rest at 0, and
every expected order can be worked out by hand; a style whose words say "blue" sits on the blue
axis for the words' half of a score whatever colour its image is.

Run as a script (``python geometry.py STORE FOLDER PREFIX N``) it adds N styles to a library:
the two-writers test starts two of these at once.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

DIM = 8
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "orange": (1.0, 0.5, 0.0),
    "teal": (0.0, 0.6, 0.6),
}


WORDLESS = 5
"""The axis of texts that name no colour (images never reach it: they use axes 0-3)."""


def unit(values: Sequence[float]) -> np.ndarray:
    vec = np.zeros(DIM, dtype=np.float32)
    vec[: len(values)] = values
    return vec / np.linalg.norm(vec)


def text_vector(text: str) -> np.ndarray:
    """The sum of the unit vectors of the colours ``text`` names (word by word), else the WORDLESS axis."""
    words = re.findall(r"[a-z]+", text.lower())
    named = [unit(COLOURS[w]) for w in words if w in COLOURS]
    if not named:
        wordless = np.zeros(DIM, dtype=np.float32)
        wordless[WORDLESS] = 1.0
        return wordless
    total = np.sum(named, axis=0)
    return (total / np.linalg.norm(total)).astype(np.float32)


class GeometryEmbedder:
    """Embeds solid-colour images by colour and colour words by name."""

    def __init__(self, model_key: str = "geometry@0000", dim: int = DIM) -> None:
        self.model_key = model_key
        self.dim = dim
        self.images_embedded = 0
        self.texts_embedded = 0

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.texts_embedded += len(texts)
        return np.stack([text_vector(t)[: self.dim] for t in texts])

    def embed_images(self, images: Sequence[Any], *, batch_size: int = 32, progress: Any = None) -> np.ndarray:
        self.images_embedded += len(images)
        rows = []
        for img in images:
            mean = np.asarray(img.convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(axis=0) / 255.0
            # A tiny per-image component keeps distinct files apart (exact duplicates still tie).
            extra = [float(np.asarray(img.convert("RGB"), dtype=np.float32)[-1, -1, 2]) / 1e4]
            rows.append(unit([*mean, *extra])[: self.dim])
        return np.stack(rows)


def solid(path: Path, colour: Sequence[float], size: int = 16, marker: int = 0) -> Path:
    """Write a solid-colour PNG; ``marker`` tweaks one pixel so files of one colour differ in content."""
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[:] = [round(c * 255) for c in colour]
    pixels[size - 1, size - 1, 2] = marker % 256
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def add_many(store: Path, folder: Path, prefix: str, n: int, start_at: float = 0.0) -> None:
    """Open the library (at wall-clock ``start_at``, so several processes collide) and add ``n`` styles."""
    from sketch_rag.retrieval.folder import LibraryRoot
    from sketch_rag.retrieval.library import open_library

    time.sleep(max(0.0, start_at - time.time()))
    library, _ = open_library([LibraryRoot(folder, "")], GeometryEmbedder(), store)
    rng = np.random.default_rng(abs(hash(prefix)) % 2**32)
    for i in range(n):
        colour = rng.random(3).tolist()
        pixels = np.zeros((8, 8, 3), dtype=np.float32)
        pixels[:] = colour
        library.add(pixels, f"{prefix} {i}", ["concurrent"], filename=f"{prefix}_{i}.png")


if __name__ == "__main__":
    add_many(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), *map(float, sys.argv[5:6]))
