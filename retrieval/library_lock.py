"""One library's writers one at a time, across threads and processes, and the repair of a store found damaged.

Two processes writing one Chroma store silently lose vectors, so every write (sync, add, rebuild, repair) runs
under a per-library file lock (and a mutex for this process's threads). Readers notice other processes' writes
through the state file's generation counter and reopen the store; a generation this process wrote itself needs
no reopen, since the shared client already holds those vectors. A damaged state file is moved aside and started
afresh (:meth:`LibraryStores.heal`), and an index that answers with too few results is rebuilt from the embedding
cache (:meth:`StoreLock.repair`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..errors import LibraryError
from .index import ChromaIndex
from .state import SyncState
from .sync import LibraryStores

logger = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 300.0
"""How long a writer waits for another process's sync before giving up with an error."""

_written_here: dict[tuple[str, str], int] = {}
"""The last generation this process wrote, per (state file, collection): such a change needs no store reopen."""
_written_lock = threading.Lock()


class StoreLock:
    """The write lock of one library's store, and which generation of it this process has read.

    Args:
        name: the library's name, for errors.
        store_dir: the store folder; the lock file lives in its ``locks`` folder.
        collection: the library's Chroma collection (one lock per collection).
        stores: the library's index, embedding cache and state, healed and repaired here.
        on_written: called after every write, still under the lock (the library rereads its records there).
    """

    def __init__(
        self, name: str, store_dir: Path, collection: str, stores: LibraryStores, on_written: Callable[[], Any]
    ) -> None:
        self.name = name
        self.stores = stores
        self.index: ChromaIndex = stores.index
        self.state: SyncState = stores.state
        self._locks_dir = store_dir / "locks"
        self._file_lock = FileLock(str(self._locks_dir / f"{collection}.lock"))
        self._key = (str(self.state.path), collection)
        self._on_written = on_written
        self.mutex = threading.RLock()
        """This process's writers one at a time; a reader that sees the index ahead of the records waits here."""
        self.seen_generation: tuple[int, int] | None = None
        """(state file epoch, generation) last read: a new state file at the same generation is still new."""

    @property
    def lock_file(self) -> str:
        return str(self._file_lock.lock_file)

    def write(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` under the lock, on top of whatever another process wrote before.

        Raises:
            LibraryError: another process held the lock for :data:`LOCK_TIMEOUT_S`.
        """
        try:
            self._locks_dir.mkdir(parents=True, exist_ok=True)
            with self.mutex, self._file_lock.acquire(timeout=LOCK_TIMEOUT_S):
                if self.changed_elsewhere():
                    self.index.refresh()  # another process wrote: write on top of its vectors, not a stale copy
                try:
                    return fn(*args, **kwargs)
                finally:
                    with _written_lock:
                        _written_here[self._key] = self.state.generation()
                    self._on_written()
        except Timeout as exc:
            raise LibraryError(
                f"Another process has been writing the style library {self.name!r} for {LOCK_TIMEOUT_S:.0f} s "
                f"(lock {self.lock_file}); wait for it to finish, or stop the other ComfyUI/CLI using it."
            ) from exc

    def changed_elsewhere(self) -> bool:
        """Whether another process wrote since this library last read: only then must the store be reopened.

        A generation written by this process (this library or another object on the same collection) was
        written through the shared client, which already holds those vectors.
        """
        version = self.state_version()
        if version == self.seen_generation:
            return False
        if self.seen_generation is None or version[0] != self.seen_generation[0]:
            return True  # a new state file: the store may have been replaced with it
        with _written_lock:
            return _written_here.get(self._key) != version[1]

    def state_version(self) -> tuple[int, int]:
        """(state file epoch, generation); a damaged state file found here is moved aside and started afresh."""
        try:
            generation = self.state.generation()
        except sqlite3.DatabaseError as exc:
            if not self.stores.heal(exc):
                raise
            generation = self.state.generation()
        return self.state.epoch, generation

    def repair(self, collection: str) -> None:
        """Under the lock: verify the index against the records, and rebuild it from the cache if it lost any."""

        def repair() -> None:
            records = self.state.records()
            if not self.stores.verify(records):
                logger.warning("Style index %s returned too few results; rebuilding it.", collection)
                self.stores.rebuild_index(records)
                self.state.bump()

        self.write(repair)
