"""The Canny Sketch Preprocessor inside a real ComfyUI, driven through its HTTP API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sketch_rag.cli.comfyui_client import JobFailed, PromptRejected
from sketch_rag.cli.comfyui_server import ComfyServer
from sketch_rag.rendering.canny import CannySettings, sketch_to_edges
from tests.helpers.client import RecordingClient
from tests.helpers.graphs import CANNY, Graph, Node, Schemas
from tests.helpers.images import as_loaded_by_comfyui, png_of
from tests.helpers.pixels import raw_pixels

NODE = CANNY


@dataclass(frozen=True)
class CannyGraph:
    graph: Graph
    canny: Node
    save: Node


def canny_graph(schemas: Schemas, image_name: str, prefix: str, batch: int = 1, **settings: Any) -> CannyGraph:
    """LoadImage → RepeatImageBatch → Canny (its defaults, ``settings`` over them) → SaveImage."""
    graph = Graph(schemas)
    batched = graph.node("RepeatImageBatch", image=graph.node("LoadImage", image=image_name), amount=batch)
    canny = graph.node(CANNY, image=batched, **settings)
    return CannyGraph(graph, canny, graph.node("SaveImage", images=canny, filename_prefix=f"tests/{prefix}"))


def saved(comfy: RecordingClient, graph: CannyGraph) -> np.ndarray:
    [data] = comfy.images(comfy.run_recorded(graph.graph), graph.save)
    return raw_pixels(data)


@pytest.fixture(scope="module")
def uploaded(comfy: RecordingClient, example_sketches: list[Path]) -> dict[str, Path]:
    chosen = [p for p in example_sketches if p.stem in ("sketch_house", "sketch_turtle", "sketch_hot_air_balloon")]
    return {comfy.upload_image(p.read_bytes(), p.name): p for p in chosen}


def test_server_lists_the_node_with_its_inputs_and_defaults(comfy: RecordingClient) -> None:
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
    comfy: RecordingClient, schemas: Schemas, uploaded: dict[str, Path]
) -> None:
    for name, path in uploaded.items():
        served = saved(comfy, canny_graph(schemas, name, path.stem))
        expected = sketch_to_edges(as_loaded_by_comfyui(path))
        assert served.shape == expected.shape
        assert np.array_equal(served, expected), path.name


def test_a_graph_saved_before_mode_existed_still_runs_as_canny(
    comfy: RecordingClient, schemas: Schemas, uploaded: dict[str, Path]
) -> None:
    name, path = next(iter(uploaded.items()))
    graph = canny_graph(schemas, name, "no_mode")
    assert "mode" not in graph.graph.inputs(graph.canny)
    assert np.array_equal(saved(comfy, graph), sketch_to_edges(as_loaded_by_comfyui(path)))


def test_a_one_pixel_wide_sketch_20000_pixels_long_fails_with_the_limit_and_the_server_keeps_working(
    comfy: RecordingClient, schemas: Schemas, uploaded: dict[str, Path]
) -> None:
    name = comfy.upload_image(png_of(np.full((1, 20000), 255, np.uint8)), "one_pixel_tall.png")
    with pytest.raises(JobFailed, match=r"sketch is 20000×1 pixels.*16384 pixels a side.*Downscale"):
        comfy.run_recorded(canny_graph(schemas, name, "too_long", mode="lines").graph)
    name, path = next(iter(uploaded.items()))
    expected = sketch_to_edges(as_loaded_by_comfyui(path), CannySettings(mode="lines"))
    assert np.array_equal(saved(comfy, canny_graph(schemas, name, "after_too_long", mode="lines")), expected)


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
    comfy: RecordingClient, schemas: Schemas, uploaded: dict[str, Path], settings: dict[str, Any], error_type: str,
    names: str,
) -> None:
    graph = canny_graph(schemas, next(iter(uploaded)), "invalid", **settings)
    with pytest.raises(PromptRejected) as rejected:
        comfy.queue_prompt(graph.graph.api())
    assert rejected.value.status == 400
    errors = rejected.value.body["node_errors"][graph.canny.id]["errors"]
    assert any(e["type"] == error_type and names in e["details"] for e in errors), errors


def test_the_pack_imports_cleanly(comfy_server: ComfyServer, comfy: RecordingClient) -> None:
    comfy.object_info()
    assert comfy_server.import_failures() == []
    assert "sketch_rag" in comfy_server.log_text()


def test_a_failing_job_reports_the_limit_and_the_server_keeps_working(
    comfy: RecordingClient, schemas: Schemas, uploaded: dict[str, Path]
) -> None:
    too_big = Graph(schemas)
    edges = too_big.node(CANNY, image=too_big.node("EmptyImage", width=8192, height=512), resolution=4096)
    too_big.node("PreviewImage", images=edges)
    with pytest.raises(JobFailed, match="resized sketch is 65536×4096 pixels.*limit"):
        comfy.run_recorded(too_big)
    name, path = next(iter(uploaded.items()))
    assert np.array_equal(saved(comfy, canny_graph(schemas, name, "after_failure")),
                          sketch_to_edges(as_loaded_by_comfyui(path)))
