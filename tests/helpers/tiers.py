"""Each tier's folder gives its tests the tier's markers, so ``-m unit``, ``-m node``, ``-m comfy`` and
``-m browser`` select exactly the tests of that folder."""

from __future__ import annotations

from pathlib import Path

import pytest


def mark_tier(items: list[pytest.Item], folder: Path, *markers: str) -> None:
    """Add ``markers`` to every collected test under ``folder`` (a conftest's hook sees the whole session's items)."""
    for item in items:
        if folder in item.path.parents:
            for marker in markers:
                item.add_marker(marker)
