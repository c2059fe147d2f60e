"""The Hybrid Sampler's hires pass and inpaint region inside a real ComfyUI, on the tiny models.

What the engine guarantees (pixels kept outside the mask, every hires step counted) is the unit tier's; here the
wiring: LoadImage's alpha reaches the sampler as its mask with ComfyUI's polarity, and a hires pass is one more
sampler run on the pipeline ComfyUI already holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from sketch_rag.tiny_models.sd import CHECKPOINT_NAME, CONTROLNET_NAMES, IMAGE_ENCODER_NAME, IP_ADAPTER_NAMES
from tests.helpers.client import RecordingClient
from tests.helpers.graphs import CANNY, PIPELINE_LOADER, SAMPLER, Graph, Node, Schemas
from tests.helpers.images import png_of
from tests.helpers.pixels import pixels

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class RefineGraph:
    graph: Graph
    picture: Node
    loader: Node
    sampler: Node
    render: Node
    init: Node


def refine_graph(schemas: Schemas, picture: str, *, inpaint: bool = False, **sampler: Any) -> RefineGraph:
    """LoadImage(RGBA) → its RGB is the style, the edges' source and (inpainting) the init image; its alpha the mask."""
    graph = Graph(schemas)
    loaded = graph.node("LoadImage", image=picture)
    edges = graph.node(CANNY, image=loaded)
    loader = graph.node(PIPELINE_LOADER, checkpoint=CHECKPOINT_NAME, controlnet=CONTROLNET_NAMES[0],
                        ip_adapter=IP_ADAPTER_NAMES[0], image_encoder=IMAGE_ENCODER_NAME)
    region = {"init_image": loaded.out(0), "mask": loaded.out(1)} if inpaint else {}
    sampled = graph.node(SAMPLER, pipeline=loader, prompt="a watercolor house", negative_prompt="blurry", edges=edges,
                         style=loaded, num_inference_steps=3, seed=4, width=64, height=64, **region, **sampler)
    render = graph.node("SaveImage", images=sampled, filename_prefix="tests/refine")
    init = graph.node("SaveImage", images=loaded, filename_prefix="tests/refine_init")
    return RefineGraph(graph, loaded, loader, sampled, render, init)


@pytest.fixture(scope="module")
def picture(comfy: RecordingClient) -> str:
    """64×64 noise with a house-like outline, transparent (= masked for LoadImage) in a rectangle."""
    rng = np.random.default_rng(5)
    rgba = np.concatenate([(rng.random((64, 64, 3)) * 255).astype(np.uint8), np.full((64, 64, 1), 255, np.uint8)], 2)
    rgba[20:44, 8:56, :3] = 255
    rgba[16:48, 16:40, 3] = 0
    return comfy.upload_image(png_of(rgba, "RGBA"), "refine_rgba.png")


def test_hires_pass_renders_at_the_upscaled_size_in_one_warm_pipeline(
    comfy: RecordingClient, schemas: Schemas, picture: str
) -> None:
    base = refine_graph(schemas, picture)
    first = comfy.run_recorded(base.graph)
    hires = refine_graph(schemas, picture, upscale=1.5, hires_denoise=0.5, hires_steps=4)
    second = comfy.run_recorded(hires.graph)
    assert pixels(comfy.images(first, base.render)[0]).shape == (64, 64, 3)
    assert pixels(comfy.images(second, hires.render)[0]).shape == (96, 96, 3)
    assert second.did_run(hires.sampler) and second.was_cached(hires.loader)  # no second load of the pipeline


def test_the_mask_from_loadimages_alpha_bounds_what_the_render_changes(
    comfy: RecordingClient, schemas: Schemas, picture: str
) -> None:
    graph = refine_graph(schemas, picture, inpaint=True)
    run = comfy.run_recorded(graph.graph)
    render = pixels(comfy.images(run, graph.render)[0])
    init = pixels(comfy.images(run, graph.init)[0])  # the init image through the same save path
    transparent = np.zeros((64, 64), bool)
    transparent[16:48, 16:40] = True
    changed = (render != init).any(axis=-1)
    assert changed.any() and not changed[~transparent].any(), "the render changed pixels outside the mask"
