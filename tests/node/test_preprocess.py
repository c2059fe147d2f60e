"""The Canny Sketch Preprocessor node in-process: ComfyUI's IMAGE in, the engine's edges out as an IMAGE."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sketch_rag.errors import InvalidImageError, InvalidParameterError
from sketch_rag.nodes.preprocess import CannySketchPreprocessor as Node
from sketch_rag.rendering.canny import CannySettings, sketch_to_edges
from tests.helpers.images import as_loaded_by_comfyui

Batch = Callable[..., torch.Tensor]


def edges_of(image: torch.Tensor, **settings: Any) -> torch.Tensor:
    [edges] = Node.execute(image, **settings).result
    return edges


def stroke_page(height: int = 48, width: int = 64) -> np.ndarray:
    """White paper with one black rectangle outline, RGB float32."""
    page = np.ones((height, width, 3), np.float32)
    page[10:12, 8:40] = page[30:32, 8:40] = 0.0
    page[10:32, 8:10] = page[10:32, 38:40] = 0.0
    return page


def test_the_schema_lists_the_inputs_in_ui_order_with_defaults_and_tooltips() -> None:
    info = Node.GET_NODE_INFO_V1()  # what /object_info serves for the node
    assert info["name"] == "SketchRAGCannySketchPreprocessor" and info["display_name"] == "Canny Sketch Preprocessor"
    required, optional = info["input"]["required"], info["input"]["optional"]
    assert list(required) == ["image", "low_threshold", "high_threshold", "auto_threshold", "resolution", "blur",
                              "thicken"]
    assert list(optional) == ["mode"] and optional["mode"][1]["default"] == "canny"
    assert (required["low_threshold"][1]["default"], required["high_threshold"][1]["default"]) == (50, 150)
    assert all("tooltip" in spec[1] for spec in {**required, **optional}.values())
    assert info["output"] == ["IMAGE"] and info["description"]


def test_one_sketch_becomes_the_engines_edges_as_a_float_image_batch(house_sketch: np.ndarray, to_image_batch: Batch
                                                                     ) -> None:
    edges = edges_of(to_image_batch(house_sketch))
    expected = sketch_to_edges(house_sketch)
    assert edges.shape == (1, *expected.shape) and edges.dtype == torch.float32
    assert set(torch.unique(edges).tolist()) == {0.0, 1.0}
    assert np.array_equal((edges[0].numpy() * 255).astype(np.uint8), expected)


def test_an_image_without_its_batch_axis_is_taken_as_a_batch_of_one(house_sketch: np.ndarray) -> None:
    single = torch.from_numpy(house_sketch)  # (H, W, C), as some packs hand on one image
    assert torch.equal(edges_of(single), edges_of(single.unsqueeze(0)))


def test_batches_resolution_and_options_pass_through_in_order(
    example_sketches: list[Path], to_image_batch: Batch
) -> None:
    house, turtle = (as_loaded_by_comfyui(p) for p in example_sketches if p.stem in ("sketch_house", "sketch_turtle"))
    turtle = np.asarray(Image.fromarray((turtle * 255).astype(np.uint8)).resize(house.shape[1::-1]),
                        np.float32) / 255.0  # one batch holds one size
    settings: dict[str, Any] = {"resolution": 256, "auto_threshold": True, "blur": 1.0, "thicken": 1}
    edges = edges_of(to_image_batch(house, turtle), **settings)
    assert edges.shape[0] == 2 and min(edges.shape[1:3]) == 256
    for got, sketch in zip(edges, (house, turtle), strict=True):
        expected = sketch_to_edges(sketch, CannySettings(**settings))
        assert np.array_equal((got.numpy() * 255).astype(np.uint8), expected)
    assert not torch.equal(edges[0], edges[1])


def test_lines_mode_gives_the_engines_centre_lines_on_real_sketches(example_sketches: list[Path]) -> None:
    for path in (p for p in example_sketches if p.stem in ("sketch_house", "sketch_turtle", "sketch_hot_air_balloon")):
        sketch = as_loaded_by_comfyui(path)
        lines = (edges_of(torch.from_numpy(sketch)[None], mode="lines")[0].numpy() * 255).astype(np.uint8)
        expected = sketch_to_edges(sketch, CannySettings(mode="lines"))
        assert np.array_equal(lines, expected), path.name
        assert not np.array_equal(lines, sketch_to_edges(sketch)), f"{path.name}: lines differ from canny"


def test_lines_mode_batches_and_resizes_like_canny(house_sketch: np.ndarray, to_image_batch: Batch) -> None:
    settings: dict[str, Any] = {"resolution": 768, "blur": 0.5, "thicken": 1, "mode": "lines"}
    edges = edges_of(to_image_batch(house_sketch, house_sketch), **settings)
    expected = sketch_to_edges(house_sketch, CannySettings(**settings))
    assert edges.shape == (2, 768, 768, 3) and expected.shape == (768, 768, 3)
    for got in edges:
        assert np.array_equal((got.numpy() * 255).astype(np.uint8), expected)


def test_a_blank_page_in_lines_mode_gives_an_empty_map(to_image_batch: Batch) -> None:
    edges = edges_of(to_image_batch(np.ones((64, 96, 3), np.float32)), mode="lines")
    assert edges.shape == (1, 64, 96, 3) and not edges.any()


def test_gray_and_rgb_images_of_one_sketch_give_the_same_edges(to_image_batch: Batch) -> None:
    page = stroke_page()
    gray = page[:, :, :1]  # (B, H, W, 1): a one-channel IMAGE some packs produce
    assert torch.equal(edges_of(to_image_batch(gray)), edges_of(to_image_batch(page)))


def test_transparent_pixels_count_as_paper(to_image_batch: Batch) -> None:
    page = stroke_page()
    strokes = page[:, :, :1] < 0.5
    # Black strokes on a transparent sheet, stored as most editors do: transparent pixels are black too.
    rgba = np.concatenate([np.zeros_like(page), strokes.astype(np.float32)], axis=2)
    with_alpha = edges_of(to_image_batch(rgba))
    assert with_alpha.shape == (1, *page.shape) and with_alpha.any()  # RGBA in, the usual 3-channel IMAGE out
    assert torch.equal(with_alpha, edges_of(to_image_batch(page)))
    assert not edges_of(to_image_batch(rgba[:, :, :3])).any()  # without its alpha the sheet is all black


def test_a_light_on_dark_sketch_gives_the_same_edges(to_image_batch: Batch) -> None:
    page = stroke_page()
    assert torch.equal(edges_of(to_image_batch(1.0 - page)), edges_of(to_image_batch(page)))


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.ones((8, 8, 3), np.float32), "must be an IMAGE tensor, got ndarray"),
        ("sketch.png", "must be an IMAGE tensor, got str"),
        (torch.ones(0, 8, 8, 3), r"shape \(0, 8, 8, 3\); expected an IMAGE batch"),
        (torch.ones(8, 8), r"shape \(8, 8\); expected an IMAGE batch"),
        (torch.ones(1, 8, 8, 5), r"shape \(8, 8, 5\); expected .* 1 to 4 channels"),
        (torch.full((1, 8, 8, 3), float("nan")), "NaN or infinite"),
        (torch.full((1, 8, 8, 3), 255.0), "pixel values from 255 to 255; images must lie in 0..1"),
    ],
)
def test_what_is_not_an_image_is_refused_with_what_was_given(image: Any, message: str) -> None:
    with pytest.raises(InvalidImageError, match=message):
        Node.execute(image)


def test_a_sketch_past_the_size_limits_is_refused_with_the_limit() -> None:
    with pytest.raises(InvalidImageError, match=r"sketch is 20000×1 pixels.*16384 pixels a side.*Downscale"):
        Node.execute(torch.ones(1, 1, 20000, 3), mode="lines")
    with pytest.raises(InvalidImageError, match=r"resized sketch is 65536×4096 pixels.*limit"):
        Node.execute(torch.zeros(1, 512, 8192, 3), resolution=4096)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"low_threshold": 200, "high_threshold": 100}, r"low_threshold \(200\) is above"),
        ({"high_threshold": 300}, "high_threshold is 300"),
        ({"resolution": 99999}, "resolution"),
        ({"blur": -1.0}, "blur is -1.0"),
        ({"thicken": 99}, "thicken is 99"),
        ({"mode": "edges"}, "mode is 'edges'; use one of canny, lines"),
    ],
)
def test_out_of_range_settings_fail_in_execute_too(house_sketch: np.ndarray, settings: dict[str, Any],
                                                   message: str) -> None:
    # ComfyUI validates before the run; a caller of execute (another pack, a script) still gets the engine's check.
    with pytest.raises(InvalidParameterError, match=message):
        Node.execute(torch.from_numpy(house_sketch)[None], **settings)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"low_threshold": 50, "high_threshold": 150}, None),
        ({"low_threshold": 50.0, "high_threshold": 150, "mode": "lines"}, None),
        ({"low_threshold": "abc", "high_threshold": 150}, "low_threshold must be a whole number .* got 'abc'"),
        ({"low_threshold": 50, "high_threshold": True}, "high_threshold must be a whole number"),
        ({"low_threshold": 2.5, "high_threshold": 150}, "low_threshold must be a whole number"),
        ({"low_threshold": -5, "high_threshold": 150}, "low_threshold is -5"),
        ({"low_threshold": 200, "high_threshold": 100}, r"low_threshold \(200\) is above"),
        ({"low_threshold": 50, "high_threshold": 150, "mode": 3}, "mode is '3'"),
    ],
)
def test_validate_inputs_names_the_input_and_echoes_the_value(inputs: dict[str, Any], message: str | None) -> None:
    verdict = Node.validate_inputs(**inputs)
    if message is None:
        assert verdict is True
    else:
        assert isinstance(verdict, str)
        assert re.search(message, verdict), verdict
