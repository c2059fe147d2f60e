"""Style folders of solid colours, folders outside ComfyUI's, and snapshots that show any write under a folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.images import png

RED, BLUE = (220, 20, 20), (20, 20, 220)


def paint(folder: Path, colours: dict[str, tuple[int, int, int]]) -> Path:
    """``folder`` (made) holding ``<name>.png`` in each solid colour."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, colour in colours.items():
        (folder / f"{name}.png").write_bytes(png(colour))
    return folder


def outside_folder(factory: pytest.TempPathFactory, colours: dict[str, tuple[int, int, int]] | None = None) -> Path:
    """A fresh folder outside every ComfyUI folder, with a library nobody allowed in ``styles/`` (red and blue)."""
    folder = factory.mktemp("outside").resolve()
    paint(folder / "styles", {"red": RED, "blue": BLUE} if colours is None else colours)
    return folder


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and mtime: a write anywhere in it changes this."""
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}
