"""``sketch-rag render`` in-process: sketch + prompt + style (image or library) → PNG, printing the style used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sketch_rag.cli.main import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sketch(example_sketches: list[Path]) -> Path:
    return next(p for p in example_sketches if p.stem == "sketch_house")


def render_args(sketch: Path, models_dir: Path, out: Path, *source: str) -> list[str]:
    return [
        "render",
        "--sketch",
        str(sketch),
        "--prompt",
        "a watercolor house",
        *source,
        "--models-dir",
        str(models_dir),
        "--out",
        str(out),
        "--steps",
        "2",
        "--width",
        "64",
        "--seed",
        "5",
        "--device",
        "cpu",
    ]


def test_render_with_a_style_image_writes_the_png_and_reports_the_style(
    tmp_path: Path, sketch: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    style = REPO / "style_library" / "hokusai_great_wave.jpg"
    out = tmp_path / "render.png"
    assert main(render_args(sketch, models_dir, out, "--style", str(style))) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["style"] == "hokusai_great_wave" and report["width"] == 64
    image = np.asarray(Image.open(out))
    assert image.shape == (report["height"], 64, 3) and image.std() > 0
    again = tmp_path / "again.png"
    assert main(render_args(sketch, models_dir, again, "--style", str(style))) == 0
    assert np.array_equal(np.asarray(Image.open(again)), image)  # same seed, same pixels


def test_render_picks_the_best_library_match_for_the_prompt(
    tmp_path: Path, sketch: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sketch_rag.retrieval.tiny_clip import write_tiny_clip

    write_tiny_clip(models_dir)
    library = tmp_path / "styles"
    library.mkdir()
    for name in ("monet_water_lilies.jpg", "hokusai_great_wave.jpg"):
        shutil.copy(REPO / "style_library" / name, library / name)
    out = tmp_path / "render.png"
    args = render_args(sketch, models_dir, out, "--library", str(library)) + ["--store", str(tmp_path / "store")]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path(report["style_path"]).name in {"monet_water_lilies.jpg", "hokusai_great_wave.jpg"}
    assert isinstance(report["style_score"], float) and out.is_file()


def test_render_without_models_names_the_folder_and_what_to_download(
    tmp_path: Path, sketch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    style = REPO / "style_library" / "hokusai_great_wave.jpg"
    assert main(render_args(sketch, tmp_path / "empty", tmp_path / "o.png", "--style", str(style))) == 2
    error = capsys.readouterr().err
    assert "checkpoints" in error and "v1-5-pruned-emaonly.safetensors" in error
