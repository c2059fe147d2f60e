"""The engine packages stand alone: no ComfyUI imports, and Canny never pulls in diffusers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENGINE_PACKAGES = ("retrieval", "rendering")
COMFY_MODULES = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes",
                 "server", "execution", "node_helpers", "latent_preview"}


def imported_top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_engine_packages_import_nothing_from_comfyui() -> None:
    for package in ENGINE_PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            assert not imported_top_level_names(path) & COMFY_MODULES, path


def test_importing_the_canny_engine_imports_neither_diffusers_nor_comfyui() -> None:
    code = (
        "import sys, sketch_rag.rendering.canny, sketch_rag.rendering.images\n"
        "heavy = {'diffusers', 'transformers', 'chromadb', 'comfy_api', 'torch'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_importing_the_pack_root_has_no_side_effects(tmp_path: Path) -> None:
    code = "import sketch_rag, sys; assert 'sketch_rag.nodes.extension' not in sys.modules"
    before = set(REPO.iterdir())
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    assert set(REPO.iterdir()) == before
