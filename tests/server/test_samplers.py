"""The sampler and clip_skip inputs inside a real ComfyUI: every sampler renders through ``POST /prompt``, and graphs
saved before the inputs existed validate and render exactly as before."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sketch_rag.cli.comfyui_client import PromptRejected
from sketch_rag.cli.workflows import bind, load_api_workflow, targets, tiny_models, validate_graph
from sketch_rag.rendering.schedulers import SAMPLER_NAMES
from tests.helpers.client import RecordingClient
from tests.helpers.graphs import SAMPLER, Schemas, render_graph
from tests.helpers.pixels import pixels

pytestmark = pytest.mark.slow

NEW_INPUTS = ("sampler", "clip_skip")


def render(comfy: RecordingClient, schemas: Schemas, inputs: tuple[str, str], **sampler: Any) -> np.ndarray:
    """The tiny render of the house (seed 21); no sampler/clip_skip input unless given."""
    graph = render_graph(schemas, *inputs, prefix="tests/samplers", **sampler)
    return pixels(comfy.images(comfy.run_recorded(graph.graph), graph.save)[0])
def test_the_sampler_lists_the_new_inputs_as_optional_with_defaults(comfy: RecordingClient) -> None:
    info = comfy.object_info()[SAMPLER]
    optional = info["input"]["optional"]
    assert optional["sampler"][1]["options"] == list(SAMPLER_NAMES) and optional["sampler"][1]["default"] == "uni_pc"
    assert (optional["clip_skip"][1]["default"], optional["clip_skip"][1]["min"], optional["clip_skip"][1]["max"]) == (
        1,
        1,
        2,
    )
    # after every widget that existed before them (the hires/inpaint inputs came later still)
    assert info["input_order"]["optional"][:4] == ["style", "style_weights", *NEW_INPUTS]


def test_every_sampler_renders_through_post_prompt_and_each_differs(
    comfy: RecordingClient, schemas: Schemas, render_inputs: tuple[str, str]
) -> None:
    renders = {name: render(comfy, schemas, render_inputs, sampler=name) for name in SAMPLER_NAMES}
    for name, image in renders.items():
        assert image.shape[0] == 64 and image.std() > 0, name
    # ComfyUI's ddim is its euler on the same sigmas; every other sampler renders its own image
    assert np.array_equal(renders["ddim"], renders["euler"])
    assert len({image.tobytes() for image in renders.values()}) == len(SAMPLER_NAMES) - 1
    assert np.array_equal(render(comfy, schemas, render_inputs, sampler="euler_ancestral"), renders["euler_ancestral"])


def test_a_graph_without_the_new_inputs_renders_as_the_defaults(
    comfy: RecordingClient, schemas: Schemas, render_inputs: tuple[str, str]
) -> None:
    before = render(comfy, schemas, render_inputs)  # a graph saved before sampler/clip_skip existed
    assert np.array_equal(before, render(comfy, schemas, render_inputs, sampler="uni_pc", clip_skip=1))
    assert not np.array_equal(before, render(comfy, schemas, render_inputs, clip_skip=2))
    assert not np.array_equal(before, render(comfy, schemas, render_inputs, sampler="lcm", guidance_scale=1.0))


def test_an_unknown_sampler_or_clip_skip_is_refused_before_sampling(
    comfy: RecordingClient, schemas: Schemas, render_inputs: tuple[str, str]
) -> None:
    before = render(comfy, schemas, render_inputs)
    # ComfyUI 0.3.75 does not hold a V3 combo to its options: the node's validate_inputs does, before anything runs.
    with pytest.raises(PromptRejected) as unknown:
        render(comfy, schemas, render_inputs, sampler="k_euler")
    assert "sampler is 'k_euler', which is not one of its options ('euler', 'euler_ancestral'" in str(unknown.value)
    with pytest.raises(PromptRejected) as rejected:  # an INT past its max: ComfyUI's own validation
        render(comfy, schemas, render_inputs, clip_skip=3)
    assert "clip_skip" in str(rejected.value)
    assert np.array_equal(render(comfy, schemas, render_inputs), before)  # the warm pipeline renders as before


def test_the_shipped_workflow_validates_with_and_without_the_new_inputs(comfy: RecordingClient) -> None:
    info = comfy.object_info()
    shipped = load_api_workflow("sketch_to_render")
    api = bind(shipped, {k: v for k, v in tiny_models().items() if targets(shipped, k)})  # this server's models
    skip = targets(api, "sketch")
    assert validate_graph(api, info, skip_values=skip) == []
    old = {
        node_id: {**node, "inputs": {k: v for k, v in node["inputs"].items() if k not in NEW_INPUTS}}
        for node_id, node in api.items()
    }
    assert validate_graph(old, info, skip_values=skip) == []
    assert [api[n]["inputs"]["sampler"] for n in api if api[n]["class_type"] == SAMPLER] == ["uni_pc"]
