"""The indexed styles' embeddings as matrices: exact filtered search, mixed image/word scores, all scores.

Chroma answers the plain nearest-image query. Everything it cannot answer exactly is answered
here from the embedding cache: a tag filter (Chroma's filtered HNSW search loses recall), a score
that mixes image and word cosines (no single index ranks a mix of two), and every style's score
for one query (what the z-score and percentile of a match are relative to). One object serves one
generation of the library; the library drops it when its records change.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import LibraryError
from .images import EMBED_SIDE, open_rgb
from .state import FileRecord
from .sync import LibraryStores, text_hash

FILTER_CACHE_SIZE = 16
"""Tag filters whose embedding rows are kept gathered (each holds a copy of its rows)."""


class StyleMatrices:
    """The good styles of one library generation, sorted by id, with their image and (on demand) word embeddings."""

    def __init__(self, stores: LibraryStores, good: Mapping[str, FileRecord]) -> None:
        self.stores = stores
        self.good = good
        self.ids = sorted(good)
        self.rows = {item_id: n for n, item_id in enumerate(self.ids)}
        self._images: np.ndarray | None = None
        self._words: np.ndarray | None = None
        self._filtered: dict[frozenset[str], tuple[np.ndarray, list[str], np.ndarray]] = {}

    def images(self) -> np.ndarray:
        """The image embeddings, one row per id (images the cache lost are embedded again and cached)."""
        if self._images is None:
            stores = self.stores
            cached = stores.cache.get_many(stores.cache_key, (self.good[i].sha256 for i in self.ids))
            missing = [self.good[i] for i in self.ids if self.good[i].sha256 not in cached]
            if missing:
                pictures = [open_rgb(stores.path_of(r), EMBED_SIDE) for r in missing]
                fresh = dict(zip((r.sha256 for r in missing), stores.embedder.embed_images(pictures), strict=True))
                stores.cache.put_many(stores.cache_key, fresh)
                cached.update(fresh)
            self._images = np.stack([cached[self.good[i].sha256] for i in self.ids], dtype=np.float32)
        return self._images

    def words(self) -> np.ndarray:
        """The styles' word embeddings (name, tags, description), row for row with :meth:`images`."""
        if self._words is None:
            records = [self.good[i] for i in self.ids]
            vectors = self.stores.text_vectors(records)
            self._words = np.stack([vectors[text_hash(r.meta)] for r in records], dtype=np.float32)
        return self._words

    def scores(self, vector: np.ndarray, prompt_vec: np.ndarray | None = None, text_weight: float = 0.0) -> np.ndarray:
        """Every style's score, in :attr:`ids` order: ``(1 - w) cos(vector, image) + w cos(prompt_vec, words)``."""
        # einsum, not BLAS (@, np.dot): with Chroma's threads in the process OpenBLAS's threaded matrix-vector
        # product took 12-20 ms at N = 2,000 on 2 busy cores, einsum's single-threaded loop 0.2 ms.
        scores: np.ndarray = np.einsum("nd,d->n", self.images(), vector.astype(np.float32))
        if prompt_vec is not None and text_weight > 0:
            scores *= 1.0 - text_weight
            scores += np.einsum("nd,d->n", self.words(), (text_weight * prompt_vec).astype(np.float32))
        return scores

    def tagged(self, wanted: frozenset[str]) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Image embeddings, ids and rows of the styles carrying all of ``wanted``, kept per tag set.

        A filter is usually reused query after query (one workflow, one batch), so its rows are
        gathered once instead of scanning every record per query.

        Raises:
            LibraryError: no style carries all of ``wanted`` (the message lists the library's tags).
        """
        if wanted not in self._filtered:
            matrix = self.images()
            rows = [n for n, item_id in enumerate(self.ids) if wanted <= set(self.good[item_id].meta.tags)]
            if not rows:
                known = sorted({t for r in self.good.values() for t in r.meta.tags})
                raise LibraryError(
                    f"No style in library {self.stores.name!r} has all the tags {sorted(wanted)}; tags in the "
                    f"library: {', '.join(known[:50]) or 'none'}. Change the tag filter or tag your styles."
                )
            if len(self._filtered) >= FILTER_CACHE_SIZE:
                self._filtered.pop(next(iter(self._filtered)))
            self._filtered[wanted] = (matrix[rows], [self.ids[n] for n in rows], np.asarray(rows, dtype=np.intp))
        return self._filtered[wanted]
