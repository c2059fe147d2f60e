"""The library's SQLite files (embedding cache, sync state, Chroma's own database): opening, judging, moving aside.

Two ComfyUI or CLI processes often open a new store at the same moment. SQLite answers the
switch to WAL mode with "database is locked" straight away, without waiting for its busy
timeout, when another connection is doing the same; so the switch is retried for a while here
instead of failing the whole library load.

A file can also be damaged (truncated by a full disk, overwritten, emptied). Only SQLite's own
verdict counts as damage (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``, a failed ``quick_check``) plus an
empty file found while holding the file's open lock (every writer of ours creates the schema
under that lock, so no healthy file is ever seen empty). "Locked", "busy", "cannot open" and
permission errors are never damage: a file another process is using is never moved aside.
A damaged file is renamed to ``<name>.damaged-<UTC time>``, never deleted.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

from ..errors import LibraryError

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 60.0
"""How long a statement waits for another process's transaction (SQLite's own busy timeout)."""
OPEN_RETRY_S = 30.0
"""How long opening keeps retrying the WAL switch and schema creation while another process holds them."""
CHECK_TIMEOUT_S = 5.0
"""How long the damage check waits for another process's write lock before calling the file 'in use'."""
SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26
"""SQLite's primary result codes for a damaged file (the only errors treated as damage)."""
SIDECARS = ("-wal", "-shm", "-journal")
"""Files SQLite keeps beside a database; moved with it, or a new file would replay the old journal."""
_HEADER = b"SQLite format 3\x00"

_locks: dict[str, FileLock] = {}
_locks_guard = threading.Lock()


def open_lock(path: Path) -> FileLock:
    """The inter-process lock held while ``path`` (a database file or store folder) is created, judged or moved.

    One object per path in a process (a second FileLock on the same file would block on the first).
    """
    key = str(path)
    with _locks_guard:
        if key not in _locks:
            _locks[key] = FileLock(str(path.parent / f".{path.name}.open.lock"))
        return _locks[key]


