"""Embeddings kept by (model key, image sha256), so nothing is embedded twice and indexes can be rebuilt.

Chroma keeps vectors only in its HNSW files; when those are lost it cannot rebuild them (see the
Chroma report). This cache is our own copy: a renamed or re-added image, a rebuilt index, or a
second library holding the same file reuse the stored vector instead of running CLIP again.
SQLite makes it safe to read and append from several processes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .sqlite_files import SqliteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    model_key TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (model_key, sha256)
)
"""

_SQLITE_VARS = 900
"""Parameters per SELECT ... IN (...) statement, under SQLite's historical limit of 999."""


class EmbeddingCache(SqliteFile):
    """float32 unit vectors in one SQLite file, keyed by (model key, content sha256).

    A damaged file is moved aside and a new, empty cache started: its images are embedded again
    on the next sync (the one thing a damaged cache costs).
    """

    role = "embedding cache"
    remedy = "started an empty one (its images are embedded again)"

    def __init__(self, path: Path) -> None:
        super().__init__(path, [_SCHEMA])

    def get_many(self, model_key: str, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``hashes`` (missing ones are simply absent from the result)."""
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(wanted), _SQLITE_VARS):
            chunk = wanted[start : start + _SQLITE_VARS]
            marks = ",".join("?" * len(chunk))
            # Bandit B608 (SQL built as text): the f-string inserts only "?" marks; every value is a parameter.
            sql = f"SELECT sha256, vector FROM embeddings WHERE model_key = ? AND sha256 IN ({marks})"  # nosec B608
            rows = self._db.execute(sql, (model_key, *chunk))
            for sha, blob in rows:
                found[sha] = np.frombuffer(blob, dtype=np.float32).copy()
        return found

    def put_many(self, model_key: str, vectors: dict[str, np.ndarray]) -> None:
        """Store vectors (replacing any under the same key), in one transaction."""
        rows = [
            (model_key, sha, int(vec.shape[0]), np.ascontiguousarray(vec, dtype=np.float32).tobytes())
            for sha, vec in vectors.items()
        ]
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings (model_key, sha256, dim, vector) VALUES (?, ?, ?, ?)", rows
            )

