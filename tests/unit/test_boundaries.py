"""The layering holds (engines stand alone on the floor, adapters above them) and the sketch engine stands alone."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

_spec = importlib.util.spec_from_file_location("check_layers", REPO / "tools" / "check_layers.py")
assert _spec and _spec.loader
check_layers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_layers)


def test_the_pack_keeps_its_import_layering() -> None:
    assert check_layers.problems(REPO) == []


def write_pack(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"retrieval/a.py": "from ..rendering import b\n", "rendering/b.py": ""}, "retrieval imports rendering"),
        ({"rendering/a.py": "import comfy.model_management\n"}, "rendering imports ComfyUI"),
        ({"nodes/a.py": "from ..cli.b import main\n", "cli/b.py": ""}, "nodes imports cli"),
        ({"retrieval/a.py": "def f():\n    from ..tiny_models import c\n", "tiny_models/c.py": ""},
         "retrieval imports tiny_models"),
        ({"imaging.py": "from sketch_rag.retrieval import x\n", "retrieval/x.py": ""}, "floor imports retrieval"),
        ({"cli/a.py": "from .b import g\n", "cli/b.py": "def g():\n    from .a import h\n"},
         "import circle among: cli.a, cli.b"),
        ({"nodes/a.py": "from ..retrieval.query import MAX_K\n", "retrieval/__init__.py": "__all__ = ['MAX_K']\n",
          "retrieval/query.py": ""}, "nodes imports retrieval.query; import its names from the face"),
        ({"cli/a.py": "def f():\n    import sketch_rag.rendering.canny\n", "rendering/canny.py": ""},
         "cli imports rendering.canny; import its names from the face"),
        ({"cli/a.py": "from ..rendering import hidden\n", "rendering/__init__.py": "__all__ = ['shown']\n"},
         "cli imports hidden from rendering, which the face's __all__ does not list"),
        ({"nodes/a.py": "from .. import rendering\n", "rendering/__init__.py": "__all__ = ['shown']\n"},
         "nodes imports the module from rendering"),
        ({"nodes/a.py": "from .b import _helper\n", "nodes/b.py": "def _helper(): ...\n"},
         "imports the private name _helper from nodes.b"),
        ({"rendering/a.py": "def f():\n    from .b import _cache\n", "rendering/b.py": ""},
         "imports the private name _cache from rendering.b"),
    ],
)
def test_the_layering_check_finds_each_kind_of_break(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    found = check_layers.problems(write_pack(tmp_path, files))
    assert any(expected in line for line in found), found


def test_the_layering_check_accepts_what_the_rules_allow(tmp_path: Path) -> None:
    files = {"nodes/a.py": "from comfy_api.v0_0_2 import io\nfrom ..retrieval import find\nfrom .. import imaging\n",
             "retrieval/__init__.py": "__all__ = ['find']\nfrom .r import find\n",
             "retrieval/r.py": "from ..imaging import x\n", "imaging.py": "from .errors import E\n",
             "errors.py": "", "cli/c.py": "from ..tiny_models import t\n",
             "tiny_models/t.py": "from ..rendering import k\n", "rendering/k.py": ""}
    assert check_layers.problems(write_pack(tmp_path, files)) == []


def test_importing_the_sketch_engine_imports_no_model_library_nor_comfyui() -> None:
    """Canny and lines run where no torch, diffusers, CLIP, Chroma, scikit-image or ComfyUI is installed."""
    code = (
        "import sys, sketch_rag.imaging, sketch_rag.rendering.lines\n"
        "from sketch_rag.rendering import CannySettings, sketch_to_edges\n"
        "heavy = {'diffusers', 'transformers', 'chromadb', 'comfy_api', 'torch', 'skimage', 'scipy'}\n"
        "heavy &= set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_importing_the_pack_root_has_no_side_effects(tmp_path: Path) -> None:
    code = "import sketch_rag, sys; assert 'sketch_rag.nodes.extension' not in sys.modules"
    before = set(REPO.iterdir())
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    assert set(REPO.iterdir()) == before
