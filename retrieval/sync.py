"""Bringing a library's index in line with its folder, by content hash.

Runs under the library's writer lock. Files are matched to the last sync by ``stat`` first and
sha256 only when size or mtime moved, so an unchanged library costs one ``scandir`` and no CLIP
call. Embeddings come from the cache whenever the content is known (renames, re-adds, rebuilds).
Unreadable images are skipped and reported, never fatal, and are not retried until they change.
A sync that fails on a damaged store or SQLite file heals it (moves it aside) and runs once more,
so the index is rebuilt from the folders and the cached embeddings; ``SyncReport.healed`` says so.

Each style's words (name, tags, description: :func:`style_text`) are embedded by the same CLIP
text tower and cached by the hash of that text, so an edited name re-embeds only that style's
text and a renamed file none. They are not put in Chroma: a query that mixes image and word
scores is answered exactly over both cached matrices (one ANN index cannot rank a mix of two).

:class:`LibraryStores` holds everything a sync touches, handed over explicitly by the library
that owns them, so this module never reaches into :class:`~.library.StyleLibrary`.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidImageError, LibraryError
from .embedder import Embedder, ProgressCallback
from .embedding_cache import EmbeddingCache
from .folder import FileInfo, LibraryRoot, StyleMeta, hash_if_changed, iter_image_files, read_metadata
from .images import EMBED_SIDE, open_rgb
from .index import ChromaIndex, is_store_error
from .state import FileRecord, SyncState

logger = logging.getLogger(__name__)

CHUNK = 256
"""Files embedded and committed together: an interrupted sync of a big library keeps what it did."""
SELF_TEST_SAMPLES = 4
STYLE_TEXT_CHARS = 1000
"""A style's words are cut here before embedding: CLIP reads 77 tokens, and a long description must not fail a sync."""


@dataclass
class SyncReport:
    """What a sync did, for the CLI's ``--json`` and for the loader node's log."""

    total: int = 0
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    metadata_updated: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    embedded: int = 0
    rebuilt: bool = False
    generation: int = 0
    healed: list[str] = field(default_factory=list)
    """One line per damaged file or store moved aside, saying where it went (also logged as a warning)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "added": self.added,
            "changed": self.changed,
            "renamed": [{"from": a, "to": b} for a, b in self.renamed],
            "removed": self.removed,
            "metadata_updated": self.metadata_updated,
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "embedded": self.embedded,
            "rebuilt": self.rebuilt,
            "generation": self.generation,
            "healed": self.healed,
        }



def scan(roots: list[LibraryRoot], known: dict[str, FileRecord], report: SyncReport) -> dict[str, FileRecord]:
    """The folder as it is now: one record per image file (error unset), metadata attached."""
    records: dict[str, FileRecord] = {}
    for root in roots:
        if not root.path.is_dir():
            continue
        infos: list[FileInfo] = list(iter_image_files(root))
        metas, problems = read_metadata(root, [i.relpath for i in infos])
        report.skipped.extend(problems)
        for info in infos:
            prev = known.get(info.item_id)
            try:
                sha = hash_if_changed(info, (prev.size, prev.mtime_ns, prev.sha256) if prev else None)
            except FileNotFoundError:
                continue  # moved away since the listing (a trash running meanwhile): no longer in the folder
            except OSError as exc:
                report.skipped.append((str(info.path), f"unreadable file: {exc}"))
                continue
            records[info.item_id] = FileRecord(
                info.item_id, root.label, info.relpath, info.size, info.mtime_ns, sha, metas[info.relpath]
            )
    return records


def index_metadata(record: FileRecord) -> dict[str, Any]:
    """The Chroma metadata of an item (never empty; lists only when non-empty, as Chroma requires)."""
    meta: dict[str, Any] = {"path": record.relpath, "root": record.root, "sha256": record.sha256,
                            "name": record.meta.name}
    if record.meta.tags:
        meta["tags"] = list(record.meta.tags)
    return meta


def style_text(meta: StyleMeta) -> str:
    """The words of a style that a prompt is compared with: its name, tags and description, in that order."""
    parts = [meta.name.strip()]
    if meta.tags:
        parts.append(", ".join(meta.tags))
    description = meta.text.get("description", "").strip()
    if description:
        parts.append(description)
    return ". ".join(p for p in parts if p)[:STYLE_TEXT_CHARS]


def text_hash(meta: StyleMeta) -> str:
    """Cache key of a style's words: the sha256 of :func:`style_text`, so only an edit changes it."""
    return hashlib.sha256(style_text(meta).encode("utf-8")).hexdigest()


