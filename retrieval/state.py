"""What a library's index was last synced from: one row per file, plus a generation counter.

The rows let an unchanged library be verified by ``stat`` alone (size + mtime → known sha256),
and hold the metadata used for exact filtered search. The generation is bumped by every write,
so readers in other processes (and ComfyUI's cache) can tell that the library changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .folder import StyleMeta
from .sqlite_files import SqliteFile

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS files (
        collection TEXT NOT NULL,
        item_id TEXT NOT NULL,
        root TEXT NOT NULL,
        relpath TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        meta TEXT NOT NULL,
        error TEXT,
        PRIMARY KEY (collection, item_id)
    )""",
    """CREATE TABLE IF NOT EXISTS generations (
        collection TEXT PRIMARY KEY,
        generation INTEGER NOT NULL
    )""",
)


@dataclass(frozen=True)
class FileRecord:
    """One synced file. ``error`` is set for files that could not be embedded (reported, not indexed)."""

    item_id: str
    root: str
    relpath: str
    size: int
    mtime_ns: int
    sha256: str
    meta: StyleMeta
    error: str | None = None


class SyncState(SqliteFile):
    """The ``files`` and ``generations`` tables of one SQLite file, scoped to one collection.

    Everything here is derived from the folders, so a damaged file is moved aside and the next
    sync fills a new one (content hashes find the cached embeddings: nothing is embedded again).
    """

    role = "sync state"
    remedy = "rebuilt it from the library folder"

    def __init__(self, path: Path, collection: str) -> None:
        self.collection = collection
        super().__init__(path, _SCHEMA)

    def records(self) -> dict[str, FileRecord]:
        rows = self._db.execute(
            "SELECT item_id, root, relpath, size, mtime_ns, sha256, meta, error FROM files WHERE collection = ?",
            (self.collection,),
        )
        return {
            r[0]: FileRecord(r[0], r[1], r[2], r[3], r[4], r[5], StyleMeta.from_json(json.loads(r[6])), r[7])
            for r in rows
        }

    def write(self, upserts: Iterable[FileRecord], deletes: Iterable[str]) -> int:
        """Apply changes in one transaction and bump the generation if anything changed; returns the generation."""
        upserts, deletes = list(upserts), list(deletes)
        if not upserts and not deletes:
            return self.generation()
        with self._db:
            self._db.executemany(
                "DELETE FROM files WHERE collection = ? AND item_id = ?", ((self.collection, i) for i in deletes)
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO files (collection, item_id, root, relpath, size, mtime_ns, sha256, meta, error)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (self.collection, r.item_id, r.root, r.relpath, r.size, r.mtime_ns, r.sha256,
                     json.dumps(r.meta.to_json(), ensure_ascii=False), r.error)
                    for r in upserts
                ),
            )
            return self._bump()

    def bump(self) -> int:
        with self._db:
            return self._bump()

    def _bump(self) -> int:
        self._db.execute(
            "INSERT INTO generations (collection, generation) VALUES (?, 1) "
            "ON CONFLICT(collection) DO UPDATE SET generation = generation + 1",
            (self.collection,),
        )
        return self.generation()

    def bump_all(self) -> None:
        """Bump every collection's generation: their index was replaced, so every reader must reopen it."""
        with self._db:
            self._db.execute("UPDATE generations SET generation = generation + 1")

    def forget(self, collections: Iterable[str]) -> None:
        """Delete every row of these collections (their index is gone: see ``ChromaIndex.drop_others``)."""
        names = [(c,) for c in collections]
        with self._db:
            self._db.executemany("DELETE FROM files WHERE collection = ?", names)
            self._db.executemany("DELETE FROM generations WHERE collection = ?", names)

    def generation(self) -> int:
        self.reopen_if_replaced()
        row = self._db.execute("SELECT generation FROM generations WHERE collection = ?", (self.collection,)).fetchone()
        return int(row[0]) if row else 0
