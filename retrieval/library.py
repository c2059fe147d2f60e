"""A style library: image folders, one embedding model, a Chroma index and the caches that keep them honest.

``open_library`` → :class:`StyleLibrary` with ``sync``, ``add_many``, ``query`` and ``entries``; the nodes and
the CLI reach them through the engine's face (``retrieval/__init__.py``), as every other public name.
Writes (sync, add, rebuild) take a per-library file lock, because two processes writing one
Chroma store silently lose vectors; readers notice other processes' writes through the
generation counter and reopen the store. A damaged store or SQLite file is moved aside and
rebuilt from the folders and the embedding cache (:meth:`StyleLibrary.heal`); each such event
is one warning line, also carried by the next :class:`SyncReport` (``healed``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from ..access import AccessPolicy
from ..errors import InvalidImageError, LibraryError
from ..imaging import write_image
from .embedder import Embedder, ProgressCallback
from .embedding_cache import EmbeddingCache
from .file_names import control_characters, style_file_stem
from .folder import MANIFEST_NAME, LibraryRoot, StyleMeta, item_id_for, normalise_tags, safe_relpath
from .images import EMBED_SIDE, array_to_pil, open_rgb
from .index import ChromaIndex, Hit, collection_name, is_store_error, is_url
from .query import (
    StyleMatch,
    StyleQuery,
    blend_weights,
    combine,
    exact_top_k,
    relative_standing,
    top_k_of_scores,
)
from .state import FileRecord, SyncState
from .style_labels import checked_name, checked_tags
from .style_matrices import StyleMatrices
from .sync import LibraryStores, SyncReport

logger = logging.getLogger(__name__)

SHIPPED_LIBRARY = Path(__file__).resolve().parent.parent / "style_library"
"""The public-domain styles shipped with the pack (read-only: pack updates replace this folder)."""
LOCK_TIMEOUT_S = 300.0
"""How long a writer waits for another process's sync before giving up with an error."""
RESCAN_AFTER_S = 10.0
""":meth:`StyleLibrary.sync_if_changed` rescans folders whose listings look unchanged after this long anyway
(a file overwritten in place changes no folder's mtime)."""
MAX_HEALED_NOTES = 20
"""Healing reports kept for the next node to show (each is also logged when it happens)."""


_written_here: dict[tuple[str, str], int] = {}
"""The last generation this process wrote, per (state file, collection): such a change needs no store reopen."""
_written_lock = threading.Lock()


def default_roots(user_styles: Path) -> list[LibraryRoot]:
    """The default library: the shipped styles plus the user's own folder, where additions go."""
    return [LibraryRoot(SHIPPED_LIBRARY, "builtin", writable=False), LibraryRoot(user_styles, "user", writable=True)]


