"""The Hybrid LoRA node inside a real ComfyUI: chained between loader and sampler, on the tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sketch_rag.cli.comfyui_client import JobFailed
from sketch_rag.tiny_models.lora import LORA_NAMES
from tests.helpers.client import RecordingClient, Run
from tests.helpers.graphs import LORA, RenderGraph, Schemas, render_graph
from tests.helpers.pixels import pixels

pytestmark = pytest.mark.slow


def render(comfy: RecordingClient, schemas: Schemas, inputs: tuple[str, str],
           *loras: tuple[str, float]) -> tuple[np.ndarray, RenderGraph, Run]:
    """Load Image → Canny → loader → LoRA × n → sampler → Save Image, at seed 4: the render, its graph and run."""
    graph = render_graph(schemas, *inputs, loras=loras, prefix="tests/lora", seed=4)
    run = comfy.run_recorded(graph.graph)
    return pixels(comfy.images(run, graph.save)[0]), graph, run


def test_the_lora_node_lists_models_loras_with_a_bounded_strength(comfy: RecordingClient) -> None:
    node = comfy.object_info()[LORA]
    required = node["input"]["required"]
    assert set(LORA_NAMES) <= set(required["lora"][1]["options"])
    strength = required["strength"][1]
    assert (strength["default"], strength["min"], strength["max"]) == (1.0, -5.0, 5.0)
    assert node["output"] == ["SKETCHRAG_HYBRID_PIPELINE"]


def test_a_chained_lora_changes_the_render_without_reloading_and_removing_it_restores_the_render(
    comfy: RecordingClient, schemas: Schemas, render_inputs: tuple[str, str]
) -> None:
    base, _, _ = render(comfy, schemas, render_inputs)
    runs = []
    full, graph, run = render(comfy, schemas, render_inputs, (LORA_NAMES[0], 1.0))
    runs.append((graph, run))
    half, graph, run = render(comfy, schemas, render_inputs, (LORA_NAMES[0], 0.5))
    runs.append((graph, run))
    assert len({base.tobytes(), full.tobytes(), half.tobytes()}) == 3
    # The same LoRA in the diffusers layout, stacked on the kohya one: 0.5 + 0.5 is the 1.0 render.
    stacked, graph, run = render(comfy, schemas, render_inputs, (LORA_NAMES[0], 0.5), (LORA_NAMES[1], 0.5))
    runs.append((graph, run))
    assert np.array_equal(stacked, full)
    restored, graph, run = render(comfy, schemas, render_inputs)
    runs.append((graph, run))
    assert np.array_equal(restored, base)
    # Strengths, a second LoRA and the LoRA's removal re-run the sampler, never the loader.
    for graph, run in runs:
        assert run.was_cached(graph.loader) and run.did_run(graph.sampler), run


def test_a_nan_strength_fails_on_the_lora_node_and_the_next_render_is_unchanged(
    comfy: RecordingClient, schemas: Schemas, render_inputs: tuple[str, str]
) -> None:
    before, _, _ = render(comfy, schemas, render_inputs, (LORA_NAMES[0], 1.0))
    with pytest.raises(JobFailed, match=r"LoRA strength for tiny-lora_sd15_kohya\.safetensors is nan"):
        render(comfy, schemas, render_inputs, (LORA_NAMES[0], math.nan))
    assert np.array_equal(render(comfy, schemas, render_inputs, (LORA_NAMES[0], 1.0))[0], before)