def damage(path: Path, *, deep: bool = False) -> str | None:
    """Why the SQLite database at ``path`` is damaged, or None if it is healthy, absent or cannot be judged now.

    The quick check reads the header and the schema (a millisecond); a file shorter than its
    header says, or ``deep``, adds SQLite's ``quick_check`` of every page. Call it holding
    :func:`open_lock` (an empty file is only damage when no writer of ours is creating it).
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size == 0:
        wal = path.with_name(path.name + "-wal")
        if not wal.is_file() or wal.stat().st_size == 0:
            return "it is empty (0 bytes)"
        deep = True  # everything may still be in the write-ahead log: let SQLite judge
    else:
        with path.open("rb") as fh:
            header = fh.read(100)
        if header[:16] == _HEADER and len(header) == 100:
            page_size = int.from_bytes(header[16:18], "big")
            page_size = 65536 if page_size == 1 else page_size
            pages = int.from_bytes(header[28:32], "big")
            if header[24:28] == header[92:96] and size < pages * page_size:
                deep = True  # shorter than SQLite last wrote it: truncated, or mid-checkpoint (SQLite tells)
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=CHECK_TIMEOUT_S)
    except sqlite3.Error:
        return None  # cannot open it at all (permissions): not ours to judge
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        if deep:
            rows = [str(r[0]) for r in db.execute("PRAGMA quick_check(5)").fetchall()]
            if rows != ["ok"]:
                first = rows[0].replace("\n", " ")
                return f"SQLite's integrity check fails ({first[:160]})"
    except sqlite3.DatabaseError as exc:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in (SQLITE_CORRUPT, SQLITE_NOTADB) and "malformed database schema" not in str(exc):
            return f"SQLite says: {exc}"
        # Locked, busy, I/O: in use or unreadable now, never damage. A schema our SQLite cannot parse may
        # come from a newer SQLite (Chroma bundles its own), so that is not ours to judge either.
        return None
    finally:
        db.close()
    return None


def is_damage_error(exc: BaseException) -> bool:
    """True for the SQLite errors that mean a damaged file (not locked, busy or missing)."""
    return isinstance(exc, sqlite3.DatabaseError) and (
        getattr(exc, "sqlite_errorcode", 0) & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)
    )


def move_aside(path: Path) -> Path:
    """Rename a damaged file or folder (and SQLite's files beside it) to ``<name>.damaged-<UTC time>``.

    Returns the new path. Nothing is deleted: the user can inspect or recover the old copy.
    """
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 2
    while target.exists() or any(target.with_name(target.name + s).exists() for s in SIDECARS):
        target, n = path.with_name(f"{path.name}.damaged-{stamp}-{n}"), n + 1
    path.rename(target)
    for suffix in SIDECARS:
        sidecar = path.with_name(path.name + suffix)
        if sidecar.exists():
            sidecar.rename(target.with_name(target.name + suffix))
    return target


def _connect(path: Path, schema: Sequence[str]) -> sqlite3.Connection:
    """A connection to ``path`` in WAL mode with ``schema`` (``CREATE ... IF NOT EXISTS`` statements) applied.

    Raises:
        sqlite3.OperationalError: the file stayed locked for :data:`OPEN_RETRY_S`.
        sqlite3.DatabaseError: the file is not a database or is damaged.
    """
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    deadline = time.monotonic() + OPEN_RETRY_S
    delay = 0.01
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            for statement in schema:
                db.execute(statement)
            db.commit()
            return db
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                db.close()
                raise
            db.rollback()
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        except sqlite3.DatabaseError:
            db.close()
            raise


class SqliteFile:
    """One of our own SQLite files, which heals itself: a damaged file is moved aside and started afresh.

    Subclasses set :attr:`role` (what the file is, for the message) and :attr:`remedy` (what
    happens to its contents now). :attr:`notes` collects the one-line reports of every heal.
    """

    role = "database"
    remedy = "started a new one"

    def __init__(self, path: Path, schema: Sequence[str]) -> None:
        self.path = path
        self._schema = list(schema)
        self.notes: list[str] = []
        self.moved_aside = False
        """Set when a damaged file was replaced by a new one; the owner clears it once it has refilled it."""
        self._identity: tuple[int, int] | None = None
        self.epoch = 0
        """Bumped by every reopen, so readers can tell a new file from an old one at the same generation."""
        self._db = self._open()

    def _open(self, *, deep: bool = False) -> sqlite3.Connection:
        if self.path.is_dir():
            raise LibraryError(
                f"The {self.role} {self.path} is a folder, not an SQLite file; move that folder elsewhere "
                "(or choose another store folder)."
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open_lock(self.path):
            reason = damage(self.path, deep=deep)
            if reason is not None:
                self._move_aside(reason)
            try:
                db = _connect(self.path, self._schema)
            except sqlite3.DatabaseError as exc:
                if not is_damage_error(exc):
                    raise
                self._move_aside(f"SQLite says: {exc}")
                db = _connect(self.path, self._schema)
            stat = self.path.stat()
            self._identity = (stat.st_dev, stat.st_ino)
            self.epoch += 1
            return db

    def _move_aside(self, reason: str) -> None:
        moved = move_aside(self.path)
        note = f"The {self.role} {self.path} was damaged ({reason}); moved it to {moved} and {self.remedy}."
        logger.warning(note)
        self.notes.append(note)
        self.moved_aside = True

    def heal(self) -> bool:
        """Check every page; if the file is damaged (or another process replaced it), reopen it. True if reopened."""
        self._db.close()
        replaced = self._replaced()
        notes = len(self.notes)
        self._db = self._open(deep=True)
        return replaced or len(self.notes) > notes

    def _replaced(self) -> bool:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return True
        return (stat.st_dev, stat.st_ino) != self._identity

    def reopen_if_replaced(self) -> None:
        """Follow a file another process moved aside and replaced, instead of reading the old copy forever."""
        if self._replaced():
            self._db.close()
            self._db = self._open()

    def close(self) -> None:
        self._db.close()
