"""The sketch-rag command in-process: the Canny subcommand, the demo's model check, and `serve`'s cleanup."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from sketch_rag.cli.comfyui_server import free_port
from sketch_rag.cli.main import main
from sketch_rag.imaging import read_image
from sketch_rag.rendering.canny import CannySettings, sketch_to_edges


def test_canny_command_writes_the_engines_edges(
    tmp_path: Path, example_sketches: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    sketch, out = example_sketches[0], tmp_path / "out" / "edges.png"
    assert main(["canny", str(sketch), "--out", str(out), "--resolution", "256", "--auto-threshold"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["width"], report["height"]) == (256, 256)
    written = np.asarray(cv2.imread(str(out), cv2.IMREAD_COLOR_RGB))
    expected = sketch_to_edges(read_image(sketch), CannySettings(resolution=256, auto_threshold=True))
    assert np.array_equal(written, expected)


def test_canny_command_explains_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert main(["canny", str(broken), "--out", str(tmp_path / "e.png")]) == 2
    assert main(["canny", str(broken), "--out", str(tmp_path / "e.png"), "--low-threshold", "300"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("sketch-rag: error: ") for line in errors)
    assert not (tmp_path / "e.png").exists()


def test_the_demo_uses_real_models_also_under_the_controlnet_name_earlier_readmes_gave(tmp_path: Path) -> None:
    from sketch_rag.cli.demo_cmd import real_models_present
    from sketch_rag.cli.workflows import REAL_MODELS
    from sketch_rag.model_folders import FOLDER_OF_INPUT

    for field, name in REAL_MODELS.items():
        if field != "controlnet":
            (tmp_path / FOLDER_OF_INPUT[field] / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / FOLDER_OF_INPUT[field] / name).touch()
    assert real_models_present(tmp_path) is None  # no ControlNet at all: the demo falls back to tiny models
    (tmp_path / "controlnet").mkdir()
    (tmp_path / "controlnet" / "control_v11p_sd15_canny.pth").touch()
    assert real_models_present(tmp_path) == {**REAL_MODELS, "controlnet": "control_v11p_sd15_canny.pth"}
    (tmp_path / "controlnet" / REAL_MODELS["controlnet"]).touch()
    assert real_models_present(tmp_path) == REAL_MODELS  # the bundled workflow's own name wins


def test_a_signal_while_comfyui_starts_stops_it_rather_than_orphaning_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` turns SIGTERM into SystemExit; if it lands before ComfyUI answered, the child must go too."""
    from sketch_rag.cli import comfyui_server

    (tmp_path / "main.py").write_text("import time\ntime.sleep(600)\n")  # a ComfyUI that never answers
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def recording_popen(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        started.append(real_popen(*args, **kwargs))  # type: ignore[call-overload]
        return started[-1]

    def terminated(url: str) -> bool:
        raise SystemExit(143)

    monkeypatch.setattr(comfyui_server.subprocess, "Popen", recording_popen)
    monkeypatch.setattr(comfyui_server, "_answers", terminated)
    with pytest.raises(SystemExit):
        comfyui_server.start_server(tmp_path, port=free_port(), log_path=tmp_path / "log")
    assert len(started) == 1 and started[0].poll() is not None
