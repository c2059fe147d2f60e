"""``sketch-rag render`` in-process: sketch + prompt + style (image or library) → PNG, printing the style used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sketch_rag.cli.main import main
from sketch_rag.imaging import read_image
from tests.helpers.paths import STYLE_LIBRARY


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
    style = STYLE_LIBRARY / "hokusai_great_wave.jpg"
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
    from sketch_rag.tiny_models.clip import write_tiny_clip

    write_tiny_clip(models_dir)
    library = tmp_path / "styles"
    library.mkdir()
    for name in ("monet_water_lilies.jpg", "hokusai_great_wave.jpg"):
        shutil.copy(STYLE_LIBRARY / name, library / name)
    out = tmp_path / "render.png"
    args = render_args(sketch, models_dir, out, "--library", str(library)) + ["--store", str(tmp_path / "store")]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path(report["style_path"]).name in {"monet_water_lilies.jpg", "hokusai_great_wave.jpg"}
    assert isinstance(report["style_score"], float) and out.is_file()


def test_render_without_models_names_the_folder_and_what_to_download(
    tmp_path: Path, sketch: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    style = STYLE_LIBRARY / "hokusai_great_wave.jpg"
    assert main(render_args(sketch, tmp_path / "empty", tmp_path / "o.png", "--style", str(style))) == 2
    error = capsys.readouterr().err
    assert "checkpoints" in error and "v1-5-pruned-emaonly.safetensors" in error


def test_render_conditions_on_the_sketchs_lines_by_default_and_on_canny_edges_when_asked(
    tmp_path: Path, sketch: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sketch_rag import rendering
    from sketch_rag.rendering import canny

    # The tiny ControlNet barely moves a 64 px render, so check the control image handed to the pipeline.
    made: list[np.ndarray] = []
    original = canny.sketch_to_edges

    def recording(image: np.ndarray, settings: canny.CannySettings | None = None) -> np.ndarray:
        made.append(original(image, settings))
        return made[-1]

    monkeypatch.setattr(rendering, "sketch_to_edges", recording)  # the CLI takes it from the engine's face
    style = ["--style", str(STYLE_LIBRARY / "hokusai_great_wave.jpg")]
    for extra in ([], ["--edges", "lines"], ["--edges", "canny"]):
        assert main([*render_args(sketch, models_dir, tmp_path / "out.png", *style), *extra]) == 0
    default, lines, edges = made
    assert np.array_equal(default, lines) and not np.array_equal(lines, edges)
    assert np.array_equal(lines, original(read_image(sketch), canny.CannySettings(mode="lines")))


def test_render_with_upscale_adds_a_hires_pass(tmp_path: Path, sketch: Path, models_dir: Path) -> None:
    out = tmp_path / "hires.png"
    style = ["--style", str(STYLE_LIBRARY / "hokusai_great_wave.jpg")]
    assert main([*render_args(sketch, models_dir, out, *style), "--upscale", "1.5"]) == 0
    with Image.open(out) as image:
        assert image.size == (96, 96)
