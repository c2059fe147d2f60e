"""What a style query asks for, and the arithmetic on embeddings that answers it.

Text and image queries live in one CLIP space, so a hybrid query is the normalised weighted
sum of the two unit vectors (``image_weight``). A style is scored by its image's cosine with that
query, mixed by ``text_weight`` with the cosine of the prompt and the style's own words (name,
tags, description), embedded by the same CLIP. Blending weights for k > 1 (the seed's "style
interpolation") are a softmax of the scores at CLIP's own temperature (its learnt logit scale is
100), so a clear winner dominates and near-ties share.

Raw cosines are not calibrated across queries or libraries: one prompt's best match may sit at
0.31 and another's at 0.24 with both clearly right, because each query lands at its own distance
from the image cluster (the modality gap; see arXiv 2605.09030 on why CLIP-style similarity scores
need per-query normalisation before they can be compared or thresholded). So every match also
carries its standing among all the library's styles for the same query: a z-score and a rank
percentile, which read the same whatever the prompt, library or model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InvalidParameterError
from .folder import StyleMeta, normalise_tags
from .index import Hit
from .state import FileRecord

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
    text_weight: float = 0.0
    """Share of the score that compares the prompt with the styles' words (0 = images only, 1 = words only)."""

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or not 1 <= self.k <= MAX_K:
            raise InvalidParameterError(f"k is {self.k!r}; ask for between 1 and {MAX_K} style references.")
        if not 0.0 <= self.image_weight <= 1.0:
            raise InvalidParameterError(
                f"image_weight is {self.image_weight}; use 0 (text only) to 1 (image only)."
            )
        if not 0.0 <= self.text_weight <= 1.0:
            raise InvalidParameterError(
                f"text_weight is {self.text_weight}; use 0 (style images only) to 1 (style names, tags and "
                "descriptions only)."
            )
        if not self.temperature > 0:
            raise InvalidParameterError(f"temperature is {self.temperature}; use a positive value such as 0.01.")
        if not self.text.strip() and self.image is None:
            raise InvalidParameterError("The style query is empty; give a prompt, a style query or a query image.")
        object.__setattr__(self, "tags", normalise_tags(list(self.tags)))

    @property
    def prompt_share(self) -> float:
        """The prompt's share of the query vector (the rest is the query image's): all without an image."""
        if self.image is None:
            return 1.0
        if not self.text.strip():
            return 0.0
        return 1.0 - self.image_weight

    @property
    def applied_text_weight(self) -> float:
        """``text_weight`` as applied: 0 without a prompt, since the styles' words are compared with the prompt only
        (an image-only query is matched against the style images, whatever ``text_weight`` says)."""
        return self.text_weight if self.text.strip() else 0.0


@dataclass(frozen=True)
class StyleMatch:
    """One retrieved style: where it is, what it is called, how well it matched, its blend share."""

    item_id: str
    path: Path
    meta: StyleMeta
    score: float
    """The raw score: cosine similarity (mixed with the words' cosine by ``text_weight``)."""
    weight: float = 0.0
    z_score: float = 0.0
    """How many standard deviations the score lies above the mean score of all the library's styles for this query."""
    percentile: float = 100.0
    """Share of the library's styles scoring below this one for this query, in percent (the best of many: ~100)."""
    record: FileRecord | None = field(default=None, compare=False, repr=False)
    """The synced record the match was made from (content hash, folder), so a caller needs no second lookup
    that a sync in between could have changed."""

    @property
    def name(self) -> str:
        return self.meta.name


def combine(text_vec: np.ndarray | None, image_vec: np.ndarray | None, prompt_share: float) -> np.ndarray:
    """Unit query vector from optional text and image embeddings weighted ``prompt_share : 1 - prompt_share``."""
    parts = []
    if text_vec is not None and prompt_share > 0:
        parts.append(prompt_share * text_vec)
    if image_vec is not None and prompt_share < 1:
        parts.append((1.0 - prompt_share) * image_vec)
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
    return top_k_of_scores(matrix @ vector.astype(np.float32), ids, k)


def top_k_of_scores(
    scores: np.ndarray, ids: Sequence[str], k: int, rows: np.ndarray | None = None
) -> list[Hit]:
    """The ``k`` best of ``scores`` (one per id), optionally only among ``rows``; best first, ties in id order."""
    candidates = np.arange(len(ids)) if rows is None else np.asarray(rows, dtype=np.intp)
    if len(candidates) == 0:
        return []
    picked = scores[candidates]
    k = min(k, len(candidates))
    top = np.argpartition(-picked, k - 1)[:k] if k < len(candidates) else np.arange(len(candidates))
    # Best first; equal scores in id order, so results are reproducible.
    ordered = sorted((int(candidates[i]) for i in top), key=lambda i: (-float(scores[i]), ids[i]))
    return [Hit(ids[i], float(scores[i])) for i in ordered]


def relative_standing(every: np.ndarray, rows: Sequence[int]) -> list[tuple[float, float]]:
    """(z-score, rank percentile) of the styles at ``rows`` among ``every`` style's score for one query.

    The z-score is ``(score - mean) / std`` over all styles (0 when all score alike); the percentile
    is the mid-rank share of the others scoring below, in percent: each style scoring lower counts 1,
    each other style tied with it counts 1/2 (100 for a clear best, 0 for a clear worst, 50 when all
    tie; 100 for a library of one). A row of -1 (a style not in the
    matrix, say one added by another process since) gets the neutral (0, 100) rather than a guess.
    """
    scores = np.asarray(every, dtype=np.float64)
    n = len(scores)
    mean, std = (float(scores.mean()), float(scores.std())) if n else (0.0, 0.0)
    result = []
    for row in rows:
        if not 0 <= row < n:
            result.append((0.0, 100.0))
            continue
        value = scores[row]
        z = (float(value) - mean) / std if std > 1e-9 else 0.0
        below = int(np.count_nonzero(scores < value))
        tied_others = int(np.count_nonzero(scores == value)) - 1
        result.append((z, 100.0 * (below + 0.5 * tied_others) / (n - 1) if n > 1 else 100.0))
    return result
