"""The loader and the Hybrid Sampler inside a real ComfyUI, on the tiny models in its models/ folders."""

from __future__ import annotations

import time

import numpy as np
import pytest

from sketch_rag.cli.comfyui_client import JobFailed
from sketch_rag.cli.comfyui_server import ComfyServer
from sketch_rag.tiny_models.sd import CHECKPOINT_NAME, CONTROLNET_NAMES, IMAGE_ENCODER_NAME, IP_ADAPTER_NAMES
from tests.helpers.client import RecordingClient, log_mark, wait_for_log
from tests.helpers.graphs import PIPELINE_LOADER, SAMPLER, Schemas, render_graph
from tests.helpers.pixels import pixels

pytestmark = pytest.mark.slow


def test_server_lists_both_nodes_with_model_dropdowns(comfy: RecordingClient) -> None:
    info = comfy.object_info()
    loader = info[PIPELINE_LOADER]["input"]["required"]

    def options(name: str) -> list[str]:
        return list(loader[name][1]["options"])  # V3 combos: ["COMBO", {"options": [...]}]

    assert CHECKPOINT_NAME in options("checkpoint")
    assert set(CONTROLNET_NAMES) <= set(options("controlnet"))
    assert set(IP_ADAPTER_NAMES) <= set(options("ip_adapter")) and "none" in options("ip_adapter")
    assert IMAGE_ENCODER_NAME in options("image_encoder")
    assert info[PIPELINE_LOADER]["output"] == ["SKETCHRAG_HYBRID_PIPELINE"]
    sampler = info[SAMPLER]["input"]
    for name in ("controlnet_conditioning_scale", "ip_adapter_scale", "guidance_scale", "num_inference_steps"):
        assert name in sampler["required"]
    assert sampler["required"]["guidance_scale"][1]["default"] == 7.5
    assert sampler["required"]["num_inference_steps"][1]["default"] == 20
    assert all("tooltip" in spec[1] for spec in {**sampler["required"], **sampler["optional"]}.values())
    assert info[SAMPLER]["output"] == ["IMAGE"]


def test_graph_renders_deterministically_reuses_the_models_and_reloads_after_free(
    comfy: RecordingClient, schemas: Schemas, comfy_server: ComfyServer, render_inputs: tuple[str, str]
) -> None:
    def render(seed: int) -> tuple[np.ndarray, bool, bool]:
        """The render of ``seed``, and whether ComfyUI ran the loader and the sampler for it."""
        graph = render_graph(schemas, *render_inputs, prefix="tests/hybrid", seed=seed)
        run = comfy.run_recorded(graph.graph)
        return pixels(comfy.images(run, graph.save)[0]), run.did_run(graph.loader), run.did_run(graph.sampler)

    first, loader_ran, _ = render(1)
    assert first.shape[0] == 64 and first.shape[1] % 8 == 0 and first.std() > 0 and loader_ran
    other, loader_ran_again, sampler_ran = render(2)
    assert sampler_ran and not loader_ran_again  # a new seed samples again on the warm pipeline
    again, loader_ran_again, sampler_ran = render(1)
    assert sampler_ran and not loader_ran_again
    assert np.array_equal(first, again) and not np.array_equal(first, other)

    # ComfyUI's /free unloads its models (ours among them) and drops its cache once idle: everything runs again,
    # the pipeline loads again from the same files, and renders the same pixels.
    mark = log_mark(comfy_server)
    comfy.free(unload_models=True, free_memory=True)
    wait_for_log(comfy_server, "Sketch RAG: released the warm models", mark)
    after, loader_ran, sampler_ran = render(1)
    assert loader_ran and sampler_ran
    assert np.array_equal(after, first)


def test_comfyui_interrupt_stops_sampling_and_the_next_run_works(
    comfy: RecordingClient, schemas: Schemas, render_inputs: tuple[str, str]
) -> None:
    long = render_graph(schemas, *render_inputs, prefix="tests/hybrid", seed=11, num_inference_steps=400)
    prompt_id = comfy.queue_prompt(long.graph.api())
    time.sleep(2.0)
    started = time.monotonic()
    comfy.interrupt()
    with pytest.raises(JobFailed):
        comfy.wait(prompt_id, timeout=120)
    assert time.monotonic() - started < 20  # 400 steps would take far longer
    entry = comfy.history(prompt_id) or {}
    assert any(kind == "execution_interrupted" for kind, _ in entry["status"]["messages"])
    short = render_graph(schemas, *render_inputs, prefix="tests/hybrid", seed=12)
    assert pixels(comfy.images(comfy.run_recorded(short.graph), short.save)[0]).shape[0] == 64
