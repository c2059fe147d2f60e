"""Ways a library store gets damaged on disk, and where the healing puts what it moved aside."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sketch_rag.retrieval import sqlite_files


def truncated(path: Path) -> None:
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * (max(path.stat().st_size, 4096) // 256))


DAMAGES: dict[str, Callable[[Path], None]] = {"truncated": truncated, "zero-byte": zero_bytes, "garbage": garbage}


def moved_aside(store: Path, name: str) -> list[Path]:
    """What was moved aside under ``name`` (SQLite's -wal/-shm files beside it travel with it, not counted)."""
    return sorted(p for p in store.glob(f"{name}.damaged-*") if not p.name.endswith(sqlite_files.SIDECARS))
