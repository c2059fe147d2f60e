"""The vector index of one library: a Chroma collection behind a small class.

Only this module talks to Chroma, so its traps are handled in one place:
- ``embedding_function=None`` on every create/get: Chroma's default downloads a model;
- one collection per library, whatever the model: the model key and dimension live in the collection
  metadata and are checked on open, so a library indexed with another model is refused
  (:class:`LibraryModelMismatchError`) until it is rebuilt, which replaces the collection;
- ``add`` of an existing id is a silent no-op in Chroma, so :meth:`ChromaIndex.put` deletes first;
- batches are cut below Chroma's maximum batch size;
- a process that did not write must reopen its client to see another process's vectors
  (:meth:`ChromaIndex.refresh`); the caller serialises writers with a file lock;
- one client per location is shared by every index (and thread) of the process, and :class:`_Gate`
  owns its lifetime: each call holds the gate shared, and the client is closed or reopened only
  with the gate held exclusively, so no thread's call runs on a client another thread closed;
- every call to a store server is bounded in time (:mod:`.chroma_http`): a stalled server is an
  error naming it, never a hung worker;
- :meth:`ChromaIndex.self_test` finds the silent failures (lost HNSW folder, lost vectors) that
  Chroma itself reports as success, so the caller can rebuild from its own embeddings;
- a damaged store (``chroma.sqlite3`` truncated, emptied or overwritten; HNSW files that cannot be
  read) is moved aside to ``chroma.damaged-<UTC time>`` and a new one started, under the store's
  open lock, so the caller can rebuild it from the folder and its own embeddings. A store that is
  merely locked or busy is never moved (see :mod:`.sqlite_files` for what counts as damage).
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import numpy as np

from ..errors import LibraryError, LibraryModelMismatchError
from .chroma_http import bounded_call, http_client
from .sqlite_files import damage, move_aside, open_lock

logger = logging.getLogger(__name__)

EF_SEARCH = 600
"""HNSW search breadth. CLIP text→image queries are out of distribution (the modality gap) and need a wide
search: on 100k CLIP-like vectors (bench/retrieval.py, 1,000 text-like queries) recall@5 is 0.979 at 400
and 0.988 at 600 (~3.9 ms on 2 cores)."""
EF_CONSTRUCTION = 200
MAX_NEIGHBORS = 20
"""Graph degree. Measured at 100k: 16, 20 and 24 reach recall@5 ≈ 0.985 in about the same time (3.4-3.7 ms);
12 needs ef 1000 for it and 32/48 are slower per unit of recall and take 1.5-3x as long to build."""
HNSW_BATCH_SIZE = 100
HNSW_SYNC_THRESHOLD = 1000
"""Chroma's defaults, named so tests can make the index flush to its HNSW files after a few items."""
BATCH = 5000
"""Vectors per Chroma call, under its maximum batch size of 5,461."""
SELF_TEST_TOLERANCE = 1e-3
"""A stored vector must come back at cosine distance below this (exact duplicates tie at 0)."""

CHROMA_DB = "chroma.sqlite3"
HNSW_DAMAGE_SIGNS = ("hnsw segment reader", "error loading hnsw", "error deserializing")
"""Words of Chroma's errors for HNSW files it cannot read (a damaged store, if a fresh client fails the same way)."""

_clients: dict[str, Any] = {}
_epochs: dict[str, int] = {}
"""Bumped when a location's client is reopened, so every index on it re-gets its collection."""
_identities: dict[str, tuple[int, int]] = {}
"""The store folder each client opened, so a store another process already replaced is not judged by its errors."""
_clients_lock = threading.RLock()

T = TypeVar("T")


