"""Fixtures of the retrieval tests: the tiny CLIP (built once), colour libraries with known geometry."""

from __future__ import annotations

from pathlib import Path

import pytest

from sketch_rag.model_folders import STYLE_CLIP
from sketch_rag.retrieval.embedder import ClipEmbedder
from sketch_rag.retrieval.folder import LibraryRoot
from sketch_rag.retrieval.library import StyleLibrary, open_library
from sketch_rag.tiny_models.clip import write_tiny_clip
from tests.helpers.geometry import COLOURS, GeometryEmbedder, solid


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    models = tmp_path_factory.mktemp("models")
    write_tiny_clip(models)
    return models


@pytest.fixture(scope="session")
def tiny_clip(tiny_models_dir: Path) -> ClipEmbedder:
    return ClipEmbedder.load("tiny-random-clip", device="cpu", search_dirs=[tiny_models_dir / STYLE_CLIP])


@pytest.fixture
def colour_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "styles"
    for name, colour in COLOURS.items():
        solid(folder / f"{name}.png", colour)
    (folder / "orange.json").write_text('{"name": "Orange glow", "tags": ["warm", "Bright"]}', encoding="utf-8")
    (folder / "red.json").write_text('{"tags": ["warm"]}', encoding="utf-8")
    return folder


@pytest.fixture
def colour_library(colour_folder: Path, tmp_path: Path) -> StyleLibrary:
    library, _ = open_library([LibraryRoot(colour_folder, "")], GeometryEmbedder(), tmp_path / "store")
    return library
