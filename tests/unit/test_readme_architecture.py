"""The README's Architecture section names only files and folders that exist, and names the layers' modules."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PATHLIKE = re.compile(r"`([A-Za-z0-9_./-]+(?:\.(?:py|js|json|md|toml)|/))`")


def architecture_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Architecture\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_every_file_the_architecture_section_names_exists() -> None:
    named = set(PATHLIKE.findall(architecture_section()))
    assert len(named) > 40, named  # the section traces real files, not a handful
    missing = sorted(name for name in named if not (REPO / name).exists())
    assert missing == [], missing


def test_the_section_names_every_floor_module_and_both_faces() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_layers", REPO / "tools" / "check_layers.py")
    assert spec and spec.loader
    check_layers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_layers)
    section = architecture_section()
    for module in sorted(check_layers.FLOOR):
        assert f"`{module}.py`" in section, module
    assert "`retrieval/__init__.py`" in section and "`rendering/__init__.py`" in section
