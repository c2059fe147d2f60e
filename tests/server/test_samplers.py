"""The sampler and clip_skip inputs inside a real ComfyUI: every sampler renders through ``POST /prompt``, and graphs
saved before the inputs existed validate and render exactly as before."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sketch_rag.cli.comfyui_client import ComfyClient, JobFailed, PromptRejected
from sketch_rag.cli.workflows import bind, load_api_workflow, targets, tiny_models, validate_graph
from sketch_rag.rendering.schedulers import SAMPLER_NAMES
from sketch_rag.tiny_models.sd import CHECKPOINT_NAME, CONTROLNET_NAMES, IMAGE_ENCODER_NAME, IP_ADAPTER_NAMES

pytestmark = pytest.mark.slow

SAMPLER = "SketchRAGHybridSampler"
NEW_INPUTS = ("sampler", "clip_skip")


def graph(sketch: str, style: str, **sampler: Any) -> dict[str, Any]:
    """Sketch -> edges, tiny pipeline, style image -> Hybrid Sampler -> SaveImage; no sampler/clip_skip unless given."""
    settings = {
        "pipeline": ["3", 0],
        "prompt": "a watercolor house",
        "negative_prompt": "blurry",
        "edges": ["2", 0],
        "style": ["4", 0],
        "style_weights": "",
        "controlnet_conditioning_scale": 1.5,
        "control_guidance_start": 0.0,
        "control_guidance_end": 1.0,
        "ip_adapter_scale": 0.8,
        "ip_adapter_mode": "style",
        "num_inference_steps": 3,
        "guidance_scale": 7.5,
        "seed": 21,
        "width": 0,
        "height": 64,
        "batch_size": 1,
        **sampler,
    }
    edges = {"low_threshold": 50, "high_threshold": 150, "auto_threshold": False, "resolution": 64, "blur": 0.0}
    models = {"checkpoint": CHECKPOINT_NAME, "controlnet": CONTROLNET_NAMES[0], "ip_adapter": IP_ADAPTER_NAMES[0]}
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": sketch}},
        "2": {"class_type": "SketchRAGCannySketchPreprocessor", "inputs": {"image": ["1", 0], **edges, "thicken": 0}},
        "3": {
            "class_type": "SketchRAGHybridPipelineLoader",
            "inputs": {
                **models,
                "image_encoder": IMAGE_ENCODER_NAME,
                "dtype": "auto",
                "attention_slicing": False,
                "vae_tiling": False,
            },
        },
        "4": {"class_type": "LoadImage", "inputs": {"image": style}},
        "5": {"class_type": SAMPLER, "inputs": settings},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "tests/samplers"}},
    }


@pytest.fixture(scope="module")
def inputs(comfy: ComfyClient, example_sketches: list[Path]) -> tuple[str, str]:
    sketch = next(p for p in example_sketches if p.stem == "sketch_house")
    style = Path(__file__).resolve().parents[2] / "style_library" / "monet_water_lilies.jpg"
    return comfy.upload_image(sketch.read_bytes(), sketch.name), comfy.upload_image(style.read_bytes(), style.name)


def render(comfy: ComfyClient, sketch_and_style: tuple[str, str], **sampler: Any) -> np.ndarray:
    data = comfy.run(graph(*sketch_and_style, **sampler), "6")[0]
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_the_sampler_lists_the_new_inputs_as_optional_with_defaults(comfy: ComfyClient) -> None:
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


def test_every_sampler_renders_through_post_prompt_and_each_differs(comfy: ComfyClient, inputs) -> None:
    renders = {name: render(comfy, inputs, sampler=name) for name in SAMPLER_NAMES}
    for name, image in renders.items():
        assert image.shape[0] == 64 and image.std() > 0, name
    assert len({image.tobytes() for image in renders.values()}) == len(SAMPLER_NAMES)
    assert np.array_equal(render(comfy, inputs, sampler="euler_ancestral"), renders["euler_ancestral"])


def test_a_graph_without_the_new_inputs_renders_as_the_defaults(comfy: ComfyClient, inputs) -> None:
    before = render(comfy, inputs)  # a graph saved before sampler/clip_skip existed
    assert np.array_equal(before, render(comfy, inputs, sampler="uni_pc", clip_skip=1))
    assert not np.array_equal(before, render(comfy, inputs, clip_skip=2))
    assert not np.array_equal(before, render(comfy, inputs, sampler="lcm", guidance_scale=1.0))


def test_an_unknown_sampler_or_clip_skip_is_refused_before_sampling(comfy: ComfyClient, inputs) -> None:
    before = render(comfy, inputs)
    # ComfyUI 0.3.75 does not hold an optional V3 combo to its options: the engine's check names the choices.
    with pytest.raises(JobFailed) as failed:
        comfy.run(graph(*inputs, sampler="k_euler"), "6")
    assert "sampler is 'k_euler'; pick one of euler, euler_ancestral" in str(failed.value)
    with pytest.raises(PromptRejected) as rejected:  # an INT past its max: ComfyUI's own validation
        comfy.run(graph(*inputs, clip_skip=3), "6")
    assert "clip_skip" in str(rejected.value)
    assert np.array_equal(render(comfy, inputs), before)  # the warm pipeline renders as before


def test_the_shipped_workflow_validates_with_and_without_the_new_inputs(comfy: ComfyClient) -> None:
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
