"""The Canny Sketch Preprocessor inside a real ComfyUI, driven through its HTTP API."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sketch_rag.cli.comfyui_client import ComfyClient, JobFailed, PromptRejected
from sketch_rag.cli.comfyui_server import ComfyServer
from sketch_rag.rendering.canny import CannySettings, sketch_to_edges

NODE = "SketchRAGCannySketchPreprocessor"


def canny_graph(image_name: str, prefix: str, batch: int = 1, **settings: Any) -> dict[str, Any]:
    inputs = {
        "image": ["2", 0], "low_threshold": 50, "high_threshold": 150, "auto_threshold": False,
        "resolution": 0, "blur": 0.0, "thicken": 0, **settings,
    }
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image_name}},
        "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": batch}},
        "3": {"class_type": NODE, "inputs": inputs},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": f"tests/{prefix}"}},
    }


def as_loaded_by_comfyui(path: Path) -> np.ndarray:
    """What LoadImage hands a node: RGB float32 in [0, 1]."""
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


@pytest.fixture(scope="module")
def uploaded(comfy: ComfyClient, example_sketches: list[Path]) -> dict[str, Path]:
    chosen = [p for p in example_sketches if p.stem in ("sketch_house", "sketch_turtle", "sketch_hot_air_balloon")]
    return {comfy.upload_image(p.read_bytes(), p.name): p for p in chosen}


def test_server_lists_the_node_with_its_inputs_and_defaults(comfy: ComfyClient) -> None:
    info = comfy.object_info()[NODE]
    assert info["display_name"] == "Canny Sketch Preprocessor"
    required = info["input"]["required"]
    assert list(required) == [
        "image", "low_threshold", "high_threshold", "auto_threshold", "resolution", "blur", "thicken",
    ]
    assert required["low_threshold"][1]["default"] == 50 and required["high_threshold"][1]["default"] == 150
    assert required["low_threshold"][1]["max"] == 255
    assert all("tooltip" in spec[1] for spec in required.values())
    assert info["output"] == ["IMAGE"] and info["description"]
    # Optional, so API graphs saved before it existed still queue (and run as canny).
    mode = info["input"]["optional"]["mode"]
    assert mode[1]["default"] == "canny" and "tooltip" in mode[1]
    assert mode[0] == "COMBO" and mode[1]["options"] == ["canny", "lines"] or mode[0] == ["canny", "lines"]


def test_load_canny_save_gives_the_engines_edges_on_real_sketches(
    comfy: ComfyClient, uploaded: dict[str, Path]
) -> None:
    for name, path in uploaded.items():
        [png] = comfy.run(canny_graph(name, path.stem), output_node="4")
        served = np.asarray(Image.open(io.BytesIO(png)))
        expected = sketch_to_edges(as_loaded_by_comfyui(path))
        assert served.shape == expected.shape
        assert np.array_equal(served, expected), path.name


def test_a_graph_saved_before_mode_existed_still_runs_as_canny(comfy: ComfyClient, uploaded: dict[str, Path]) -> None:
    name, path = next(iter(uploaded.items()))
    graph = canny_graph(name, "no_mode")
    assert "mode" not in graph["3"]["inputs"]
    [png] = comfy.run(graph, output_node="4")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), sketch_to_edges(as_loaded_by_comfyui(path)))


def test_a_one_pixel_wide_sketch_20000_pixels_long_fails_with_the_limit_and_the_server_keeps_working(
    comfy: ComfyClient, uploaded: dict[str, Path]
) -> None:
    png_bytes = io.BytesIO()
    Image.new("L", (20000, 1), 255).save(png_bytes, format="PNG")
    name = comfy.upload_image(png_bytes.getvalue(), "one_pixel_tall.png")
    with pytest.raises(JobFailed, match=r"sketch is 20000×1 pixels.*16384 pixels a side.*Downscale"):
        comfy.wait(comfy.queue_prompt(canny_graph(name, "too_long", mode="lines")))
    name, path = next(iter(uploaded.items()))
    [png] = comfy.run(canny_graph(name, "after_too_long", mode="lines"), output_node="4")
    expected = sketch_to_edges(as_loaded_by_comfyui(path), CannySettings(mode="lines"))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)


@pytest.mark.parametrize(
    ("settings", "error_type", "names"),
    [
        ({"high_threshold": 300}, "custom_validation_failed", "high_threshold is 300"),
        ({"low_threshold": -5}, "custom_validation_failed", "low_threshold is -5"),
        ({"low_threshold": 200, "high_threshold": 100}, "custom_validation_failed", "low_threshold (200) is above"),
        ({"low_threshold": "abc"}, "custom_validation_failed", "low_threshold must be a whole number"),
        ({"thicken": "x"}, "invalid_input_type", "thicken"),
        ({"resolution": 99999}, "value_bigger_than_max", "resolution"),
        ({"blur": -1.0}, "value_smaller_than_min", "blur"),
        ({"mode": "edges"}, "custom_validation_failed", "mode is 'edges'; use one of canny, lines"),
        ({"mode": 3}, "custom_validation_failed", "mode is '3'"),
    ],
)
def test_invalid_inputs_are_refused_with_http_400_naming_the_input(
    comfy: ComfyClient, uploaded: dict[str, Path], settings: dict[str, Any], error_type: str, names: str
) -> None:
    name = next(iter(uploaded))
    with pytest.raises(PromptRejected) as rejected:
        comfy.queue_prompt(canny_graph(name, "invalid", **settings))
    assert rejected.value.status == 400
    errors = rejected.value.body["node_errors"]["3"]["errors"]
    assert any(e["type"] == error_type and names in e["details"] for e in errors), errors


def test_the_pack_imports_cleanly(comfy_server: ComfyServer, comfy: ComfyClient) -> None:
    comfy.object_info()
    assert comfy_server.import_failures() == []
    assert "sketch_rag" in comfy_server.log_text()


def test_a_failing_job_reports_the_limit_and_the_server_keeps_working(
    comfy: ComfyClient, uploaded: dict[str, Path]
) -> None:
    too_big = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8192, "height": 512, "batch_size": 1, "color": 0}},
        "2": {"class_type": NODE, "inputs": {
            "image": ["1", 0], "low_threshold": 50, "high_threshold": 150, "auto_threshold": False,
            "resolution": 4096, "blur": 0.0, "thicken": 0}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    with pytest.raises(JobFailed, match="resized sketch is 65536×4096 pixels.*limit"):
        comfy.wait(comfy.queue_prompt(too_big))
    name, path = next(iter(uploaded.items()))
    [png] = comfy.run(canny_graph(name, "after_failure"), output_node="4")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), sketch_to_edges(as_loaded_by_comfyui(path)))
