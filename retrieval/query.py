"""What a style query asks for, and the arithmetic on embeddings that answers it.

Text and image queries live in one CLIP space, so a hybrid query is the normalised weighted
sum of the two unit vectors. Blending weights for k > 1 (the seed's "style interpolation") are
a softmax of the cosine scores at CLIP's own temperature (its learnt logit scale is 100), so a
clear winner dominates and near-ties share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidParameterError
from .folder import StyleMeta, normalise_tags
from .index import Hit

MAX_K = 64
"""Most references one query returns: beyond this an IMAGE batch stops being a style reference."""
DEFAULT_TEMPERATURE = 0.01
"""Softmax temperature of the blending weights: CLIP's logit scale of 100."""


@dataclass(frozen=True)
class StyleQuery:
    """A retrieval request. ``image`` is float ``(H, W, C)`` in [0, 1]; ``tags`` must all be present."""

    text: str = ""
    image: np.ndarray | None = None
    image_weight: float = 0.5
    k: int = 1
    tags: tuple[str, ...] = ()
    temperature: float = DEFAULT_TEMPERATURE

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or not 1 <= self.k <= MAX_K:
            raise InvalidParameterError(f"k is {self.k!r}; ask for between 1 and {MAX_K} style references.")
        if not 0.0 <= self.image_weight <= 1.0:
            raise InvalidParameterError(
                f"image_weight is {self.image_weight}; use 0 (text only) to 1 (image only)."
            )
        if not self.temperature > 0:
            raise InvalidParameterError(f"temperature is {self.temperature}; use a positive value such as 0.01.")
        if not self.text.strip() and self.image is None:
            raise InvalidParameterError("The style query is empty; give a prompt, a style query or a query image.")
        object.__setattr__(self, "tags", normalise_tags(list(self.tags)))

    @property
    def text_weight(self) -> float:
        """Weight of the text embedding: all of it without an image, none without text."""
        if self.image is None:
            return 1.0
        if not self.text.strip():
            return 0.0
        return 1.0 - self.image_weight


@dataclass(frozen=True)
class StyleMatch:
    """One retrieved style: where it is, what it is called, how well it matched, its blend share."""

    item_id: str
    path: Path
    meta: StyleMeta
    score: float
    weight: float = 0.0

    @property
    def name(self) -> str:
        return self.meta.name


def combine(text_vec: np.ndarray | None, image_vec: np.ndarray | None, text_weight: float) -> np.ndarray:
    """Unit query vector from optional text and image embeddings weighted ``text_weight : 1 - text_weight``."""
    parts = []
    if text_vec is not None and text_weight > 0:
        parts.append(text_weight * text_vec)
    if image_vec is not None and text_weight < 1:
        parts.append((1.0 - text_weight) * image_vec)
    if not parts:
        raise InvalidParameterError("The style query has no text or image with a weight above 0.")
    vec = np.sum(parts, axis=0).astype(np.float32)
    norm = float(np.linalg.norm(vec))
    if norm < 1e-6:
        raise InvalidParameterError(
            "The text and image of the style query cancel out; change image_weight or one of the inputs."
        )
    return vec / norm


def blend_weights(scores: Sequence[float], temperature: float = DEFAULT_TEMPERATURE) -> list[float]:
    """Softmax of ``scores / temperature``: non-negative weights summing to 1, in the order given."""
    if not scores:
        return []
    logits = np.asarray(scores, dtype=np.float64) / temperature
    logits -= logits.max()
    weights = np.exp(logits)
    weights /= weights.sum()
    return [float(w) for w in weights]


def exact_top_k(matrix: np.ndarray, ids: Sequence[str], vector: np.ndarray, k: int) -> list[Hit]:
    """Brute-force cosine top-k over unit rows: exact, used wherever an approximate index would lose recall."""
    if len(ids) == 0:
        return []
    scores = matrix @ vector.astype(np.float32)
    k = min(k, len(ids))
    top = np.argpartition(-scores, k - 1)[:k] if k < len(ids) else np.arange(len(ids))
    # Best first; equal scores in id order, so results are reproducible.
    ordered = sorted(top.tolist(), key=lambda i: (-float(scores[i]), ids[i]))
    return [Hit(ids[i], float(scores[i])) for i in ordered]
