"""The Hybrid LoRA node inside a real ComfyUI: chained between loader and sampler, on the tiny models."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sketch_rag.cli.comfyui_client import ComfyClient, JobFailed
from sketch_rag.cli.comfyui_server import ComfyServer
from sketch_rag.tiny_models.lora import LORA_NAMES
from sketch_rag.tiny_models.sd import CHECKPOINT_NAME, CONTROLNET_NAMES, IMAGE_ENCODER_NAME, IP_ADAPTER_NAMES

pytestmark = pytest.mark.slow

LORA_NODE = "SketchRAGHybridLoRA"
LOADED = "Sketch RAG: loaded checkpoint"


def graph(sketch: str, style: str, loras: list[tuple[str, float]]) -> dict[str, Any]:
    """Load Image → Canny → loader → LoRA × n → sampler → Save Image."""
    nodes: dict[str, Any] = {
        "1": {"class_type": "LoadImage", "inputs": {"image": sketch}},
        "2": {
            "class_type": "SketchRAGCannySketchPreprocessor",
            "inputs": {
                "image": ["1", 0],
                "low_threshold": 50,
                "high_threshold": 150,
                "auto_threshold": False,
                "resolution": 64,
                "blur": 0.0,
                "thicken": 0,
            },
        },
        "3": {
            "class_type": "SketchRAGHybridPipelineLoader",
            "inputs": {
                "checkpoint": CHECKPOINT_NAME,
                "controlnet": CONTROLNET_NAMES[0],
                "ip_adapter": IP_ADAPTER_NAMES[0],
                "image_encoder": IMAGE_ENCODER_NAME,
                "dtype": "auto",
                "attention_slicing": False,
                "vae_tiling": False,
            },
        },
        "4": {"class_type": "LoadImage", "inputs": {"image": style}},
    }
    pipeline = ["3", 0]
    for i, (name, strength) in enumerate(loras):
        node_id = f"l{i}"
        nodes[node_id] = {"class_type": LORA_NODE, "inputs": {"pipeline": pipeline, "lora": name, "strength": strength}}
        pipeline = [node_id, 0]
    nodes["5"] = {
        "class_type": "SketchRAGHybridSampler",
        "inputs": {
            "pipeline": pipeline,
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
            "seed": 4,
            "width": 0,
            "height": 64,
            "batch_size": 1,
        },
    }
    nodes["6"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "tests/lora"}}
    return nodes


@pytest.fixture(scope="module")
def inputs(comfy: ComfyClient, example_sketches: list[Path]) -> tuple[str, str]:
    sketch = next(p for p in example_sketches if p.stem == "sketch_house")
    style = Path(__file__).resolve().parents[2] / "style_library" / "monet_water_lilies.jpg"
    return comfy.upload_image(sketch.read_bytes(), sketch.name), comfy.upload_image(style.read_bytes(), style.name)


def render(comfy: ComfyClient, inputs: tuple[str, str], *loras: tuple[str, float]) -> np.ndarray:
    data = comfy.run(graph(*inputs, list(loras)), "6")[0]
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_the_lora_node_lists_models_loras_with_a_bounded_strength(comfy: ComfyClient) -> None:
    node = comfy.object_info()[LORA_NODE]
    required = node["input"]["required"]
    assert set(LORA_NAMES) <= set(required["lora"][1]["options"])
    strength = required["strength"][1]
    assert (strength["default"], strength["min"], strength["max"]) == (1.0, -5.0, 5.0)
    assert node["output"] == ["SKETCHRAG_HYBRID_PIPELINE"]


def test_a_chained_lora_changes_the_render_without_reloading_and_removing_it_restores_the_render(
    comfy: ComfyClient, comfy_server: ComfyServer, inputs: tuple[str, str]
) -> None:
    base = render(comfy, inputs)
    loads = comfy_server.log_text().count(LOADED)
    full = render(comfy, inputs, (LORA_NAMES[0], 1.0))
    half = render(comfy, inputs, (LORA_NAMES[0], 0.5))
    assert len({base.tobytes(), full.tobytes(), half.tobytes()}) == 3
    # The same LoRA in the diffusers layout, stacked on the kohya one: 0.5 + 0.5 is the 1.0 render.
    assert np.array_equal(render(comfy, inputs, (LORA_NAMES[0], 0.5), (LORA_NAMES[1], 0.5)), full)
    assert np.array_equal(render(comfy, inputs), base)
    assert comfy_server.log_text().count(LOADED) == loads  # strengths and removal never reload the checkpoint


def test_a_nan_strength_fails_on_the_lora_node_and_the_next_render_is_unchanged(
    comfy: ComfyClient, inputs: tuple[str, str]
) -> None:
    before = render(comfy, inputs, (LORA_NAMES[0], 1.0))
    with pytest.raises(JobFailed, match=r"LoRA strength for tiny-lora_sd15_kohya\.safetensors is nan"):
        render(comfy, inputs, (LORA_NAMES[0], math.nan))
    assert np.array_equal(render(comfy, inputs, (LORA_NAMES[0], 1.0)), before)
