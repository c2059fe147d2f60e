"""Each engine's face lists its public surface once: ``__all__``, the lazy table and the typed imports agree, and
every name resolves to the object its submodule defines."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FACES = ("retrieval", "rendering")


def typed_imports(face: str) -> dict[str, str]:
    """Name -> submodule, from the face's ``if TYPE_CHECKING:`` block (what mypy and readers see)."""
    tree = ast.parse((REPO / face / "__init__.py").read_text())
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for item in node.body:
                assert isinstance(item, ast.ImportFrom) and item.level == 1 and item.module
                names |= {alias.name: item.module for alias in item.names}
    return names


@pytest.mark.parametrize("face", FACES)
def test_a_face_lists_each_name_once_and_everywhere_alike(face: str) -> None:
    module = importlib.import_module(f"sketch_rag.{face}")
    assert len(module.__all__) == len(set(module.__all__))
    assert set(module.__all__) == set(module._HOMES) == set(typed_imports(face))
    assert typed_imports(face) == module._HOMES


@pytest.mark.parametrize("face", FACES)
def test_every_name_of_a_face_is_its_submodules_object(face: str) -> None:
    module = importlib.import_module(f"sketch_rag.{face}")
    for name in module.__all__:
        home = importlib.import_module(f"sketch_rag.{face}.{module._HOMES[name]}")
        assert getattr(module, name) is getattr(home, name), name


def test_a_name_a_face_does_not_list_is_an_attribute_error() -> None:
    from sketch_rag import rendering

    with pytest.raises(AttributeError, match="'sketch_rag.rendering' has no attribute 'render_request_limits'"):
        rendering.render_request_limits  # noqa: B018


def test_importing_a_face_loads_only_the_submodules_whose_names_are_used() -> None:
    code = (
        "import sys\n"
        "from sketch_rag.retrieval import MAX_NAME_CHARS\n"
        "loaded = {m for m in sys.modules if m.startswith('sketch_rag.retrieval.')}\n"
        "assert loaded == {'sketch_rag.retrieval.style_labels', 'sketch_rag.retrieval.file_names',\n"
        "                  'sketch_rag.retrieval.folder'}, loaded\n"
        "assert not {'chromadb', 'torch', 'transformers'} & set(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