class _Gate:
    """Who may use a location's client now: any number of calls at once, or one thread closing/reopening it.

    Shared holds are re-entrant per thread, and a thread holding the gate exclusively may also make
    calls; a waiting exclusive holder stops new calls from starting, so a reopen is not starved.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._users = 0
        self._owner: int | None = None
        self._waiting = 0
        self._local = threading.local()

    @contextmanager
    def shared(self) -> Iterator[None]:
        me, depth = threading.get_ident(), getattr(self._local, "depth", 0)
        counted = depth == 0 and self._owner != me
        if counted:
            with self._cond:
                while self._owner is not None or self._waiting:
                    self._cond.wait()
                self._users += 1
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if counted:
                with self._cond:
                    self._users -= 1
                    self._cond.notify_all()

    def inside(self) -> bool:
        """Whether this thread is inside a call (holds the gate shared and not exclusively)."""
        return bool(getattr(self._local, "depth", 0)) and self._owner != threading.get_ident()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._owner == me:
            yield
            return
        if getattr(self._local, "depth", 0):
            raise RuntimeError("A Chroma client cannot be reopened by a thread inside a call on it; this is a bug.")
        with self._cond:
            self._waiting += 1
            while self._owner is not None or self._users:
                self._cond.wait()
            self._waiting -= 1
            self._owner = me
        try:
            yield
        finally:
            with self._cond:
                self._owner = None
                self._cond.notify_all()


_gates: dict[str, _Gate] = {}


def _gate(location: str | Path) -> _Gate:
    with _clients_lock:
        return _gates.setdefault(str(location), _Gate())


def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(("http://", "https://"))


def collection_name(*parts: str) -> str:
    """A valid Chroma collection name (3-512 chars of ``[a-zA-Z0-9._-]``, alphanumeric ends) from ``parts``."""
    raw = "-".join(re.sub(r"[^a-zA-Z0-9._-]+", "-", p).strip("-._") for p in parts if p)
    return raw[:200].strip("-._").lower() or "styles-default"


def _client(location: str | Path, fresh: bool = False, notes: list[str] | None = None) -> Any:
    """One Chroma client per location, shared by every index in the process; ``fresh`` reopens it.

    A local store found damaged before Chroma opens it is moved aside (its one-line report
    appended to ``notes`` and logged) and a new one created in its place.
    """
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    key = str(location)
    if fresh:
        with _gate(key).exclusive(), _clients_lock:
            _close_client(key)
    with _clients_lock:
        if key not in _clients:
            if is_url(location):
                url = urlparse(str(location))
                _clients[key] = http_client(
                    key, url.hostname or "127.0.0.1", url.port or (443 if url.scheme == "https" else 8000),
                    url.scheme == "https", settings,
                )
            else:
                path = Path(location)
                if path.exists() and not path.is_dir():
                    raise LibraryError(
                        f"The style index folder {path} is a file, not a folder; move that file elsewhere, or "
                        "choose another store folder."
                    )
                path.mkdir(parents=True, exist_ok=True)
                # Two processes creating a client on one new store race on its SQLite migrations and one
                # fails with "database is locked" (leaving a broken system in Chroma's cache): take turns.
                with open_lock(path):
                    reason = damage(path / CHROMA_DB)
                    if reason is not None:
                        _move_store_aside(path, f"{CHROMA_DB}: {reason}", notes)
                        path.mkdir()
                    _clients[key] = chromadb.PersistentClient(path=str(path), settings=settings)
                    _identities[key] = _identity(path)
        return _clients[key]


def is_store_error(exc: BaseException) -> bool:
    """True for errors that may come from a damaged store or SQLite file (Chroma's own, SQLite's), worth a check."""
    from chromadb.errors import ChromaError

    return isinstance(exc, ChromaError | sqlite3.DatabaseError)


def _close_client(key: str) -> None:
    """Let go of a local store's files; every index on it reopens.

    The caller holds the location's gate exclusively (no call is running on the client) and ``_clients_lock``.
    """
    if key in _clients and not is_url(key):
        _clients.pop(key).close()
        _epochs[key] = _epochs.get(key, 0) + 1


def _identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_dev, stat.st_ino


def _move_store_aside(path: Path, reason: str, notes: list[str] | None) -> None:
    moved = move_aside(path)
    note = (f"The style index store {path} was damaged ({reason}); moved it to {moved} and rebuilt the index "
            "from the library folder and the embedding cache.")
    logger.warning(note)
    if notes is not None:
        notes.append(note)


def _delete_ids(collection: Any, *, ids: list[str]) -> None:
    collection.delete(ids=ids)


@dataclass(frozen=True)
class Hit:
    item_id: str
    score: float
    """Cosine similarity (1 − Chroma's cosine distance)."""


class ChromaIndex:
    """A cosine HNSW collection for one (library, model), embedded on disk or on a Chroma server."""

    def __init__(self, location: str | Path, name: str, model_key: str, dim: int) -> None:
        self.location = location
        self.name = name
        self.model_key = model_key
        self.dim = dim
        self._opened: tuple[Any, int] = (None, -1)
        """(collection, epoch of the client it came from), replaced as one value so threads never mix two."""
        self.notes: list[str] = []
        """One line per damaged store this index moved aside (for the sync report)."""

    def open(self, *, replace_other_model: bool = False) -> ChromaIndex:
        """Get or create the collection and check it was built with this model.

        A local store that turns out damaged here is moved aside and a new one opened (see
        :meth:`heal`); :attr:`notes` then holds the one-line report.

        Raises:
            LibraryModelMismatchError: the collection holds another model's embeddings (unless ``replace_other_model``).
            LibraryError: the Chroma server cannot be reached, or a local store cannot be opened and is not damaged
                (locked by another process, no permission).
        """
        try:
            collection, epoch = self._call_client("opening the collection", self._get_or_create)
        except LibraryError:
            raise
        except Exception as exc:
            if is_url(self.location):
                raise LibraryError(
                    f"Cannot reach the Chroma server at {self.location} ({type(exc).__name__}: {exc}); start it "
                    "with `chroma run --path DIR --host HOST --port PORT` or clear the server URL."
                ) from exc
            if not self.heal(exc):
                raise self._open_error(exc) from exc
            try:
                collection, epoch = self._call_client("opening the collection", self._get_or_create)
            except Exception as again:  # noqa: BLE001 - reported with its cause, as above
                raise self._open_error(again) from again
        meta = collection.metadata or {}
        if ((collection.configuration_json or {}).get("hnsw") or {}).get("ef_search", EF_SEARCH) != EF_SEARCH:
            # An index made with another search breadth keeps it until told; Chroma applies EF_SEARCH
            # the next time the store is opened.
            def modify(_: Any) -> None:
                with warnings.catch_warnings():  # Chroma re-reads its own record of embedding_function=None as
                    warnings.simplefilter("ignore", DeprecationWarning)  # a "legacy" config and warns about it
                    collection.modify(configuration={"hnsw": {"ef_search": EF_SEARCH}})

            self._call_client("setting the search breadth", modify)
        if meta.get("model_key") != self.model_key or int(meta.get("dim", -1)) != self.dim:
            if not replace_other_model:
                raise LibraryModelMismatchError(
                    f"The style index {self.name!r} in {self.location} was built with embedding model "
                    f"{meta.get('model_key')!r} ({meta.get('dim')}-d); the model loaded now is {self.model_key!r} "
                    f"({self.dim}-d), and their embeddings cannot be compared. Load the model the library was "
                    "indexed with, rebuild the index for this model (loader: rebuild_index, CLI: "
                    "`library sync --rebuild --model ...`), or, to keep both, give this model a store of its own "
                    "(loader: store, CLI: --store)."
                )
            self._call_client("replacing the collection", lambda client: client.delete_collection(self.name))
            return self.open()
        self._opened = (collection, epoch)
        return self

    def _get_or_create(self, client: Any) -> tuple[Any, int]:
        """The collection, and the epoch of the client that opened it (read inside the gate, so it is that one's)."""
        return client.get_or_create_collection(
            name=self.name,
            embedding_function=None,
            configuration={
                "hnsw": {
                    "space": "cosine",
                    "ef_search": EF_SEARCH,
                    "ef_construction": EF_CONSTRUCTION,
                    "max_neighbors": MAX_NEIGHBORS,
                    "batch_size": HNSW_BATCH_SIZE,
                    "sync_threshold": HNSW_SYNC_THRESHOLD,
                }
            },
            metadata={"model_key": self.model_key, "dim": self.dim},
        ), _epochs.get(str(self.location), 0)

    def _open_error(self, exc: BaseException) -> LibraryError:
        return LibraryError(
            f"Cannot open the style index store {self.location} ({type(exc).__name__}: {exc}). It shows no damage, "
            "so it is left as it is: if another ComfyUI or CLI process is using it, wait for it or stop it; "
            "otherwise check the folder's permissions and free disk space."
        )

    def _get_client(self, fresh: bool = False) -> Any:
        return _client(self.location, fresh=fresh, notes=self.notes)

    @property
    def _server(self) -> str | None:
        return str(self.location) if is_url(self.location) else None

    def _call_client(self, what: str, fn: Callable[[Any], T]) -> T:
        """``fn(client)`` with the client held open (shared gate) and a store server's answer bounded in time."""
        client = self._get_client()
        with _gate(self.location).shared():
            with _clients_lock:
                current = _clients.get(str(self.location))
            if current is not client:  # reopened between getting it and entering the gate: use the new one
                client = self._get_client()
            return bounded_call(self._server, what, lambda: fn(client))

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        """``fn(collection)`` on this index's collection, on a client no other thread can close meanwhile."""
        for last in (False, True):
            self._ensure_open()  # outside the gate: an open that finds a damaged store heals it (exclusively)
            with _gate(self.location).shared():
                collection, epoch = self._opened
                if collection is None or epoch != _epochs.get(str(self.location), 0):
                    # Another thread reopened the client meanwhile; inside the gate no one can again, so one
                    # open here gives a collection that stays valid for the call. It cannot heal in here: if it
                    # fails, the next round opens (and heals) outside the gate.
                    try:
                        self.open()
                    except Exception:
                        if last:
                            raise
                        continue
                    collection = self._opened[0]
                return bounded_call(self._server, what, functools.partial(fn, collection))
        raise AssertionError("unreachable: the last round returns or raises")

    def heal(self, error: BaseException | None = None) -> bool:
        """After ``error`` from this store: if it is damaged, move it aside and start a new one. True if reopened.

        Judged afresh under the store's open lock with every page checked, so a store that is
        locked, busy or in use by another process is left alone; one another process has already
        replaced is simply reopened. HNSW files count as damaged only when a fresh client fails
        on them the same way (a one-off read of a file being rewritten does not).
        """
        if is_url(self.location):
            return False
        path, key = Path(self.location), str(self.location)
        if _gate(key).inside():
            return False  # inside a call on the client, which cannot be closed now; the caller heals outside
        with _gate(key).exclusive(), _clients_lock:
            opened = _identities.get(key)
            _close_client(key)
            self._opened = (None, -1)
            if not path.is_dir():
                return False
            with open_lock(path):
                if opened is not None and _identity(path) != opened:
                    return True  # another process moved the damaged store aside: use its new one
                reason = damage(path / CHROMA_DB, deep=True)
                if reason is not None:
                    reason = f"{CHROMA_DB}: {reason}"
                elif error is not None and any(sign in str(error).lower() for sign in HNSW_DAMAGE_SIGNS):
                    reason = self._probe()
                if reason is None:
                    return False
                _close_client(key)
                _move_store_aside(path, reason, self.notes)
                return True

    def _probe(self) -> str | None:
        """Why a fresh client cannot read this collection (count and one query), or None if it can."""
        try:
            client = _client(self.location, fresh=True, notes=self.notes)
            collection = client.get_collection(self.name, embedding_function=None)
            if collection.count():
                collection.query(query_embeddings=np.ones((1, self.dim), dtype=np.float32), n_results=1)
        except Exception as exc:  # noqa: BLE001 - any failure of a fresh client is the verdict, reported in full
            if any(sign in str(exc).lower() for sign in HNSW_DAMAGE_SIGNS):
                return f"its HNSW files for {self.name} cannot be read: {exc}"
        return None

    def _ensure_open(self) -> None:
        collection, epoch = self._opened
        if collection is None or epoch != _epochs.get(str(self.location), 0):
            self.open()

    @property
    def collection(self) -> Any:
        self._ensure_open()
        return self._opened[0]

    def refresh(self) -> None:
        """Reopen the store from disk, so vectors written by another process become searchable."""
        if not is_url(self.location):
            self._get_client(fresh=True)
        self._opened = (None, -1)
        self.open()

    def count(self) -> int:
        return int(self._call("counting the collection", lambda c: c.count()))

    def put(self, ids: Sequence[str], vectors: np.ndarray, metadatas: Sequence[Mapping[str, Any]]) -> None:
        """Insert or replace items (delete + add: Chroma's add ignores existing ids, upsert merges metadata)."""
        if len(ids) == 0:
            return
        if vectors.shape != (len(ids), self.dim) or not np.isfinite(vectors).all():
            raise LibraryError(
                f"Embeddings for the style index must be finite and of shape ({len(ids)}, {self.dim}); got "
                f"{vectors.shape}. This is a bug: report it with the library and model used."
            )
        self.delete(ids)
        for start in range(0, len(ids), BATCH):
            part = slice(start, start + BATCH)

            def add(collection: Any, part: slice = part) -> None:
                collection.add(
                    ids=list(ids[part]),
                    embeddings=np.ascontiguousarray(vectors[part], dtype=np.float32),
                    metadatas=[dict(m) for m in metadatas[part]],
                )

            self._call("adding vectors", add)

    def delete(self, ids: Sequence[str]) -> None:
        for start in range(0, len(ids), BATCH):
            batch = list(ids[start : start + BATCH])
            self._call("deleting vectors", functools.partial(_delete_ids, ids=batch))

    def query(self, vector: np.ndarray, k: int) -> list[Hit]:
        """The ``k`` nearest items by cosine similarity, best first (fewer if the index holds fewer)."""
        if k <= 0:
            return []
        # Chroma returns fewer than n_results when the collection holds fewer (an empty one: none), so
        # no count() round trip per query (1 ms of SQLite, a quarter of a 10k-item search).
        result = self._call("a query", lambda c: c.query(
            query_embeddings=np.asarray(vector, dtype=np.float32)[None, :], n_results=k, include=["distances"]
        ))
        return [
            Hit(item_id, 1.0 - float(dist))
            for item_id, dist in zip(result["ids"][0], result["distances"][0], strict=True)
        ]

    def self_test(self, samples: Mapping[str, np.ndarray]) -> bool:
        """True if each sample vector finds itself (or an identical vector) at the top.

        Catches what Chroma reports as success: a deleted HNSW folder answers with fewer results,
        and vectors lost by concurrent writers are counted but never found.
        """
        if not samples:
            return True
        ids = list(samples)
        matrix = np.stack([samples[i] for i in ids]).astype(np.float32)
        result = self._call("a self-test query", lambda c: c.query(
            query_embeddings=matrix, n_results=1, include=["distances"]))
        for expected, got_ids, dists in zip(ids, result["ids"], result["distances"], strict=True):
            if not got_ids or (got_ids[0] != expected and dists[0] > SELF_TEST_TOLERANCE):
                logger.warning("Style index %s: item %r not found by its own vector.", self.name, expected)
                return False
        return True

    def drop_others(self, prefix: str) -> list[str]:
        """Delete the store's other collections whose name starts with ``prefix``; returns their names.

        A store may hold per-model copies of a library's index, named after the library and the model; the
        library drops them (its own name + ``-``) when it is first synced or rebuilt.
        """
        def drop(client: Any) -> list[str]:
            names = [c if isinstance(c, str) else c.name for c in client.list_collections()]
            stale = sorted(n for n in names if n.startswith(prefix) and n != self.name)
            for name in stale:
                client.delete_collection(name)
            return stale

        return self._call_client("listing collections", drop)

    def reset(self) -> None:
        """Drop and recreate the collection empty (before a rebuild from cached embeddings)."""
        def delete(client: Any) -> None:
            try:
                client.delete_collection(self.name)
            except Exception as exc:  # noqa: BLE001 - "does not exist" has no stable exception type across versions
                logger.debug("delete_collection(%s): %s", self.name, exc)

        self._call_client("dropping the collection", delete)
        self._opened = (None, -1)
        self.open()