class LibraryStores:
    """What one library keeps in line with its folders: the index, the embedding cache and the sync state.

    The library that owns them builds this with its folders, embedding model and stores, and asks it
    to sync, verify, rebuild and heal; ``on_healed`` tells the owner to forget what it read from a
    store that was just moved aside. Writers hold the library's file lock around every call.
    """

    def __init__(
        self,
        roots: Sequence[LibraryRoot],
        embedder: Embedder,
        index: ChromaIndex,
        cache: EmbeddingCache,
        state: SyncState,
        *,
        name: str,
        on_healed: Callable[[], None] = lambda: None,
    ) -> None:
        self.roots = list(roots)
        self.embedder = embedder
        self.index = index
        self.cache = cache
        self.state = state
        self.name = name
        self.on_healed = on_healed

    @property
    def cache_key(self) -> str:
        """Embedding-cache key: the model key plus the dimension, so no vector of another shape is ever reused."""
        return f"{self.embedder.model_key}:{self.embedder.dim}"

    @property
    def text_cache_key(self) -> str:
        """Cache key of the styles' word embeddings (same model, keyed by text hash instead of image hash)."""
        return f"{self.cache_key}:text"

    def path_of(self, record: FileRecord) -> Path:
        root = next((r for r in self.roots if r.label == record.root), None)
        if root is None:
            raise LibraryError(f"The style {record.item_id!r} belongs to no folder of library {self.name!r}.")
        return root.path / record.relpath

    # -- healing -----------------------------------------------------------------------------

    def heal(self, error: BaseException | None = None) -> bool:
        """After ``error``: move whatever is damaged (index store, sync state, embedding cache) aside. True if any was.

        Each file is judged afresh with every page checked (see :mod:`.sqlite_files`), so an error
        from a locked or busy file heals nothing and the caller re-raises it. A new index store
        bumps every library's generation in it, so their readers in other processes reopen it.
        """
        if error is not None and not is_store_error(error):
            return False  # an interrupt, a bug, an unreadable image: no file to judge
        healed = False
        for db in (self.state, self.cache):
            healed = db.heal() or healed
        if self.index.heal(error):
            healed = True
            self.state.bump_all()
        if healed:
            self.on_healed()
        return healed

    def take_notes(self) -> list[str]:
        """The one-line reports of what was healed since the last call (each also logged as a warning)."""
        notes = [*self.index.notes, *self.state.notes, *self.cache.notes]
        for held in (self.index.notes, self.state.notes, self.cache.notes):
            held.clear()
        return notes

    # -- syncing -----------------------------------------------------------------------------

    def sync(
        self,
        known: Callable[[], dict[str, FileRecord]],
        *,
        rebuild: bool = False,
        progress: ProgressCallback | None = None,
    ) -> SyncReport:
        """Sync the index with the folders (caller holds the writer lock); see the module docstring.

        ``known`` gives the records of the last sync (the owner's copy, read again after a heal).
        An error that :meth:`heal` traces to a damaged file is healed and the sync run once more;
        any other error is raised as it came.
        """
        try:
            report = self._sync(known(), rebuild=rebuild, progress=progress)
        except Exception as exc:
            if not self.heal(exc):
                raise
            report = self._sync(known(), rebuild=rebuild, progress=progress)
        if self.index.notes:
            self.state.bump_all()  # a new index store: the readers of every library in it must reopen it
        report.healed = self.take_notes()
        return report

    def _sync(
        self, stored: dict[str, FileRecord], *, rebuild: bool, progress: ProgressCallback | None
    ) -> SyncReport:
        report = SyncReport()
        old = {} if rebuild else stored
        new = scan(self.roots, old, report)

        removed = [i for i in old if i not in new]
        removed_by_sha = {old[i].sha256: i for i in removed if old[i].error is None}
        to_index: list[FileRecord] = []
        state_only: list[FileRecord] = []
        # Same content and metadata but a new size/mtime (a touch, a copy): only the state row changes, not the index.
        unchanged_errors: list[FileRecord] = []
        for item_id, rec in sorted(new.items()):
            prev = old.get(item_id)
            if prev is None:
                if rec.sha256 in removed_by_sha:
                    report.renamed.append((removed_by_sha[rec.sha256], item_id))
                else:
                    report.added.append(item_id)
                to_index.append(rec)
            elif prev.sha256 != rec.sha256:
                report.changed.append(item_id)
                to_index.append(rec)
            elif prev.error is not None:
                unchanged_errors.append(replace(rec, error=prev.error))
                if (prev.size, prev.mtime_ns) != (rec.size, rec.mtime_ns):  # else it would be hashed on every sync
                    state_only.append(unchanged_errors[-1])
            elif prev.meta != rec.meta:
                report.metadata_updated.append(item_id)
                to_index.append(rec)
            elif (prev.size, prev.mtime_ns) != (rec.size, rec.mtime_ns):
                state_only.append(rec)
        report.skipped.extend((str(self.path_of(r)), r.error or "") for r in unchanged_errors)
        renamed_from = {old_id for old_id, _ in report.renamed}
        report.removed = [i for i in removed if i not in renamed_from]

        if rebuild:
            self.index.reset()
        else:
            self.index.delete(removed)
        # A rebuild re-reads every file, but the rows of files deleted since the last sync must go too, or
        # the index would be rebuilt with their cached vectors and a deleted style could still be retrieved.
        self.state.write(state_only, [i for i in stored if i not in new])

        total = len(to_index)
        for start in range(0, total, CHUNK):
            chunk = to_index[start : start + CHUNK]
            vectors = self._vectors_for(chunk, report)
            good = [r for r in chunk if r.sha256 in vectors]
            bad = [r for r in chunk if r.sha256 not in vectors]
            self.index.delete([r.item_id for r in bad])
            if good:
                self.text_vectors(good)
                ids = [r.item_id for r in good]
                self.index.put(ids, np.stack([vectors[r.sha256] for r in good]), [index_metadata(r) for r in good])
            self.state.write(good + bad, [])
            if progress is not None:
                progress(min(start + CHUNK, total), total)

        records = self.state.records() if to_index or state_only or removed or rebuild else stored
        report.total = sum(1 for r in records.values() if r.error is None)
        if self.cache.moved_aside:
            # A new, empty cache: embed the library again, so the cache holds every indexed vector (rebuilds need it).
            self.rebuild_index(records, report)
            self.cache.moved_aside = False
            report.rebuilt = True
        elif not self.verify(records):
            # After a new store was started its rebuild is expected (and already said once): no second warning.
            logger.log(logging.INFO if self.index.notes else logging.WARNING,
                       "Style index %s does not match its library; rebuilding it from cached embeddings.", self.name)
            self.rebuild_index(records, report)
            report.rebuilt = True
        changed = report.rebuilt or to_index or state_only or removed
        report.generation = self.state.bump() if changed else self.state.generation()
        return report

    def _vectors_for(self, chunk: list[FileRecord], report: SyncReport) -> dict[str, np.ndarray]:
        """Vectors for the chunk's contents: cached ones, plus new embeddings; failures marked on the records."""
        vectors = self.cache.get_many(self.cache_key, (r.sha256 for r in chunk))
        missing = {r.sha256: r for r in chunk if r.sha256 not in vectors}
        images, hashes = [], []
        for sha, rec in missing.items():
            try:
                images.append(open_rgb(self.path_of(rec), EMBED_SIDE))
                hashes.append(sha)
            except InvalidImageError as exc:
                report.skipped.append((str(self.path_of(rec)), str(exc)))
        if images:
            embedded = self.embedder.embed_images(images)
            fresh = dict(zip(hashes, embedded, strict=True))
            self.cache.put_many(self.cache_key, fresh)
            vectors.update(fresh)
            report.embedded += len(images)
        for i, rec in enumerate(chunk):
            if rec.sha256 not in vectors:
                reason = next((r for f, r in report.skipped if f == str(self.path_of(rec))), "unreadable image")
                chunk[i] = replace(rec, error=reason)
        return vectors

    def text_vectors(self, records: Iterable[FileRecord]) -> dict[str, np.ndarray]:
        """The word embeddings of these styles by text hash: cached ones, the rest embedded now and cached.

        Used by the sync (new and edited styles) and by queries (styles synced before their words were
        embedded, or whose cache was lost), so every indexed style always has its words' vector.
        """
        texts = {text_hash(r.meta): style_text(r.meta) for r in records}
        vectors = self.cache.get_many(self.text_cache_key, texts)
        missing = [h for h in texts if h not in vectors]
        for start in range(0, len(missing), CHUNK):
            hashes = missing[start : start + CHUNK]
            fresh = dict(zip(hashes, self.embedder.embed_texts([texts[h] for h in hashes]), strict=True))
            self.cache.put_many(self.text_cache_key, fresh)
            vectors.update(fresh)
        return vectors

    def verify(self, records: dict[str, FileRecord]) -> bool:
        """True if the index holds exactly the library's good items and a sample finds itself.

        The count catches lost or stray items; the self-test catches an index that counts its items
        but cannot find them (a deleted HNSW folder, vectors lost by concurrent writers).
        """
        good = [i for i, r in records.items() if r.error is None]
        if self.index.count() != len(good):
            return False
        sample = random.sample(good, min(SELF_TEST_SAMPLES, len(good)))
        cached = self.cache.get_many(self.cache_key, (records[i].sha256 for i in sample))
        return self.index.self_test({i: cached[records[i].sha256] for i in sample if records[i].sha256 in cached})

    def rebuild_index(self, records: dict[str, FileRecord], report: SyncReport | None = None) -> None:
        """Recreate the index from cached embeddings (embedding again only what the cache lost, counted in
        ``report``)."""
        self.index.reset()
        good = [r for r in records.values() if r.error is None]
        report = report if report is not None else SyncReport()
        for start in range(0, len(good), CHUNK * 16):
            chunk = good[start : start + CHUNK * 16]
            vectors = self._vectors_for(chunk, report)
            ok = [r for r in chunk if r.sha256 in vectors]
            if ok:
                self.text_vectors(ok)
                self.index.put([r.item_id for r in ok], np.stack([vectors[r.sha256] for r in ok]),
                               [index_metadata(r) for r in ok])
            if len(ok) < len(chunk):
                self.state.write([r for r in chunk if r.sha256 not in vectors], [])
