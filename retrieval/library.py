"""A style library: image folders, one embedding model, a Chroma index and the caches that keep them honest.

``open_library`` → :class:`StyleLibrary` with ``sync``, ``add_many``, ``query`` and ``entries``; the nodes and
the CLI reach them through the engine's face (``retrieval/__init__.py``), as every other public name.
:class:`StyleLibrary` coordinates; each idea lives in a module of its own: the write lock, the generation
readers check and the repair of a damaged store (:mod:`.library_lock`), adding styles (:mod:`.library_adds`),
ranking styles for a query (:mod:`.ranking`), and syncing the index with the folders (:mod:`.sync`). A damaged
store or SQLite file is moved aside and rebuilt from the folders and the embedding cache
(:meth:`StyleLibrary.heal`); each such event is one warning line, also carried by the next :class:`SyncReport`
(``healed``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..access import AccessPolicy
from ..errors import LibraryError
from .embedder import Embedder, ProgressCallback
from .embedding_cache import EmbeddingCache
from .folder import LibraryRoot, StyleMeta, folders_stamp
from .index import ChromaIndex, Hit, collection_name, is_store_error, is_url
from .library_adds import StyleBatch, writable_root
from .library_lock import StoreLock
from .query import StyleMatch, StyleQuery
from .ranking import consistent, query_vectors, rank, tagged_top_k
from .state import FileRecord, SyncState
from .style_matrices import StyleMatrices
from .sync import LibraryStores, SyncReport

logger = logging.getLogger(__name__)

SHIPPED_LIBRARY = Path(__file__).resolve().parent.parent / "style_library"
"""The public-domain styles shipped with the pack (read-only: pack updates replace this folder)."""
RESCAN_AFTER_S = 10.0
""":meth:`StyleLibrary.sync_if_changed` rescans folders whose listings look unchanged after this long anyway
(a file overwritten in place changes no folder's mtime)."""
MAX_HEALED_NOTES = 20
"""Healing reports kept for the next node to show (each is also logged when it happens)."""


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
        self._lock = StoreLock(self.name, self.store_dir, self.collection, self.stores, self.synced_records)
        self._records_lock = threading.Lock()
        self._folder_stamp: tuple[tuple[str, int, int], ...] | None = None
        self._synced_at = 0.0
        self._healed: list[str] = []
        self._records: dict[str, FileRecord] = {}
        self._good: dict[str, FileRecord] = {}
        """The indexed records (those without an error), rebuilt only when the records change."""
        self._matrices: StyleMatrices | None = None

    # -- syncing -----------------------------------------------------------------------------

    def synced_records(self) -> dict[str, FileRecord]:
        """Every file as last synced by id (read again only when a write bumped the generation).

        The records are read before the generation is marked seen, under a lock: a thread that finds the
        generation seen always gets the records of that generation, never the previous ones.
        """
        with self._records_lock:
            version = self._lock.state_version()
            if version != self._lock.seen_generation:
                records = self.state.records()
                self._set_records(records)
                self._lock.seen_generation = version
            return self._records

    def heal(self, error: BaseException | None = None) -> bool:
        """After ``error``: move whatever is damaged aside (see :meth:`LibraryStores.heal`). True if any was."""
        return self.stores.heal(error)

    def _forget_records(self) -> None:
        """After a store was moved aside: nothing read from it may be trusted, read it all again."""
        self._lock.seen_generation = None
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
        stamp = folders_stamp(self.roots)  # taken before the scan: a change during it is seen by the next check
        report: SyncReport = self._lock.write(self._sync_locked, rebuild, progress)
        self._folder_stamp, self._synced_at = stamp, time.monotonic()
        return report

    def sync_if_changed(self, max_age_s: float = RESCAN_AFTER_S) -> SyncReport | None:
        """Sync when a folder's listing changed since the last sync (or that was over ``max_age_s`` ago), else None.

        The check is one ``stat`` per folder (adding, removing, renaming or rewriting a file through a
        rename changes its folder's mtime), so a caller may run it per request instead of a full scan,
        which reads every sidecar. Another process's syncs are seen through the generation as usual.
        """
        self.refresh_if_changed()
        if folders_stamp(self.roots) == self._folder_stamp and time.monotonic() - self._synced_at < max_age_s:
            return None
        return self.sync()

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
        return writable_root(self.roots, self.name)

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
        batch = StyleBatch.checked(self.write_root(), images, names, tags, filenames, text, access)

        def write() -> tuple[list[str], dict[str, FileRecord]]:
            planned = batch.write()
            self._keep_healed(self.stores.sync(self.synced_records))
            # What this sync wrote, read under the lock: no other writer can have changed it since.
            return planned, self.state.records()

        planned, records = self._lock.write(write)
        return [self._match(Hit(i, 1.0), 1.0, records=records) for i in batch.indexed_ids(planned, records)]

    # -- reading -----------------------------------------------------------------------------

    def refresh_if_changed(self) -> None:
        """Reload state and reopen the store if another process wrote since we last looked."""
        if self._lock.state_version() != self._lock.seen_generation:
            if self._lock.seen_generation is not None and self._lock.changed_elsewhere():
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
        vector, prompt_vec = query_vectors(self.embedder, query)
        ranked, records = rank(query, vector, prompt_vec, search=self._search, records=lambda: self._records,
                               matrices=self._style_matrices)
        return [self._match(r.hit, r.weight, r.z_score, r.percentile, records=records) for r in ranked]

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
            return tagged_top_k(self._style_matrices(), vector, k, tags), records
        try:
            hits, records, good = self.index.query(vector, k), self._records, self._good
        except Exception as exc:
            if not is_store_error(exc) or not self._lock.write(self._heal_and_sync, exc):
                raise
            hits, records, good = self.index.query(vector, k), self._records, self._good
        if consistent(hits, k, good):
            return hits, records
        # The index may be ahead of the records because a writer of this process is between its index
        # and state writes: wait for it, read the records it committed and ask again before calling it damage.
        with self._lock.mutex:
            self.refresh_if_changed()
            hits, records, good = self.index.query(vector, k), self._records, self._good
        if not consistent(hits, k, good):
            self._lock.repair(self.collection)
            self.refresh_if_changed()
            hits, records = self.index.query(vector, k), self._records
        return hits, records

    def _check_not_empty(self) -> None:
        self.refresh_if_changed()
        if not self._good:
            folders = ", ".join(str(r.path) for r in self.roots)
            raise LibraryError(
                f"The style library {self.name!r} has 0 indexed images; add images to {folders} (or with the "
                "Add to Style Library node) and run again."
            )

    def _heal_and_sync(self, error: BaseException) -> bool:
        if not self.heal(error):
            return False
        self._keep_healed(self.stores.sync(self.synced_records))
        return True

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
