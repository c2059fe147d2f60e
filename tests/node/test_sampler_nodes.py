"""The Hybrid Pipeline Loader and Hybrid Sampler nodes in-process, on the tiny SD1.5 models in ComfyUI's folders.

A render through the node must be the engine's render of the same request: the node only converts
ComfyUI's tensors (IMAGE batches, MASK) and strings (weights, modes) and resolves dropdown names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sketch_rag.errors import InvalidImageError, InvalidParameterError, ModelNotFoundError
from sketch_rag.nodes.pipeline_loader_node import HybridPipelineLoader
from sketch_rag.nodes.sampler_node import HybridSampler
from sketch_rag.rendering import render_request as rr
from sketch_rag.rendering.model_cache import DEFAULT_CACHE
from sketch_rag.rendering.pipeline_spec import PipelineSpec
from sketch_rag.tiny_models.sd import CHECKPOINT_NAME, CONTROLNET_NAMES, IMAGE_ENCODER_NAME, IP_ADAPTER_NAMES

Batch = Callable[..., torch.Tensor]
FAST: dict[str, Any] = {"num_inference_steps": 2, "seed": 4, "height": 64}
"""Two steps at 64 px on the tiny models: each render takes a fraction of a second."""


def house_edges(size: int = 64, shift: int = 0) -> np.ndarray:
    """A canny-like map: white strokes of a house outline on black, RGB float32."""
    edges = np.zeros((size, size), np.float32)
    edges[30, 12 + shift : 52] = edges[58, 12 + shift : 52] = 1.0
    edges[30:59, 12 + shift] = edges[30:59, 51] = 1.0
    for i in range(20):
        edges[30 - i, 12 + i] = edges[30 - i, 51 - i] = 1.0
    return np.repeat(edges[:, :, None], 3, axis=2)


def gradient(size: int = 48, flip: bool = False) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    image = np.stack([x, y, (x + y) / 2], axis=-1).astype(np.float32)
    return image[::-1].copy() if flip else image


def load(ip_adapter: str = IP_ADAPTER_NAMES[0], image_encoder: str = IMAGE_ENCODER_NAME, **inputs: Any) -> Any:
    names = {"checkpoint": CHECKPOINT_NAME, "controlnet": CONTROLNET_NAMES[0], **inputs}
    [spec] = HybridPipelineLoader.execute(names.pop("checkpoint"), names.pop("controlnet"), ip_adapter,
                                          image_encoder, **names).result
    return spec


def render(pipeline: Any, edges: torch.Tensor, **inputs: Any) -> torch.Tensor:
    [image] = HybridSampler.execute(pipeline, inputs.pop("prompt", "a watercolor house"),
                                    inputs.pop("negative_prompt", "blurry"), edges, **{**FAST, **inputs}).result
    return image


@pytest.fixture(scope="module")
def pipeline() -> PipelineSpec:
    return load()


@pytest.fixture(scope="module")
def edges(to_image_batch: Batch) -> torch.Tensor:
    return to_image_batch(house_edges())


@pytest.fixture(scope="module")
def style(to_image_batch: Batch) -> torch.Tensor:
    return to_image_batch(gradient())


# -- schemas -------------------------------------------------------------------------------------------------


def test_the_loader_lists_the_model_files_of_comfyuis_folders_with_none_for_the_adapter() -> None:
    required = HybridPipelineLoader.GET_NODE_INFO_V1()["input"]["required"]

    def options(name: str) -> list[str]:
        return list(required[name][1]["options"])

    assert CHECKPOINT_NAME in options("checkpoint") and set(CONTROLNET_NAMES) <= set(options("controlnet"))
    assert options("ip_adapter")[0] == "none" and set(IP_ADAPTER_NAMES) <= set(options("ip_adapter"))
    assert options("image_encoder") == ["none", IMAGE_ENCODER_NAME]
    assert options("dtype") == ["auto", "fp16", "bf16", "fp32"]
    assert HybridPipelineLoader.GET_NODE_INFO_V1()["output"] == ["SKETCHRAG_HYBRID_PIPELINE"]


def test_the_sampler_keeps_its_input_order_defaults_and_tooltips() -> None:
    info = HybridSampler.GET_NODE_INFO_V1()
    required, optional = info["input"]["required"], info["input"]["optional"]
    assert list(required)[:4] == ["pipeline", "prompt", "negative_prompt", "edges"]
    # Optional inputs came later, each after every older widget: saved workflows keep loading.
    assert list(optional) == ["style", "style_weights", "sampler", "clip_skip", "upscale", "hires_denoise",
                              "hires_steps", "init_image", "mask", "inpaint_denoise"]
    assert required["guidance_scale"][1]["default"] == 7.5 and required["num_inference_steps"][1]["default"] == 20
    assert required["ip_adapter_mode"][1]["default"] == "style"
    assert all("tooltip" in spec[1] for spec in {**required, **optional}.values())
    assert info["output"] == ["IMAGE"]


# -- loader --------------------------------------------------------------------------------------------------


def test_the_loader_resolves_dropdown_names_to_files_and_picks_comfyuis_device(
    pipeline: PipelineSpec, comfy_base: Path
) -> None:
    models = comfy_base / "models"
    assert pipeline.checkpoint == models / "checkpoints" / CHECKPOINT_NAME
    assert pipeline.controlnet == models / "controlnet" / CONTROLNET_NAMES[0]
    assert pipeline.ip_adapter == models / "ipadapter" / IP_ADAPTER_NAMES[0]
    assert pipeline.image_encoder == models / "clip_vision" / IMAGE_ENCODER_NAME
    assert pipeline.device == "cpu" and pipeline.dtype == "auto"  # ComfyUI runs with --cpu here
    assert DEFAULT_CACHE.get(pipeline).has_ip_adapter  # loaded by the node already, warm for the sampler


@pytest.mark.parametrize(("flag", "precision"), [(None, "auto"), ("fp32_vae", "fp32"), ("bf16_vae", "bf16"),
                                               ("fp16_vae", "fp16"), ("force_fp32", "fp32")])
def test_the_loader_passes_comfyuis_vae_flag_to_the_spec(
    monkeypatch: pytest.MonkeyPatch, flag: str | None, precision: str
) -> None:
    from comfy.cli_args import args

    for name in ("fp32_vae", "bf16_vae", "fp16_vae", "force_fp32"):
        monkeypatch.setattr(args, name, name == flag)
    assert load().vae_precision == precision


def test_without_an_ip_adapter_the_loader_leaves_both_adapter_files_out() -> None:
    spec = load(ip_adapter="none", image_encoder="none")
    assert spec.ip_adapter is None and spec.image_encoder is None


@pytest.mark.parametrize(
    ("role", "name", "folder", "found"),
    [
        ("checkpoint", "v1-5-pruned-emaonly.safetensors", "checkpoints", CHECKPOINT_NAME),
        ("controlnet", "control_v11p_sd15_canny.pth", "controlnet", CONTROLNET_NAMES[0]),
        ("ip_adapter", "ip-adapter_sd15.safetensors", "ipadapter", IP_ADAPTER_NAMES[0]),
        ("image_encoder", "CLIP-ViT-H-14.safetensors", "clip_vision", IMAGE_ENCODER_NAME),
    ],
)
def test_a_missing_model_names_the_folder_lists_the_candidates_and_what_to_download(
    comfy_base: Path, role: str, name: str, folder: str, found: str
) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        load(**{role: name})
    message = str(caught.value)
    assert f"{name!r}" in message and str(comfy_base / "models" / folder) in message
    assert found in message and "Put " in message


@pytest.mark.parametrize("name", ["/etc/hostname", "../../user/sketch_rag/config.json", "sd15/../../../x.ckpt"])
def test_a_model_name_that_is_a_path_outside_the_model_folder_is_refused(comfy_base: Path, name: str) -> None:
    with pytest.raises(InvalidParameterError, match="is a path; pick a file name from models/checkpoints"):
        load(checkpoint=name)


def test_an_ip_adapter_without_its_image_encoder_is_refused() -> None:
    with pytest.raises(InvalidParameterError, match="An IP-Adapter needs its image encoder and vice versa"):
        load(image_encoder="none")


def test_an_unknown_dtype_is_refused_with_the_choices() -> None:
    with pytest.raises(InvalidParameterError, match="dtype is 'fp8'; pick one of auto, "):
        load(dtype="fp8")


# -- sampler: conversions ------------------------------------------------------------------------------------


def test_a_render_is_the_engines_render_as_an_image_batch(
    pipeline: PipelineSpec, edges: torch.Tensor, style: torch.Tensor
) -> None:
    image = render(pipeline, edges, style=style, style_weights="")
    assert image.shape == (1, 64, 64, 3) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0 and float(image.std()) > 0
    request = rr.RenderRequest(prompt="a watercolor house", negative_prompt="blurry", control_image=house_edges(),
                               style_images=[gradient()], ip_adapter_mode=rr.IpAdapterMode.STYLE, width=0, **FAST)
    engine = DEFAULT_CACHE.get(pipeline).render_batch(request, [house_edges()])
    expected = engine.astype(np.float32) / 255.0 if engine.dtype == np.uint8 else engine
    assert np.array_equal(image.numpy(), expected)


def test_the_output_follows_the_edge_maps_aspect_and_the_batch_size(
    pipeline: PipelineSpec, style: torch.Tensor, to_image_batch: Batch
) -> None:
    wide = to_image_batch(np.concatenate([house_edges(), house_edges()], axis=1))  # 64×128
    assert render(pipeline, wide, style=style, height=64, batch_size=2).shape == (2, 64, 128, 3)
    with pytest.raises(InvalidParameterError, match="width×height 64×64 .* does not match the edge image 128×64"):
        render(pipeline, wide, style=style, width=64, height=64)


def test_an_edge_batch_renders_every_edge_map_in_order_batch_size_each(
    pipeline: PipelineSpec, style: torch.Tensor, to_image_batch: Batch
) -> None:
    house, shifted = house_edges(), house_edges(shift=8)
    both = render(pipeline, to_image_batch(house, shifted), style=style, batch_size=2)
    assert both.shape[0] == 4 and len({image.numpy().tobytes() for image in both}) == 4
    # The first edge map comes first, and with the seed's first two noises its images are those it gets alone.
    assert torch.equal(both[:2], render(pipeline, to_image_batch(house), style=style, batch_size=2))
    reversed_order = render(pipeline, to_image_batch(shifted, house), style=style, batch_size=2)
    assert torch.equal(reversed_order[:2], render(pipeline, to_image_batch(shifted), style=style, batch_size=2))


def test_each_ip_adapter_mode_reaches_the_render(
    pipeline: PipelineSpec, edges: torch.Tensor, style: torch.Tensor
) -> None:
    modes = [m.value for m in rr.IpAdapterMode]
    renders = {m: render(pipeline, edges, style=style, ip_adapter_mode=m, ip_adapter_scale=0.8) for m in modes}
    assert len({r.numpy().tobytes() for r in renders.values()}) == len(modes)  # each injects into other layers
    # At scale 0 no layer receives the image, whatever the mode.
    off = [render(pipeline, edges, style=style, ip_adapter_mode=m, ip_adapter_scale=0.0) for m in ("full", "style")]
    assert torch.equal(off[0], off[1]) and not torch.equal(off[0], renders["style"])


def test_style_weights_are_parsed_from_commas_or_semicolons(
    pipeline: PipelineSpec, edges: torch.Tensor, to_image_batch: Batch
) -> None:
    styles = to_image_batch(gradient(), gradient(flip=True))
    commas = render(pipeline, edges, style=styles, style_weights="0.7, 0.3")
    assert torch.equal(commas, render(pipeline, edges, style=styles, style_weights="0.7; 0.3"))
    assert not torch.equal(commas, render(pipeline, edges, style=styles, style_weights=""))  # equal weights


def test_an_inpaint_is_the_engines_inpaint_of_the_same_image_and_mask(
    pipeline: PipelineSpec, edges: torch.Tensor, style: torch.Tensor, to_image_batch: Batch
) -> None:
    rng = np.random.default_rng(5)
    init = to_image_batch((rng.random((64, 64, 3)) * 255).astype(np.uint8))
    mask = torch.zeros(1, 64, 64)
    mask[0, 16:48, 16:40] = 1.0
    image = render(pipeline, edges, style=style, init_image=init, mask=mask)
    request = rr.RenderRequest(prompt="a watercolor house", negative_prompt="blurry", control_image=house_edges(),
                               style_images=[gradient()], ip_adapter_mode=rr.IpAdapterMode.STYLE, width=0,
                               init_image=init[0].numpy(), mask=mask[0].numpy(), **FAST)
    engine = DEFAULT_CACHE.get(pipeline).render_batch(request, [house_edges()])
    expected = engine.astype(np.float32) / 255.0 if engine.dtype == np.uint8 else engine
    assert np.array_equal(image.numpy(), expected)
    assert torch.equal(render(pipeline, edges, style=style, init_image=init, mask=mask[0]), image)  # (H, W) mask


# -- sampler: what a user can get wrong ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("1, 2", r"style_weights has 2 value\(s\) for 1 style image\(s\)"),
        ("heavy", "style_weights 'heavy' is not a comma-separated list of numbers"),
        ("-1", "must be finite, non-negative"),
    ],
)
def test_bad_style_weights_are_refused_with_the_fix(
    pipeline: PipelineSpec, edges: torch.Tensor, style: torch.Tensor, weights: str, message: str
) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        render(pipeline, edges, style=style, style_weights=weights)


def test_a_mask_without_an_init_image_is_a_clear_error(
    pipeline: PipelineSpec, edges: torch.Tensor, style: torch.Tensor
) -> None:
    with pytest.raises(InvalidParameterError, match="mask was given without an init image"):
        render(pipeline, edges, style=style, mask=torch.ones(1, 64, 64))


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"mask": torch.ones(2, 64, 64)}, r"mask input has shape \(2, 64, 64\); it takes one mask"),
        ({"mask": np.ones((64, 64), np.float32)}, "mask input must be a MASK tensor, got ndarray"),
        ({"init_image": torch.ones(2, 64, 64, 3)}, "init_image input is a batch of 2 images; it takes one"),
        ({"mask": torch.ones(1, 32, 32)}, "The mask is 32×32 but the edge image is 64×64"),
    ],
)
def test_bad_inpaint_inputs_name_the_input(
    pipeline: PipelineSpec, edges: torch.Tensor, style: torch.Tensor, inputs: dict[str, Any], message: str
) -> None:
    inputs = {"init_image": torch.ones(1, 64, 64, 3), "mask": torch.ones(1, 64, 64), **inputs}
    with pytest.raises(InvalidImageError, match=message):
        render(pipeline, edges, style=style, **inputs)


def test_style_images_must_match_the_pipelines_ip_adapter(
    pipeline: PipelineSpec, edges: torch.Tensor, style: torch.Tensor
) -> None:
    with pytest.raises(InvalidImageError, match="The style image batch is empty; connect at least one"):
        render(pipeline, edges)
    with pytest.raises(InvalidParameterError, match="1 style image.* no IP-Adapter to use them"):
        render(load(ip_adapter="none", image_encoder="none"), edges, style=style)


@pytest.mark.parametrize(
    ("edges", "message"),
    [
        (None, "edges input must be an IMAGE tensor, got NoneType"),
        (torch.ones(0, 64, 64, 3), r"edges input has shape \(0, 64, 64, 3\)"),
        (torch.full((1, 64, 64, 3), 2.0), "edge image has pixel values from 2 to 2"),
    ],
)
def test_bad_edge_maps_name_the_input(pipeline: PipelineSpec, style: torch.Tensor, edges: Any, message: str) -> None:
    with pytest.raises(InvalidImageError, match=message):
        render(pipeline, edges, style=style)


def test_an_absurdly_long_prompt_is_refused_with_the_limit(
    pipeline: PipelineSpec, edges: torch.Tensor, style: torch.Tensor
) -> None:
    with pytest.raises(InvalidParameterError, match=r"prompt is \d+ characters long; the limit is"):
        render(pipeline, edges, style=style, prompt="a watercolor house, " * 5000)


def test_an_empty_prompt_renders(pipeline: PipelineSpec, edges: torch.Tensor, style: torch.Tensor) -> None:
    assert render(pipeline, edges, style=style, prompt="", negative_prompt="").shape == (1, 64, 64, 3)


def test_an_unknown_sampler_names_the_choices(pipeline: PipelineSpec, edges: torch.Tensor, style: torch.Tensor) -> None:
    # ComfyUI 0.3.75 does not hold an optional V3 combo to its options: the engine's check must.
    with pytest.raises(InvalidParameterError, match="sampler is 'k_euler'; pick one of euler, euler_ancestral"):
        render(pipeline, edges, style=style, sampler="k_euler")


def test_what_is_not_a_pipeline_is_refused_naming_the_input(edges: torch.Tensor, style: torch.Tensor) -> None:
    # A constant in an API graph reaches a custom-type input unchecked by ComfyUI's validation.
    with pytest.raises(InvalidParameterError, match="The pipeline input is a str; connect a Hybrid Pipeline Loader"):
        render("tiny-sd15.safetensors", edges, style=style)


def test_comfyuis_interrupt_stops_the_render_with_comfyuis_own_exception(
    pipeline: PipelineSpec, edges: torch.Tensor, style: torch.Tensor, interrupted: Any
) -> None:
    interrupted.interrupt_current_processing(True)  # what POST /interrupt sets
    with pytest.raises(interrupted.InterruptProcessingException):
        render(pipeline, edges, style=style)
    interrupted.interrupt_current_processing(False)
    assert render(pipeline, edges, style=style).shape == (1, 64, 64, 3)


def test_a_reloaded_pipeline_renders_the_same(pipeline: PipelineSpec, edges: torch.Tensor, style: torch.Tensor) -> None:
    # The spec is all that travels between the nodes: a second spec of the same files is the same pipeline.
    assert torch.equal(render(replace(pipeline), edges, style=style), render(pipeline, edges, style=style))
