"""Bringing a library's index in line with its folder, by content hash.

Runs under the library's writer lock. Files are matched to the last sync by ``stat`` first and
sha256 only when size or mtime moved, so an unchanged library costs one ``scandir`` and no CLIP
call. Embeddings come from the cache whenever the content is known (renames, re-adds, rebuilds).
Unreadable images are skipped and reported, never fatal, and are not retried until they change.
A sync that fails on a damaged store or SQLite file heals it (moves it aside) and runs once more,
so the index is rebuilt from the folders and the cached embeddings; ``SyncReport.healed`` says so.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidImageError
from .embedder import ProgressCallback
from .folder import FileInfo, LibraryRoot, hash_if_changed, iter_image_files, read_metadata
from .images import EMBED_SIDE, open_rgb
from .state import FileRecord

if TYPE_CHECKING:
    from .library import StyleLibrary

logger = logging.getLogger(__name__)

CHUNK = 256
"""Files embedded and committed together: an interrupted sync of a big library keeps what it did."""
SELF_TEST_SAMPLES = 4


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


def sync(lib: StyleLibrary, *, rebuild: bool = False, progress: ProgressCallback | None = None) -> SyncReport:
    """Sync ``lib``'s index with its folders (caller holds the writer lock); see the module docstring.

    An error that :meth:`StyleLibrary.heal` traces to a damaged file is healed and the sync run
    once more; any other error is raised as it came.
    """
    try:
        report = _sync(lib, rebuild=rebuild, progress=progress)
    except Exception as exc:
        if not lib.heal(exc):
            raise
        report = _sync(lib, rebuild=rebuild, progress=progress)
    if lib.index.notes:
        lib.state.bump_all()  # a new index store: the readers of every library in it must reopen it
    report.healed = lib.take_notes()
    return report


def _sync(lib: StyleLibrary, *, rebuild: bool, progress: ProgressCallback | None) -> SyncReport:
    report = SyncReport()
    stored = lib.synced_records()
    old = {} if rebuild else stored
    new = scan(lib.roots, old, report)

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
    report.skipped.extend((str(lib.path_of(r)), r.error or "") for r in unchanged_errors)
    renamed_from = {old_id for old_id, _ in report.renamed}
    report.removed = [i for i in removed if i not in renamed_from]

    if rebuild:
        lib.index.reset()
    else:
        lib.index.delete(removed)
    # A rebuild re-reads every file, but the rows of files deleted since the last sync must go too, or
    # the index would be rebuilt with their cached vectors and a deleted style could still be retrieved.
    lib.state.write(state_only, [i for i in stored if i not in new])

    total = len(to_index)
    for start in range(0, total, CHUNK):
        chunk = to_index[start : start + CHUNK]
        vectors = _vectors_for(lib, chunk, report)
        good = [r for r in chunk if r.sha256 in vectors]
        bad = [r for r in chunk if r.sha256 not in vectors]
        lib.index.delete([r.item_id for r in bad])
        if good:
            ids = [r.item_id for r in good]
            lib.index.put(ids, np.stack([vectors[r.sha256] for r in good]), [index_metadata(r) for r in good])
        lib.state.write(good + bad, [])
        if progress is not None:
            progress(min(start + CHUNK, total), total)

    records = lib.state.records() if to_index or state_only or removed or rebuild else stored
    report.total = sum(1 for r in records.values() if r.error is None)
    if lib.cache.moved_aside:
        # A new, empty cache: embed the library again, so the cache holds every indexed vector (rebuilds need it).
        rebuild_index(lib, records, report)
        lib.cache.moved_aside = False
        report.rebuilt = True
    elif not verify(lib, records):
        # After a new store was started its rebuild is expected (and already said once): no second warning.
        logger.log(logging.INFO if lib.index.notes else logging.WARNING,
                   "Style index %s does not match its library; rebuilding it from cached embeddings.", lib.name)
        rebuild_index(lib, records, report)
        report.rebuilt = True
    changed = report.rebuilt or to_index or state_only or removed
    report.generation = lib.state.bump() if changed else lib.state.generation()
    return report


def _vectors_for(lib: StyleLibrary, chunk: list[FileRecord], report: SyncReport) -> dict[str, np.ndarray]:
    """Vectors for the chunk's contents: cached ones, plus new embeddings; failures marked on the records."""
    key = lib.cache_key
    vectors = lib.cache.get_many(key, (r.sha256 for r in chunk))
    missing = {r.sha256: r for r in chunk if r.sha256 not in vectors}
    images, hashes = [], []
    for sha, rec in missing.items():
        try:
            images.append(open_rgb(lib.path_of(rec), EMBED_SIDE))
            hashes.append(sha)
        except InvalidImageError as exc:
            report.skipped.append((str(lib.path_of(rec)), str(exc)))
    if images:
        embedded = lib.embedder.embed_images(images)
        fresh = dict(zip(hashes, embedded, strict=True))
        lib.cache.put_many(key, fresh)
        vectors.update(fresh)
        report.embedded += len(images)
    for i, rec in enumerate(chunk):
        if rec.sha256 not in vectors:
            reason = next((r for f, r in report.skipped if f == str(lib.path_of(rec))), "unreadable image")
            chunk[i] = replace(rec, error=reason)
    return vectors


def verify(lib: StyleLibrary, records: dict[str, FileRecord]) -> bool:
    """True if the index holds exactly the library's good items and a sample finds itself.

    The count catches lost or stray items; the self-test catches an index that counts its items
    but cannot find them (a deleted HNSW folder, vectors lost by concurrent writers).
    """
    good = [i for i, r in records.items() if r.error is None]
    if lib.index.count() != len(good):
        return False
    sample = random.sample(good, min(SELF_TEST_SAMPLES, len(good)))
    cached = lib.cache.get_many(lib.cache_key, (records[i].sha256 for i in sample))
    return lib.index.self_test({i: cached[records[i].sha256] for i in sample if records[i].sha256 in cached})


def rebuild_index(lib: StyleLibrary, records: dict[str, FileRecord], report: SyncReport | None = None) -> None:
    """Recreate the index from cached embeddings (embedding again only what the cache lost, counted in ``report``)."""
    lib.index.reset()
    good = [r for r in records.values() if r.error is None]
    report = report if report is not None else SyncReport()
    for start in range(0, len(good), CHUNK * 16):
        chunk = good[start : start + CHUNK * 16]
        vectors = _vectors_for(lib, chunk, report)
        ok = [r for r in chunk if r.sha256 in vectors]
        if ok:
            lib.index.put([r.item_id for r in ok], np.stack([vectors[r.sha256] for r in ok]),
                          [index_metadata(r) for r in ok])
        if len(ok) < len(chunk):
            lib.state.write([r for r in chunk if r.sha256 not in vectors], [])

