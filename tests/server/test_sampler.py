"""The loader and the Hybrid Sampler inside a real ComfyUI, on the tiny models in its models/ folders."""

from __future__ import annotations

import io
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sketch_rag.cli.comfyui_client import ComfyClient, JobFailed
from sketch_rag.cli.comfyui_server import ComfyServer
from sketch_rag.tiny_models.sd import CHECKPOINT_NAME, CONTROLNET_NAMES, IMAGE_ENCODER_NAME, IP_ADAPTER_NAMES

pytestmark = pytest.mark.slow

LOADER, SAMPLER = "SketchRAGHybridPipelineLoader", "SketchRAGHybridSampler"


def graph(sketch: str, style: str, seed: int, **sampler: Any) -> dict[str, Any]:
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
        "seed": seed,
        "width": 0,
        "height": 64,
        "batch_size": 1,
        **sampler,
    }
    return {
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
            "class_type": LOADER,
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
        "5": {"class_type": SAMPLER, "inputs": settings},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "tests/hybrid"}},
    }


@pytest.fixture(scope="module")
def inputs(comfy: ComfyClient, example_sketches: list[Path]) -> tuple[str, str]:
    sketch = next(p for p in example_sketches if p.stem == "sketch_house")
    style = Path(__file__).resolve().parents[2] / "style_library" / "monet_water_lilies.jpg"
    return comfy.upload_image(sketch.read_bytes(), sketch.name), comfy.upload_image(style.read_bytes(), style.name)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_server_lists_both_nodes_with_model_dropdowns(comfy: ComfyClient) -> None:
    info = comfy.object_info()
    loader = info[LOADER]["input"]["required"]

    def options(name: str) -> list[str]:
        return list(loader[name][1]["options"])  # V3 combos: ["COMBO", {"options": [...]}]

    assert CHECKPOINT_NAME in options("checkpoint")
    assert set(CONTROLNET_NAMES) <= set(options("controlnet"))
    assert set(IP_ADAPTER_NAMES) <= set(options("ip_adapter")) and "none" in options("ip_adapter")
    assert IMAGE_ENCODER_NAME in options("image_encoder")
    assert info[LOADER]["output"] == ["SKETCHRAG_HYBRID_PIPELINE"]
    sampler = info[SAMPLER]["input"]
    for name in ("controlnet_conditioning_scale", "ip_adapter_scale", "guidance_scale", "num_inference_steps"):
        assert name in sampler["required"]
    assert sampler["required"]["guidance_scale"][1]["default"] == 7.5
    assert sampler["required"]["num_inference_steps"][1]["default"] == 20
    assert all("tooltip" in spec[1] for spec in {**sampler["required"], **sampler["optional"]}.values())
    assert info[SAMPLER]["output"] == ["IMAGE"]


def test_graph_renders_deterministically_reuses_the_models_and_reloads_after_free(
    comfy: ComfyClient,
    comfy_server: ComfyServer,
    inputs: tuple[str, str],
) -> None:
    sketch, style = inputs
    first = pixels(comfy.run(graph(sketch, style, seed=1), "6")[0])
    assert first.shape[0] == 64 and first.shape[1] % 8 == 0 and first.std() > 0
    other = pixels(comfy.run(graph(sketch, style, seed=2), "6")[0])
    again = pixels(comfy.run(graph(sketch, style, seed=1), "6")[0])
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert comfy_server.log_text().count("Sketch RAG: loaded checkpoint") == 1  # warm across runs

    request = urllib.request.Request(
        f"{comfy.url}/free",
        data=json.dumps({"unload_models": True}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10):
        pass
    deadline = time.monotonic() + 30
    while "Sketch RAG: released the warm models" not in comfy_server.log_text():
        assert time.monotonic() < deadline, "ComfyUI's unload did not release the pipeline"
        time.sleep(0.2)
    after = pixels(comfy.run(graph(sketch, style, seed=1, ip_adapter_scale=0.8000001), "6")[0])
    assert comfy_server.log_text().count("Sketch RAG: loaded checkpoint") == 2
    assert after.shape == first.shape


def test_comfyui_interrupt_stops_sampling_and_the_next_run_works(comfy: ComfyClient, inputs: tuple[str, str]) -> None:
    sketch, style = inputs
    prompt_id = comfy.queue_prompt(graph(sketch, style, seed=11, num_inference_steps=400))
    time.sleep(2.0)
    started = time.monotonic()
    request = urllib.request.Request(
        f"{comfy.url}/interrupt", data=b"{}", method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10):
        pass
    with pytest.raises(JobFailed):
        comfy.wait(prompt_id, timeout=120)
    assert time.monotonic() - started < 20  # 400 steps would take far longer
    entry = comfy.history(prompt_id) or {}
    assert any(kind == "execution_interrupted" for kind, _ in entry["status"]["messages"])
    assert pixels(comfy.run(graph(sketch, style, seed=12), "6")[0]).shape[0] == 64
