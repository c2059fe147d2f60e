"""Ranking a library's styles for one query: the query's vectors, the top k, their blend weights and standing.

:meth:`StyleLibrary.query` supplies the library's index search (which heals and repairs a damaged store) and its
current records and embedding matrices; the scoring rules themselves are :mod:`.query`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .embedder import Embedder
from .folder import normalise_tags
from .images import array_to_pil
from .index import Hit
from .query import StyleQuery, blend_weights, combine, exact_top_k, relative_standing, top_k_of_scores
from .state import FileRecord
from .style_matrices import StyleMatrices

Search = Callable[[np.ndarray, int, Sequence[str]], tuple[list[Hit], dict[str, FileRecord]]]
"""An index search: (unit vector, k, tags) -> the hits and the records (one generation's) they were checked against."""


@dataclass(frozen=True)
class Ranked:
    """One result of a query, before it is turned into a :class:`~.query.StyleMatch`."""

    hit: Hit
    weight: float
    z_score: float
    percentile: float


def query_vectors(embedder: Embedder, query: StyleQuery) -> tuple[np.ndarray, np.ndarray | None]:
    """The query vector the images are compared with, and the prompt's own (for the words), if embedded."""
    share = query.prompt_share
    needs_prompt = share > 0 or query.applied_text_weight > 0
    text_vec = embedder.embed_texts([query.text])[0] if needs_prompt else None
    image_vec = None
    if query.image is not None and share < 1:
        image_vec = embedder.embed_images([array_to_pil(query.image)])[0]
    return combine(text_vec, image_vec, share), text_vec


def rank(
    query: StyleQuery,
    vector: np.ndarray,
    prompt_vec: np.ndarray | None,
    *,
    search: Search,
    records: Callable[[], dict[str, FileRecord]],
    matrices: Callable[[], StyleMatrices],
) -> tuple[list[Ranked], dict[str, FileRecord]]:
    """The ``query.k`` best styles, best first, and the records they were checked against.

    Without words (``text_weight`` 0, or no prompt) the ranking is the index's (``search``); with them every
    style's image and word cosines are mixed from ``matrices``. ``records`` and ``matrices`` are read after the
    search, which may have reread them.
    """
    words = query.applied_text_weight
    if words == 0 or prompt_vec is None:
        hits, snapshot = search(vector, query.k, query.tags)
        styles = matrices()
        every = styles.scores(vector)
    else:
        snapshot = records()  # one generation's records and matrices for the whole answer
        styles = matrices()
        every = styles.scores(vector, prompt_vec, words)
        rows = styles.tagged(frozenset(query.tags))[2] if query.tags else None
        hits = top_k_of_scores(every, styles.ids, query.k, rows)
    hits = [h for h in hits if h.item_id in snapshot]
    standing = relative_standing(every, [styles.rows.get(h.item_id, -1) for h in hits])
    weights = blend_weights([h.score for h in hits], query.temperature)
    ranked = [Ranked(h, w, z, p) for h, w, (z, p) in zip(hits, weights, standing, strict=True)]
    return ranked, snapshot


def tagged_top_k(matrices: StyleMatrices, vector: np.ndarray, k: int, tags: Sequence[str]) -> list[Hit]:
    """The ``k`` nearest styles carrying every one of ``tags``, exactly, from the cached embeddings (Chroma's own
    filtered HNSW search loses recall)."""
    matrix, ids, _ = matrices.tagged(frozenset(normalise_tags(list(tags))))
    return exact_top_k(matrix, ids, vector, k)


def consistent(hits: list[Hit], k: int, good: dict[str, FileRecord]) -> bool:
    """Whether an unfiltered index answer is whole: as many hits as asked (or indexed), all of indexed styles."""
    return len(hits) >= min(k, len(good)) and all(h.item_id in good for h in hits)
