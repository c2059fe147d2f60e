"""The Hybrid LoRA node in-process: one more (file, strength) on the pipeline spec, checked and fused on this node."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sketch_rag.errors import InvalidParameterError, ModelNotFoundError
from sketch_rag.nodes.lora_node import HybridLoRA
from sketch_rag.nodes.pipeline_loader_node import HybridPipelineLoader
from sketch_rag.nodes.sampler_node import HybridSampler
from sketch_rag.rendering.pipeline_spec import PipelineSpec
from sketch_rag.tiny_models.lora import LORA_NAMES
from sketch_rag.tiny_models.sd import CHECKPOINT_NAME, CONTROLNET_NAMES, IMAGE_ENCODER_NAME, IP_ADAPTER_NAMES

KOHYA, DIFFUSERS = LORA_NAMES


def with_lora(pipeline: Any, lora: str = KOHYA, strength: float = 1.0) -> PipelineSpec:
    [spec] = HybridLoRA.execute(pipeline, lora, strength).result
    return spec


@pytest.fixture(scope="module")
def pipeline() -> PipelineSpec:
    [spec] = HybridPipelineLoader.execute(CHECKPOINT_NAME, CONTROLNET_NAMES[0], IP_ADAPTER_NAMES[0],
                                          IMAGE_ENCODER_NAME).result
    return spec


@pytest.fixture(scope="module")
def render(to_image_batch: Callable[..., torch.Tensor]) -> Callable[[PipelineSpec], torch.Tensor]:
    edges = np.zeros((64, 64, 3), np.float32)
    edges[16:48, 16] = edges[16:48, 47] = edges[16, 16:48] = edges[47, 16:48] = 1.0
    style = np.linspace(0, 1, 48 * 48 * 3, dtype=np.float32).reshape(48, 48, 3)

    def run(spec: PipelineSpec) -> torch.Tensor:
        [image] = HybridSampler.execute(spec, "a watercolor house", "blurry", to_image_batch(edges),
                                        style=to_image_batch(style), num_inference_steps=2, height=64, seed=4).result
        return image

    return run


def test_the_node_lists_the_loras_of_comfyuis_folder_with_a_bounded_strength() -> None:
    info = HybridLoRA.GET_NODE_INFO_V1()
    required = info["input"]["required"]
    assert list(required) == ["pipeline", "lora", "strength"]
    assert set(LORA_NAMES) <= set(required["lora"][1]["options"])
    strength = required["strength"][1]
    assert (strength["default"], strength["min"], strength["max"]) == (1.0, -5.0, 5.0)
    assert info["output"] == ["SKETCHRAG_HYBRID_PIPELINE"]
    assert all("tooltip" in spec[1] for spec in required.values())


def test_each_node_adds_one_file_and_strength_and_leaves_its_input_unchanged(
    pipeline: PipelineSpec, comfy_base: Path
) -> None:
    one = with_lora(pipeline, KOHYA, 0.5)
    two = with_lora(one, DIFFUSERS, -1.0)
    loras = comfy_base / "models" / "loras"
    assert pipeline.loras == () and one.loras == ((loras / KOHYA, 0.5),)
    assert two.loras == ((loras / KOHYA, 0.5), (loras / DIFFUSERS, -1.0))  # in chain order
    assert two.checkpoint == pipeline.checkpoint and two.controlnet == pipeline.controlnet


def test_a_lora_changes_the_render_and_two_halves_make_the_whole(
    pipeline: PipelineSpec, render: Callable[[PipelineSpec], torch.Tensor]
) -> None:
    base, full = render(pipeline), render(with_lora(pipeline, KOHYA, 1.0))
    assert not torch.equal(base, full)
    # The same LoRA in the diffusers layout, stacked on the kohya one: 0.5 + 0.5 is the 1.0 render.
    assert torch.equal(render(with_lora(with_lora(pipeline, KOHYA, 0.5), DIFFUSERS, 0.5)), full)
    assert torch.equal(render(pipeline), base)  # the LoRA-free spec renders as before


@pytest.mark.parametrize("strength", [math.nan, math.inf, 5.5, -6.0])
def test_a_strength_out_of_range_fails_on_this_node_naming_the_file(pipeline: PipelineSpec, strength: float) -> None:
    with pytest.raises(InvalidParameterError, match=rf"LoRA strength for {KOHYA} is {strength!r}; use a number from"):
        with_lora(pipeline, KOHYA, strength)


def test_a_missing_lora_names_the_folder_and_the_candidates(pipeline: PipelineSpec, comfy_base: Path) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        with_lora(pipeline, "detail_tweaker.safetensors")
    message = str(caught.value)
    assert "'detail_tweaker.safetensors'" in message and str(comfy_base / "models" / "loras") in message
    assert KOHYA in message


@pytest.mark.parametrize("pipeline", ["tiny-sd15.safetensors", {"checkpoint": "x"}, None])
def test_what_is_not_a_pipeline_is_refused_naming_the_input(pipeline: Any) -> None:
    # A constant in an API graph reaches a custom-type input unchecked by ComfyUI's validation.
    with pytest.raises(InvalidParameterError, match=f"The pipeline input is a {type(pipeline).__name__}; connect"):
        with_lora(pipeline)
