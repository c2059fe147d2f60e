"""The pack's access config (``user/sketch_rag/config.json``) as a test writes it: each write a visible change."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def config_path(user_dir: Path) -> Path:
    """Where the pack reads its access config under ComfyUI's user folder."""
    return user_dir / "sketch_rag" / "config.json"


def write_config(path: Path, content: object) -> Path:
    """Write ``content`` (a string as it is, anything else as JSON) to ``path``.

    The file's mtime moves a second past both now and its last value: the pack re-reads the config when its
    mtime changes, and a rewrite within one mtime tick must still count.
    """
    previous = path.stat().st_mtime_ns if path.exists() else 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    later = max(time.time_ns(), previous) + 10**9
    os.utime(path, ns=(later, later))
    return path


@contextmanager
def access_config(user_dir: Path) -> Iterator[Path]:
    """The config file's path (its folder made); the file is removed afterwards, so the next test has the defaults."""
    path = config_path(user_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
