"""Opening the library's own SQLite files (embedding cache, sync state) safely from several processes.

Two ComfyUI or CLI processes often open a new store at the same moment. SQLite answers the
switch to WAL mode with "database is locked" straight away, without waiting for its busy
timeout, when another connection is doing the same; so the switch is retried for a while here
instead of failing the whole library load.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

BUSY_TIMEOUT_S = 60.0
"""How long a statement waits for another process's transaction (SQLite's own busy timeout)."""
OPEN_RETRY_S = 30.0
"""How long opening keeps retrying the WAL switch and schema creation while another process holds them."""


def open_database(path: Path, schema: Sequence[str]) -> sqlite3.Connection:
    """A connection to ``path`` in WAL mode with ``schema`` (``CREATE ... IF NOT EXISTS`` statements) applied.

    Raises:
        sqlite3.OperationalError: the file stayed locked for :data:`OPEN_RETRY_S` or is not a database.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
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