class StyleLibrary:
    """One library indexed with one embedding model. Build it with :func:`open_library`."""

    def __init__(
        self,
        roots: Sequence[LibraryRoot],
        embedder: Embedder,
        store_dir: Path,
        *,
        chroma_url: str | None = None,
        name: str | None = None,
    ) -> None:
        if not roots:
            raise LibraryError("A style library needs at least one folder; give the folder of your style images.")
        self.roots = list(roots)
        self.embedder = embedder
        self.store_dir = Path(store_dir)
        if self.store_dir.exists() and not self.store_dir.is_dir():
            raise LibraryError(
                f"The style library store {self.store_dir} is a file, not a folder; give a folder for the index "
                "(it is created if missing), or move that file elsewhere."
            )
        self.name = name or self.roots[-1].path.name or "styles"
        identity = "|".join(str(r.path.resolve()) for r in self.roots)
        key = hashlib.sha256(identity.encode()).hexdigest()[:10]
        # One collection per library, whatever the model: the model key and dimension are recorded in
        # its metadata and checked on open (LibraryModelMismatchError), and rebuild_index replaces it.
        # Per-model copies of this library's index in the same store (this name + "-<model>") are dropped by the
        # first sync under this name and by rebuilds.
        self.collection = collection_name("styles", self.name[:60], key)
        location: str | Path = chroma_url if chroma_url else self.store_dir / "chroma"
        if chroma_url and not is_url(chroma_url):
            raise LibraryError(f"The Chroma server URL {chroma_url!r} must start with http:// or https://.")
        self.index = ChromaIndex(location, self.collection, embedder.model_key, embedder.dim)
        self.cache = EmbeddingCache(self.store_dir / "embeddings.sqlite3")
        self.state = SyncState(self.store_dir / "state.sqlite3", self.collection)
        self.stores = LibraryStores(
            self.roots, embedder, self.index, self.cache, self.state, name=self.name,
            on_healed=self._forget_records,
        )
        self._lock = FileLock(str(self.store_dir / "locks" / f"{self.collection}.lock"))
        self._mutex = threading.RLock()
        """This process's writers one at a time; a reader that sees the index ahead of the records waits here."""
        self._records_lock = threading.Lock()
        self._folder_stamp: tuple[tuple[str, int, int], ...] | None = None
        self._synced_at = 0.0
        self._healed: list[str] = []
        self._seen_generation: tuple[int, int] | None = None
        """(state file epoch, generation) last read: a new state file at the same generation is still new."""
        self._records: dict[str, FileRecord] = {}
        self._good: dict[str, FileRecord] = {}
        """The indexed records (those without an error), rebuilt only when the records change."""
        self._matrices: StyleMatrices | None = None

    # -- writing -----------------------------------------------------------------------------

    def _locked(self) -> FileLock:
        (self.store_dir / "locks").mkdir(parents=True, exist_ok=True)
        return self._lock

    def _write(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            with self._mutex, self._locked().acquire(timeout=LOCK_TIMEOUT_S):
                if self._changed_elsewhere():
                    self.index.refresh()  # another process wrote: write on top of its vectors, not a stale copy
                try:
                    return fn(*args, **kwargs)
                finally:
                    with _written_lock:
                        _written_here[self._state_key] = self.state.generation()
                    self._after_write()
        except Timeout as exc:
            raise LibraryError(
                f"Another process has been writing the style library {self.name!r} for {LOCK_TIMEOUT_S:.0f} s "
                f"(lock {self._lock.lock_file}); wait for it to finish, or stop the other ComfyUI/CLI using it."
            ) from exc

    def _after_write(self) -> None:
        self.synced_records()

    @property
    def _state_key(self) -> tuple[str, str]:
        return str(self.state.path), self.collection

    def _changed_elsewhere(self) -> bool:
        """Whether another process wrote since this library last read: only then must the store be reopened.

        A generation written by this process (this library or another object on the same collection) was
        written through the shared client, which already holds those vectors.
        """
        version = self._state_version()
        if version == self._seen_generation:
            return False
        if self._seen_generation is None or version[0] != self._seen_generation[0]:
            return True  # a new state file: the store may have been replaced with it
        with _written_lock:
            return _written_here.get(self._state_key) != version[1]

    def synced_records(self) -> dict[str, FileRecord]:
        """Every file as last synced by id (read again only when a write bumped the generation).

        The records are read before the generation is marked seen, under a lock: a thread that finds the
        generation seen always gets the records of that generation, never the previous ones.
        """
        with self._records_lock:
            version = self._state_version()
            if version != self._seen_generation:
                records = self.state.records()
                self._set_records(records)
                self._seen_generation = version
            return self._records

    def _state_version(self) -> tuple[int, int]:
        """(state file epoch, generation); a damaged state file found here is moved aside and started afresh."""
        try:
            generation = self.state.generation()
        except sqlite3.DatabaseError as exc:
            if not self.heal(exc):
                raise
            generation = self.state.generation()
        return self.state.epoch, generation

    def heal(self, error: BaseException | None = None) -> bool:
        """After ``error``: move whatever is damaged aside (see :meth:`LibraryStores.heal`). True if any was."""
        return self.stores.heal(error)

    def _forget_records(self) -> None:
        """After a store was moved aside: nothing read from it may be trusted, read it all again."""
        self._seen_generation = None
        self._set_records({})

    def _keep_healed(self, report: SyncReport) -> SyncReport:
        self._healed = [*self._healed, *report.healed][-MAX_HEALED_NOTES:]
        return report

    def take_healed(self) -> list[str]:
        """The reports of damaged stores healed since the last call, for a node's UI (each was logged already)."""
        notes, self._healed = self._healed, []
        return notes

    def _set_records(self, records: dict[str, FileRecord]) -> None:
        self._records = records
        self._good = {i: r for i, r in records.items() if r.error is None}
        self._matrices = None

    def sync(self, *, rebuild: bool = False, progress: ProgressCallback | None = None) -> SyncReport:
        """Bring the index in line with the folders (see :mod:`.sync`); ``rebuild`` re-creates it from scratch.

        A rebuild also replaces an index built with another embedding model, and (like the first sync of
        a library) drops the store's per-model copies of this library's index (``<collection>-<model>``).
        """
        if rebuild:
            self.index.open(replace_other_model=True)
        stamp = self._folders_stamp()  # taken before the scan: a change during it is seen by the next check
        report: SyncReport = self._write(self._sync_locked, rebuild, progress)
        self._folder_stamp, self._synced_at = stamp, time.monotonic()
        return report

    def sync_if_changed(self, max_age_s: float = RESCAN_AFTER_S) -> SyncReport | None:
        """Sync when a folder's listing changed since the last sync (or that was over ``max_age_s`` ago), else None.

        The check is one ``stat`` per folder (adding, removing, renaming or rewriting a file through a
        rename changes its folder's mtime), so a caller may run it per request instead of a full scan,
        which reads every sidecar. Another process's syncs are seen through the generation as usual.
        """
        self.refresh_if_changed()
        if self._folders_stamp() == self._folder_stamp and time.monotonic() - self._synced_at < max_age_s:
            return None
        return self.sync()

    def _folders_stamp(self) -> tuple[tuple[str, int, int], ...]:
        """(path, mtime_ns, inode) of every folder of the library, hidden ones skipped as the scan skips them."""
        stamp: list[tuple[str, int, int]] = []
        stack = [str(r.path) for r in self.roots]
        while stack:
            folder = stack.pop()
            try:
                info = os.stat(folder)
                entries = list(os.scandir(folder))
            except OSError:
                stamp.append((folder, -1, -1))
                continue
            stamp.append((folder, info.st_mtime_ns, info.st_ino))
            for entry in entries:
                try:
                    if not entry.name.startswith(".") and entry.is_dir():
                        stack.append(entry.path)
                except OSError:
                    continue
        return tuple(sorted(stamp))

    def _sync_locked(self, rebuild: bool, progress: ProgressCallback | None) -> SyncReport:
        if rebuild or self.state.generation() == 0:
            try:
                dropped = self.index.drop_others(prefix=f"{self.collection}-")
            except Exception as exc:
                if not is_store_error(exc):
                    raise
                dropped = []  # a tidy-up only: a damaged store is found and healed by the sync itself
            if dropped:
                self.state.forget(dropped)
                logger.info("Style library %s: dropped its per-model index collections: %s.",
                            self.name, ", ".join(dropped))
        return self._keep_healed(self.stores.sync(self.synced_records, rebuild=rebuild, progress=progress))

    def add(
        self,
        image: np.ndarray | Path,
        name: str,
        tags: Sequence[str] | str = (),
        *,
        filename: str | None = None,
        text: dict[str, str] | None = None,
        access: AccessPolicy | None = None,
    ) -> StyleMatch:
        """Add one style (an image array or an image file); see :meth:`add_many`."""
        return self.add_many([image], [name], tags, filenames=[filename], text=text, access=access)[0]

    def write_root(self) -> LibraryRoot:
        """The folder new styles go to: the last writable root.

        Raises:
            LibraryError: every folder of the library is read-only (the shipped one, say).
        """
        root = next((r for r in reversed(self.roots) if r.writable), None)
        if root is None:
            raise LibraryError(
                f"The style library {self.name!r} has no writable folder ({', '.join(str(r.path) for r in self.roots)} "
                "are read-only); load it with a folder of your own to add styles."
            )
        return root

    def add_many(
        self,
        images: Sequence[np.ndarray | Path],
        names: Sequence[str],
        tags: Sequence[str] | str = (),
        *,
        filenames: Sequence[str | None] | None = None,
        text: dict[str, str] | None = None,
        access: AccessPolicy | None = None,
    ) -> list[StyleMatch]:
        """Add styles to the writable folder, each with a sidecar (name, tags, ``text``), and index them.

        Every image is checked before anything is written, and the folder is synced once for the
        whole batch (a sync of a big library costs far more than writing a few files). Without a
        ``filename`` a style gets a free file name from its name (``my_style.png``, ``my_style_2.png``);
        a given ``filename`` is written as is, replacing a file of that name. A generated name never
        replaces anything: neither the image nor its sidecar may exist yet (so a style named "library"
        cannot overwrite the manifest). With ``access``, the folder and every file are checked against
        that policy first (a node passes ComfyUI's, read at run time, since the library may be older).

        Raises:
            LibraryError: no writable folder, a filename outside it, an empty name or one with control
                characters, a name or tags beyond :mod:`.style_labels`' limits, or unequal lengths.
            AccessDeniedError: ``access`` does not let the folder or a file be written.
            InvalidImageError: an image cannot be read, or could not be indexed.
        """
        root = self.write_root()
        if access is not None:
            access.writable(root.path, input_name="folder to add styles to", base=root.path)
        wanted = list(filenames) if filenames is not None else [None] * len(images)
        if not len(images) == len(names) == len(wanted):
            raise LibraryError(
                f"add_many got {len(images)} images, {len(names)} names and {len(wanted)} filenames; give one each."
            )
        names = [checked_name(name) for name in names]
        tags = checked_tags(list(tags) if not isinstance(tags, str) else tags)
        suffixes = []
        for image in images:
            if isinstance(image, Path):
                open_rgb(image, EMBED_SIDE)  # refuse unreadable files before copying anything in
                suffixes.append(image.suffix.lower())
            else:
                array_to_pil(image)
                suffixes.append(".png")
        relpaths = [_given_relpath(root.path, f) if f else None for f in wanted]

        def write() -> tuple[list[str], dict[str, FileRecord]]:
            root.path.mkdir(parents=True, exist_ok=True)
            planned: list[str] = []
            taken: set[str] = set()  # names planned in this batch are as taken as those on disk
            for name, suffix, relpath in zip(names, suffixes, relpaths, strict=True):
                if relpath is None:
                    relpath = _free_relpath(root.path, style_file_stem(name), suffix, taken)
                taken |= {relpath, _sidecar_relpath(relpath)}
                if access is not None:  # the resolved files, before any of the batch is written
                    for path in (relpath, _sidecar_relpath(relpath)):
                        access.writable(root.path / path, input_name=f"file for the style {name!r}",
                                        base=root.path)
                planned.append(relpath)
            for image, name, relpath in zip(images, names, planned, strict=True):
                target = root.path / relpath
                target.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(image, Path):
                    shutil.copyfile(image, target)
                else:
                    write_image(target, image)
                sidecar = {"name": name, "tags": list(tags), **(text or {})}
                (root.path / _sidecar_relpath(relpath)).write_text(
                    json.dumps(sidecar, ensure_ascii=False, indent=2), encoding="utf-8"
                )
            self._keep_healed(self.stores.sync(self.synced_records))
            # What this sync wrote, read under the lock: no other writer can have changed it since.
            return planned, self.state.records()

        planned, records = self._write(write)
        item_ids = [item_id_for(root, relpath) for relpath in planned]
        failed = [f"{i} ({records[i].error if i in records else 'not found after sync'})" for i in item_ids
                  if i not in records or records[i].error is not None]
        if failed:
            raise InvalidImageError(f"New styles could not be indexed: {'; '.join(failed)}.")
        return [self._match(Hit(i, 1.0), 1.0, records=records) for i in item_ids]

    # -- reading -----------------------------------------------------------------------------

    def refresh_if_changed(self) -> None:
        """Reload state and reopen the store if another process wrote since we last looked."""
        if self._state_version() != self._seen_generation:
            if self._seen_generation is not None and self._changed_elsewhere():
                self.index.refresh()
            self.synced_records()

    def entries(self) -> list[FileRecord]:
        """Every file of the library as last synced (skipped ones carry their ``error``), by id."""
        self.refresh_if_changed()
        return [self._records[i] for i in sorted(self._records)]

    def path_of(self, record: FileRecord) -> Path:
        return self.stores.path_of(record)

    def query(self, query: StyleQuery) -> list[StyleMatch]:
        """The ``k`` best styles for a text, an image or both, best first, with scores and blend weights.

        A style's score is its image's cosine with the query, mixed with the cosine of the prompt and the
        style's words (name, tags, description) by ``query.text_weight``; at 0 (and for a query without a
        prompt) the ranking is the image index's alone. Each match also
        carries its standing among all the library's styles for this query (z-score, rank percentile).

        Raises:
            LibraryError: the library has no indexed styles, or none carries the asked tags.
        """
        self._check_not_empty()
        vector, prompt_vec = self._query_vectors(query)
        words = query.applied_text_weight
        if words == 0 or prompt_vec is None:
            hits, records = self._search(vector, query.k, query.tags)
            matrices = self._style_matrices()
            every = matrices.scores(vector)
        else:
            records = self._records  # one generation's records and matrices for the whole answer
            matrices = self._style_matrices()
            every = matrices.scores(vector, prompt_vec, words)
            rows = matrices.tagged(frozenset(query.tags))[2] if query.tags else None
            hits = top_k_of_scores(every, matrices.ids, query.k, rows)
        hits = [h for h in hits if h.item_id in records]
        standing = relative_standing(every, [matrices.rows.get(h.item_id, -1) for h in hits])
        weights = blend_weights([h.score for h in hits], query.temperature)
        return [self._match(h, w, z, p, records=records)
                for h, w, (z, p) in zip(hits, weights, standing, strict=True)]

    def search(self, vector: np.ndarray, k: int, tags: Sequence[str] = ()) -> list[Hit]:
        """The ``k`` items nearest a unit query vector in this library's embedding space, best first.

        Filtered searches (``tags``) are answered exactly from the cached embeddings: Chroma's own
        filtered HNSW search loses recall. An unfiltered answer with fewer results than the library
        holds means a damaged index: it is verified, rebuilt from the cache and asked again.

        Raises:
            LibraryError: the library has no indexed styles, or none carries all of ``tags``.
        """
        self._check_not_empty()
        return self._search(vector, k, tags)[0]

    def _search(self, vector: np.ndarray, k: int, tags: Sequence[str]) -> tuple[list[Hit], dict[str, FileRecord]]:
        """The hits, and the records (one generation's) they were checked against."""
        if tags:
            records = self._records
            matrix, ids, _ = self._style_matrices().tagged(frozenset(normalise_tags(list(tags))))
            return exact_top_k(matrix, ids, vector, k), records
        try:
            hits, records, good = self.index.query(vector, k), self._records, self._good
        except Exception as exc:
            if not is_store_error(exc) or not self._write(self._heal_and_sync, exc):
                raise
            hits, records, good = self.index.query(vector, k), self._records, self._good
        if self._consistent(hits, k, good):
            return hits, records
        # The index may be ahead of the records because a writer of this process is between its index
        # and state writes: wait for it, read the records it committed and ask again before calling it damage.
        with self._mutex:
            self.refresh_if_changed()
            hits, records, good = self.index.query(vector, k), self._records, self._good
        if not self._consistent(hits, k, good):
            self._repair()
            self.refresh_if_changed()
            hits, records = self.index.query(vector, k), self._records
        return hits, records

    @staticmethod
    def _consistent(hits: list[Hit], k: int, good: dict[str, FileRecord]) -> bool:
        return len(hits) >= min(k, len(good)) and all(h.item_id in good for h in hits)

    def _check_not_empty(self) -> None:
        self.refresh_if_changed()
        if not self._good:
            folders = ", ".join(str(r.path) for r in self.roots)
            raise LibraryError(
                f"The style library {self.name!r} has 0 indexed images; add images to {folders} (or with the "
                "Add to Style Library node) and run again."
            )

    def _query_vectors(self, query: StyleQuery) -> tuple[np.ndarray, np.ndarray | None]:
        """The query vector the images are compared with, and the prompt's own (for the words), if embedded."""
        share = query.prompt_share
        needs_prompt = share > 0 or query.applied_text_weight > 0
        text_vec = self.embedder.embed_texts([query.text])[0] if needs_prompt else None
        image_vec = None
        if query.image is not None and share < 1:
            image_vec = self.embedder.embed_images([array_to_pil(query.image)])[0]
        return combine(text_vec, image_vec, share), text_vec

    def _heal_and_sync(self, error: BaseException) -> bool:
        if not self.heal(error):
            return False
        self._keep_healed(self.stores.sync(self.synced_records))
        return True

    def _repair(self) -> None:
        def repair() -> None:
            records = self.state.records()
            if not self.stores.verify(records):
                logger.warning("Style index %s returned too few results; rebuilding it.", self.collection)
                self.stores.rebuild_index(records)
                self.state.bump()

        self._write(repair)

    def _style_matrices(self) -> StyleMatrices:
        """The good styles' embeddings for exact search and scores of all styles (one object per generation)."""
        if self._matrices is None:
            self._matrices = StyleMatrices(self.stores, self._good)
        return self._matrices

    def _match(self, hit: Hit, weight: float, z_score: float = 0.0, percentile: float = 100.0, *,
               records: dict[str, FileRecord]) -> StyleMatch:
        """A match built from ``records``, the snapshot the hit was checked against (never a later read)."""
        record = records[hit.item_id]
        return StyleMatch(
            item_id=hit.item_id, path=self.path_of(record), meta=record.meta, score=hit.score, weight=weight,
            z_score=z_score, percentile=percentile, record=record,
        )

    def close(self) -> None:
        self.cache.close()
        self.state.close()


def _given_relpath(root: Path, filename: str) -> str:
    """A caller's file name for a new style, inside ``root`` and not the manifest's sidecar slot."""
    if control_characters(filename):
        raise LibraryError(
            f"The file name {filename!r} contains control characters ({', '.join(control_characters(filename))}); "
            "use a name like 'my_style.png'."
        )
    relpath = safe_relpath(root, filename)
    if _sidecar_relpath(relpath) == MANIFEST_NAME:
        raise LibraryError(
            f"The file name {filename!r} would put its sidecar on the library manifest {MANIFEST_NAME}; "
            "choose another name."
        )
    return relpath


def _sidecar_relpath(relpath: str) -> str:
    return PurePosixPath(relpath).with_suffix(".json").as_posix()


def _free_relpath(folder: Path, stem: str, suffix: str, taken: set[str]) -> str:
    """``stem + suffix`` or ``stem_2 + suffix``...: the first whose image and sidecar are both free.

    ``lexists``, so a dangling symlink counts as taken: writing through it could land anywhere.
    """
    relpath, n = f"{stem}{suffix}", 2
    while any(p in taken or os.path.lexists(folder / p) for p in (relpath, _sidecar_relpath(relpath))):
        relpath, n = f"{stem}_{n}{suffix}", n + 1
    return relpath


def open_library(
    roots: Sequence[LibraryRoot],
    embedder: Embedder,
    store_dir: Path,
    *,
    chroma_url: str | None = None,
    name: str | None = None,
    rebuild: bool = False,
    progress: ProgressCallback | None = None,
) -> tuple[StyleLibrary, SyncReport]:
    """Open (creating if needed) and sync a library; the returned report says what changed.

    Raises:
        LibraryModelMismatchError: the index was built with another model (pass ``rebuild=True`` to replace it).
        LibraryError: a folder that is not a folder, or a lock held too long by another process.
    """
    for root in roots:
        if root.path.exists() and not root.path.is_dir():
            raise LibraryError(f"The style library folder {root.path} is a file; give a folder of images.")
        if not root.writable and not root.path.is_dir():
            raise LibraryError(f"The style library folder {root.path} does not exist; check the path.")
    library = StyleLibrary(roots, embedder, store_dir, chroma_url=chroma_url, name=name)
    if not rebuild:
        library.index.open()
    report = library.sync(rebuild=rebuild, progress=progress)
    return library, report


__all__ = ["LibraryRoot", "StyleLibrary", "StyleMeta", "default_roots", "open_library", "SHIPPED_LIBRARY"]
