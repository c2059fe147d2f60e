"""``sketch-rag demo`` on a machine without real models: the whole main job, tiny models, said plainly.

It starts its own ComfyUI (not the session's server), because starting one is part of what it does.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from sketch_rag.cli.demo_cmd import DEMO_PROMPT, TINY_FIELDS
from sketch_rag.cli.main import main
from sketch_rag.cli.workflows import resolved, tiny_models
from sketch_rag.retrieval.folder import LibraryRoot, iter_image_files, read_metadata
from sketch_rag.retrieval.library import SHIPPED_LIBRARY
from tests.helpers.paths import COMFYUI_HOME

pytestmark = pytest.mark.slow


def shipped_style_names() -> set[str]:
    root = LibraryRoot(SHIPPED_LIBRARY, "", writable=False)
    metas, _problems = read_metadata(root, [info.relpath for info in iter_image_files(root)])
    return {meta.name for meta in metas.values()}


def test_demo_without_real_models_renders_the_example_with_tiny_models_and_names_the_style(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    scratch = tmp_path / "scratch"  # where the demo's temporary ComfyUI base directory goes
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    empty_models = tmp_path / "models"  # no real model files: the demo must fall back to the tiny ones
    empty_models.mkdir()
    out = tmp_path / "demo" / "render.png"

    assert main(["demo", "--comfyui-dir", str(COMFYUI_HOME), "--models-dir", str(empty_models), "--cpu",
                 "--out", str(out)]) == 0

    captured = capsys.readouterr()
    assert "TINY RANDOM-INITIALISED" in captured.err and "real models not found" in captured.err
    report = json.loads(captured.out.splitlines()[-1])
    assert report["models"] == "tiny" and report["out"] == str(out)
    assert len(report["style"]) == 1 and report["style"][0] in shipped_style_names()  # the default library
    assert len(report["score"]) == 1 and -1.0 <= report["score"][0] <= 1.0
    assert f"Style used: {report['style'][0]}" in captured.out and "TINY" in captured.out
    with Image.open(out) as png:
        assert png.format == "PNG" and png.height == TINY_FIELDS["height"]
        prompt, workflow = json.loads(png.info["prompt"]), json.loads(png.info["workflow"])
    sampler = next(n for n in prompt.values() if n["class_type"] == "SketchRAGHybridSampler")
    loader = next(n for n in prompt.values() if n["class_type"] == "SketchRAGHybridPipelineLoader")
    sketch = next(n for n in prompt.values() if n["class_type"] == "LoadImage")
    assert resolved(prompt, sampler["inputs"]["prompt"]) == DEMO_PROMPT  # through the one prompt node
    assert sketch["inputs"]["image"] == "sketch_house.png"
    assert loader["inputs"]["checkpoint"] == tiny_models()["checkpoint"]
    assert any(n.get("title") == "prompt" and n["widgets_values"] == [DEMO_PROMPT]
               for n in workflow["nodes"])  # reopens in ComfyUI as this render
    assert not list(scratch.glob("sketch_rag_demo_*"))  # the tiny models' temporary folder was removed
