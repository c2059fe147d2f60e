"""The Hybrid Sampler's hires pass and inpaint region inside a real ComfyUI, on the tiny models."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sketch_rag.cli.comfyui_client import ComfyClient
from sketch_rag.cli.comfyui_server import ComfyServer
from sketch_rag.tiny_models.sd import CHECKPOINT_NAME, CONTROLNET_NAMES, IMAGE_ENCODER_NAME, IP_ADAPTER_NAMES

pytestmark = pytest.mark.slow


def graph(picture: str, **sampler: Any) -> dict[str, Any]:
    """LoadImage(RGBA) → its RGB is the style, the edges' source and (optionally) the init image; its alpha the mask."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": picture}},
        "2": {"class_type": "SketchRAGCannySketchPreprocessor", "inputs": {
            "image": ["1", 0], "low_threshold": 50, "high_threshold": 150, "auto_threshold": False,
            "resolution": 0, "blur": 0.0, "thicken": 0}},
        "3": {"class_type": "SketchRAGHybridPipelineLoader", "inputs": {
            "checkpoint": CHECKPOINT_NAME, "controlnet": CONTROLNET_NAMES[0], "ip_adapter": IP_ADAPTER_NAMES[0],
            "image_encoder": IMAGE_ENCODER_NAME, "dtype": "auto", "attention_slicing": False, "vae_tiling": False}},
        "5": {"class_type": "SketchRAGHybridSampler", "inputs": {
            "pipeline": ["3", 0], "prompt": "a watercolor house", "negative_prompt": "blurry", "edges": ["2", 0],
            "style": ["1", 0], "style_weights": "", "controlnet_conditioning_scale": 1.5,
            "control_guidance_start": 0.0, "control_guidance_end": 1.0, "ip_adapter_scale": 0.8,
            "ip_adapter_mode": "style", "num_inference_steps": 3, "guidance_scale": 7.5, "seed": 4, "width": 64,
            "height": 64, "batch_size": 1, **sampler}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "tests/refine"}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "tests/refine_init"}},
    }


@pytest.fixture(scope="module")
def picture(comfy: ComfyClient) -> str:
    """64×64 noise with a house-like outline, transparent (= masked for LoadImage) in a rectangle."""
    rng = np.random.default_rng(5)
    rgba = np.concatenate([(rng.random((64, 64, 3)) * 255).astype(np.uint8), np.full((64, 64, 1), 255, np.uint8)], 2)
    rgba[20:44, 8:56, :3] = 255
    rgba[16:48, 16:40, 3] = 0
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    return comfy.upload_image(buffer.getvalue(), "refine_rgba.png")


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_hires_pass_renders_at_the_upscaled_size_in_one_warm_pipeline(
    comfy: ComfyClient, comfy_server: ComfyServer, picture: str
) -> None:
    base = pixels(comfy.run(graph(picture), "6")[0])
    loads = comfy_server.log_text().count("Sketch RAG: loaded checkpoint")
    hires = pixels(comfy.run(graph(picture, upscale=1.5, hires_denoise=0.5, hires_steps=4), "6")[0])
    assert base.shape == (64, 64, 3) and hires.shape == (96, 96, 3)
    assert comfy_server.log_text().count("Sketch RAG: loaded checkpoint") == loads  # no second load


def test_inpaint_keeps_every_pixel_outside_the_mask(comfy: ComfyClient, picture: str) -> None:
    entry = comfy.wait(comfy.queue_prompt(graph(picture, init_image=["1", 0], mask=["1", 1])))
    render = pixels(comfy.view(comfy.output_images(entry, "6")[0]))
    init = pixels(comfy.view(comfy.output_images(entry, "7")[0]))  # the init image through the same save path
    masked = np.zeros((64, 64), bool)
    masked[16:48, 16:40] = True
    assert np.array_equal(render[~masked], init[~masked])
    assert not np.array_equal(render[masked], init[masked])
