"""``sketch-rag render --sampler/--clip-skip``: the flags reach the render, and unknown values are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sketch_rag.cli.main import main
from tests.helpers.paths import STYLE_LIBRARY


def render(sketch: Path, models_dir: Path, out: Path, *extra: str) -> list[str]:
    style = STYLE_LIBRARY / "hokusai_great_wave.jpg"
    return [
        "render",
        *("--sketch", str(sketch), "--prompt", "a watercolor house", "--style", str(style)),
        *("--models-dir", str(models_dir), "--out", str(out), "--steps", "2", "--width", "64", "--device", "cpu"),
        *extra,
    ]


def test_sampler_and_clip_skip_flags_change_the_render_and_are_reported(
    tmp_path: Path, example_sketches: list[Path], models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sketch = next(p for p in example_sketches if p.stem == "sketch_house")
    images = {}
    for name, extra in {
        "default": (),
        "uni_pc": ("--sampler", "uni_pc", "--clip-skip", "1"),
        "lcm": ("--sampler", "lcm", "--guidance-scale", "1.0"),
        "skip2": ("--clip-skip", "2"),
    }.items():
        out = tmp_path / f"{name}.png"
        assert main(render(sketch, models_dir, out, *extra)) == 0
        report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        images[name] = np.asarray(Image.open(out))
        if name == "lcm":
            assert report["sampler"] == "lcm" and report["clip_skip"] == 1
        if name == "skip2":
            assert report["sampler"] == "uni_pc" and report["clip_skip"] == 2
    assert np.array_equal(images["default"], images["uni_pc"])
    assert not np.array_equal(images["default"], images["lcm"])
    assert not np.array_equal(images["default"], images["skip2"])


@pytest.mark.parametrize(("flag", "value"), [("--sampler", "k_euler"), ("--clip-skip", "3")])
def test_an_unknown_sampler_or_clip_skip_is_refused_with_the_choices(
    tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(render(tmp_path / "sketch.png", models_dir, tmp_path / "out.png", flag, value))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"invalid choice: '{value}'" in err or f"invalid choice: {value}" in err
    assert ("uni_pc" in err and "dpmpp_2m_karras" in err) if flag == "--sampler" else "1, 2" in err
