"""The Hybrid ControlNet + IP-Adapter Sampler node: a thin adapter over ``rendering``'s ``render_batch``.

It turns the ``pipeline`` socket's spec into the warm pipeline through the engine's cache, converts tensors, wires
ComfyUI's progress bar, latent preview and interrupt into the engine's callbacks, and lets ComfyUI's model
management reclaim the memory (``model_memory``); each through ``comfy_host``, which goes without whichever of
them this ComfyUI lacks.
"""

from __future__ import annotations

from typing import Any

import torch
from comfy_api.v0_0_2 import io

from ..rendering import (
    DEFAULT_CONTROLNET_SCALE,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_HIRES_DENOISE,
    DEFAULT_IP_ADAPTER_MODE,
    DEFAULT_IP_ADAPTER_SCALE,
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    MAX_BATCH,
    MAX_CONTROLNET_SCALE,
    MAX_GUIDANCE_SCALE,
    MAX_IP_ADAPTER_SCALE,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
    MAX_UPSCALE,
    SAMPLER_NAMES,
    IpAdapterMode,
    RenderRequest,
)
from .comfy_host import interrupt_check, raise_if_interrupted, sampler_progress
from .common import CATEGORY, NODE_PREFIX
from .input_checks import unknown_options
from .model_memory import register_with_model_management
from .pipeline_socket import PipelineSpecType, checked_spec
from .style_weights import parse_style_weights
from .tensors import arrays_to_image_batch, image_batch_to_arrays, single_image, single_mask


class HybridSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{NODE_PREFIX}HybridSampler",
            display_name="Hybrid ControlNet + IP-Adapter Sampler",
            category=CATEGORY,
            description=(
                "Renders the sketch with SD1.5: structure locked by the ControlNet, style taken from the "
                "reference image(s) through IP-Adapter."
            ),
            inputs=[
                PipelineSpecType.Input("pipeline", tooltip="From the Hybrid Pipeline Loader."),
                io.String.Input("prompt", multiline=True, default="", tooltip="What to render."),
                io.String.Input(
                    "negative_prompt", multiline=True, default="blurry, low quality", tooltip="What to steer away from."
                ),
                io.Image.Input(
                    "edges",
                    tooltip="The edge map (e.g. from Canny Sketch Preprocessor); its aspect sets the output's. A batch "
                    "of edge maps renders each one in order, batch_size images each.",
                ),
                io.Image.Input(
                    "style",
                    optional=True,
                    tooltip="Style reference batch (e.g. from CLIP Style Retriever); needed when the "
                    "pipeline has an IP-Adapter.",
                ),
                io.String.Input(
                    "style_weights",
                    default="",
                    optional=True,
                    tooltip="Comma-separated weight per style image (e.g. the retriever's scores); empty "
                    "weighs them equally.",
                ),
                io.Float.Input(
                    "controlnet_conditioning_scale",
                    default=DEFAULT_CONTROLNET_SCALE,
                    min=0.0,
                    max=MAX_CONTROLNET_SCALE,
                    step=0.05,
                    tooltip="How firmly the edges hold the structure; 0 ignores them.",
                ),
                io.Float.Input(
                    "control_guidance_start",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Fraction of the steps at which ControlNet starts.",
                ),
                io.Float.Input(
                    "control_guidance_end",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Fraction of the steps at which ControlNet stops.",
                ),
                io.Float.Input(
                    "ip_adapter_scale",
                    default=DEFAULT_IP_ADAPTER_SCALE,
                    min=0.0,
                    max=MAX_IP_ADAPTER_SCALE,
                    step=0.05,
                    tooltip="How strongly the style reference steers the render; 0 ignores it.",
                ),
                io.Combo.Input(
                    "ip_adapter_mode",
                    options=[m.value for m in IpAdapterMode],
                    default=DEFAULT_IP_ADAPTER_MODE.value,
                    tooltip="Where the reference is injected. style: only the style layers (the three of "
                    "up_blocks.1), as InstantStyle does for SD1.5, to carry colour and brushwork rather than the "
                    "reference's objects; composition: only the layout layers (down_blocks.2 and the mid block); "
                    "style_and_composition: both; full: all 16 layers (the original IP-Adapter).",
                ),
                io.Int.Input(
                    "num_inference_steps",
                    default=DEFAULT_STEPS,
                    min=1,
                    max=MAX_STEPS,
                    tooltip="Denoising steps; 20 is plenty for SD1.5 with uni_pc, 4-8 with lcm/tcd.",
                ),
                io.Float.Input(
                    "guidance_scale",
                    default=DEFAULT_GUIDANCE_SCALE,
                    min=0.0,
                    max=MAX_GUIDANCE_SCALE,
                    step=0.1,
                    tooltip="Classifier-free guidance (CFG).",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=MAX_SEED,
                    control_after_generate=True,
                    tooltip="Same seed and inputs give the same image.",
                ),
                io.Int.Input(
                    "width",
                    default=0,
                    min=0,
                    max=MAX_SIDE,
                    step=8,
                    tooltip="Output width (multiple of 8); 0 follows the edge map's aspect.",
                ),
                io.Int.Input(
                    "height",
                    default=0,
                    min=0,
                    max=MAX_SIDE,
                    step=8,
                    tooltip="Output height (multiple of 8); 0 follows the edge map's aspect.",
                ),
                io.Int.Input(
                    "batch_size",
                    default=1,
                    min=1,
                    max=MAX_BATCH,
                    tooltip="Images per edge map. One seed serves the whole output batch, as in KSampler: the same "
                    "seed, edges and batch_size give the same images.",
                ),
                # Optional, after every older widget: saved workflows (UI and API format) load unchanged.
                io.Combo.Input(
                    "sampler",
                    options=list(SAMPLER_NAMES),
                    default=DEFAULT_SAMPLER,
                    optional=True,
                    tooltip="ComfyUI's sampler names, sampling at the sigmas of ComfyUI's KSampler: the normal "
                    "schedule, or karras where the name says so (dpmpp_2m_karras = dpmpp_2m + karras). ddim is "
                    "ComfyUI's ddim, which is its euler: it renders as euler. lcm uses the simple schedule (LCM steps "
                    "between whole timesteps, which normal falls between). uni_pc (default) or dpmpp_2m_karras at 20 "
                    "steps; lcm/tcd at 4-8 steps with CFG 1-2 and an LCM/TCD LoRA or checkpoint; euler_ancestral and "
                    "dpmpp_sde_karras add fresh noise each step.",
                ),
                io.Int.Input(
                    "clip_skip",
                    default=1,
                    min=1,
                    max=2,
                    optional=True,
                    tooltip="1: CLIP's last layer (SD1.5's default); 2: the penultimate, for checkpoints trained "
                    "with it (many anime models). Same as ComfyUI's CLIP Set Last Layer at -1 / -2.",
                ),
                io.Float.Input(
                    "upscale",
                    default=1.0,
                    min=1.0,
                    max=MAX_UPSCALE,
                    step=0.05,
                    optional=True,
                    tooltip="Above 1: render at the base size, upscale the image (Lanczos, in pixels) and refine it "
                    "in a second pass at hires_denoise, e.g. 2 for 1024 px from a 512 px render. SD1.5 asked for "
                    "1024 px directly tends to repeat the subject; this keeps the base render's layout.",
                ),
                io.Float.Input(
                    "hires_denoise",
                    default=DEFAULT_HIRES_DENOISE,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    optional=True,
                    tooltip="How much the hires pass may change: low keeps the base render, high re-invents detail.",
                ),
                io.Int.Input(
                    "hires_steps",
                    default=0,
                    min=0,
                    max=MAX_STEPS,
                    optional=True,
                    tooltip="Steps of the hires pass before hires_denoise shortens them; 0 = num_inference_steps.",
                ),
                io.Image.Input(
                    "init_image",
                    optional=True,
                    tooltip="With a mask: the image to change; only the masked region is re-rendered, every other "
                    "pixel stays exactly as it is. Same size as the edge map.",
                ),
                io.Mask.Input(
                    "mask",
                    optional=True,
                    tooltip="Where to re-render the init image (1 = re-render, 0 = keep; soft edges blend).",
                ),
                io.Float.Input(
                    "inpaint_denoise",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    optional=True,
                    tooltip="How much the masked region may change: 1 re-renders it from scratch, lower keeps its "
                    "colours and rough shapes.",
                ),
            ],
            outputs=[io.Image.Output(display_name="image", tooltip="The render.")],
        )

    @classmethod
    def validate_inputs(cls, ip_adapter_mode: str | None = None, sampler: str | None = None) -> bool | str:
        return unknown_options(cls, ip_adapter_mode=ip_adapter_mode, sampler=sampler)

    @classmethod
    def execute(
        cls,
        pipeline: Any,
        prompt: str,
        negative_prompt: str,
        edges: torch.Tensor,
        style: torch.Tensor | None = None,
        style_weights: str = "",
        controlnet_conditioning_scale: float = DEFAULT_CONTROLNET_SCALE,
        control_guidance_start: float = 0.0,
        control_guidance_end: float = 1.0,
        ip_adapter_scale: float = DEFAULT_IP_ADAPTER_SCALE,
        ip_adapter_mode: str = DEFAULT_IP_ADAPTER_MODE.value,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        seed: int = 0,
        width: int = 0,
        height: int = 0,
        batch_size: int = 1,
        sampler: str = DEFAULT_SAMPLER,
        clip_skip: int = 1,
        upscale: float = 1.0,
        hires_denoise: float = DEFAULT_HIRES_DENOISE,
        hires_steps: int = 0,
        init_image: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        inpaint_denoise: float = 1.0,
    ) -> io.NodeOutput:
        from ..errors import RenderInterruptedError
        from ..rendering import DEFAULT_CACHE

        spec = checked_spec(pipeline)
        controls = image_batch_to_arrays(edges, "edges")
        styles = image_batch_to_arrays(style, "style") if style is not None else []
        request = RenderRequest(
            prompt=prompt,
            negative_prompt=negative_prompt,
            control_image=controls[0],
            style_images=styles,
            style_weights=parse_style_weights(style_weights, len(styles)),
            controlnet_conditioning_scale=controlnet_conditioning_scale,
            control_guidance_start=control_guidance_start,
            control_guidance_end=control_guidance_end,
            ip_adapter_scale=ip_adapter_scale,
            ip_adapter_mode=IpAdapterMode(ip_adapter_mode),
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            seed=seed,
            width=width,
            height=height,
            num_images_per_prompt=batch_size,
            sampler=sampler,
            clip_skip=clip_skip,
            upscale=upscale,
            hires_denoise=hires_denoise,
            hires_steps=hires_steps,
            init_image=single_image(init_image, "init_image"),
            mask=single_mask(mask),
            inpaint_denoise=inpaint_denoise,
        )
        hybrid = DEFAULT_CACHE.get(spec)  # reloads only if ComfyUI released the models meanwhile
        register_with_model_management(hybrid)
        try:
            # Every edge map of the batch, in order, batch_size images each (see HybridPipeline.render_batch).
            images = hybrid.render_batch(
                request,
                controls,
                on_step=sampler_progress(num_inference_steps * len(controls)),
                should_stop=interrupt_check(),
            )
        except RenderInterruptedError:
            raise_if_interrupted()  # ComfyUI's own interrupt exception and message
            raise
        return io.NodeOutput(arrays_to_image_batch(list(images)))
