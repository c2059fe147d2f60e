"""Rendering engine: sketch preprocessing and the SD1.5 + ControlNet + IP-Adapter pipeline, with no ComfyUI imports.

This face is the engine's whole public surface: ``nodes`` and ``cli`` import these names from here, never from a
submodule (``tools/check_layers.py`` enforces it). Each name is imported from its submodule on first use, so the
Canny preprocessor never loads torch or diffusers. Submodules, for reading: ``canny`` and ``lines`` (edge and line
maps), ``render_request`` (a render's inputs and their checks), ``pipeline_spec`` (what the ``pipeline`` socket
carries), ``model_cache`` (the warm models a spec is loaded into), ``pipeline_assembly`` (the diffusers pipeline
built over them), ``sampling`` (``render`` and its passes), ``vae_precision`` (the VAE's own dtype and the fp32
redo of a non-finite decode), ``schedulers`` (ComfyUI's samplers and their sigmas), ``loading``, ``model_files``,
``architectures`` (offline loading of single files and diffusers folders against ``configs/``), ``lora``,
``prompt_embeds``, ``refine``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy_exports import lazy_getattr

__all__ = [
    # preprocessing (numpy, OpenCV, scikit-image only)
    "CannySettings",  # one preprocessor run's checked settings: thresholds, blur, thicken, resolution, mode
    "sketch_to_edges",  # a sketch array -> a white-on-black edge or line map
    "MODES",  # the preprocessor's modes: "canny" (both sides of a stroke) and "lines" (one centre line)
    "DEFAULT_LOW_THRESHOLD",  # Canny's lower hysteresis threshold by default
    "DEFAULT_HIGH_THRESHOLD",  # Canny's upper hysteresis threshold by default
    "MAX_BLUR",  # the largest Gaussian sigma before detection
    "MAX_THICKEN",  # the most pixels a stroke may be grown by
    "MAX_RESOLUTION",  # the largest short side an edge map may be resized to
    "SIZE_MULTIPLE",  # both sides of a resized edge map are multiples of this (SD1.5's latent grid)
    # one render's inputs
    "RenderRequest",  # everything one render needs; checked before the pipeline is touched
    "IpAdapterMode",  # which cross-attention layers receive the style image (full, style, composition, both)
    "DEFAULT_IP_ADAPTER_MODE",  # the IP-Adapter mode used when none is given
    "DEFAULT_STEPS",  # sampling steps by default
    "MAX_STEPS",  # the most sampling steps a render may ask for
    "DEFAULT_GUIDANCE_SCALE",  # classifier-free guidance by default
    "MAX_GUIDANCE_SCALE",  # the largest guidance scale accepted
    "DEFAULT_CONTROLNET_SCALE",  # how firmly the edge map holds the geometry by default
    "MAX_CONTROLNET_SCALE",  # the largest ControlNet scale accepted
    "DEFAULT_IP_ADAPTER_SCALE",  # how strongly the style image applies by default
    "MAX_IP_ADAPTER_SCALE",  # the largest IP-Adapter scale accepted
    "MAX_SIDE",  # the longest side of a render in pixels
    "MAX_BATCH",  # the most images one render may return
    "MAX_SEED",  # the largest seed (64 bits)
    "MAX_UPSCALE",  # the largest factor of the optional high-resolution second pass
    "DEFAULT_HIRES_DENOISE",  # how much the high-resolution pass may change by default
    "CLIP_SKIP_CHOICES",  # which CLIP text layer conditions the render: 1 the last, 2 the penultimate
    "DEFAULT_SAMPLER",  # the sampler used when none is given
    "SAMPLER_NAMES",  # every sampler a render may name
    # models
    "PipelineSpec",  # which model files (and LoRAs, precision, device) a render uses; what the pipeline socket carries
    "DEFAULT_CACHE",  # the process's warm model cache: a PipelineSpec in, the loaded pipeline out
    "resolve_model",  # a model file's name in a folder -> its checked path, or an error naming what to download
    "candidates",  # the model files in a folder
    "MAX_LORA_STRENGTH",  # the largest LoRA strength (either sign) accepted
    "check_strength",  # a LoRA strength, checked against MAX_LORA_STRENGTH
]

_HOMES = {
    **dict.fromkeys(("CannySettings", "sketch_to_edges", "MODES", "DEFAULT_LOW_THRESHOLD", "DEFAULT_HIGH_THRESHOLD",
                     "MAX_BLUR", "MAX_THICKEN", "MAX_RESOLUTION", "SIZE_MULTIPLE"), "canny"),
    **dict.fromkeys(("RenderRequest", "IpAdapterMode", "DEFAULT_IP_ADAPTER_MODE", "DEFAULT_STEPS", "MAX_STEPS",
                     "DEFAULT_GUIDANCE_SCALE", "MAX_GUIDANCE_SCALE", "DEFAULT_CONTROLNET_SCALE",
                     "MAX_CONTROLNET_SCALE", "DEFAULT_IP_ADAPTER_SCALE", "MAX_IP_ADAPTER_SCALE", "MAX_SIDE",
                     "MAX_BATCH", "MAX_SEED", "MAX_UPSCALE", "DEFAULT_HIRES_DENOISE", "CLIP_SKIP_CHOICES"),
                    "render_request"),
    **dict.fromkeys(("DEFAULT_SAMPLER", "SAMPLER_NAMES"), "schedulers"),
    "PipelineSpec": "pipeline_spec",
    "DEFAULT_CACHE": "model_cache",
    **dict.fromkeys(("resolve_model", "candidates"), "model_files"),
    **dict.fromkeys(("MAX_LORA_STRENGTH", "check_strength"), "lora"),
}
"""Public name -> the submodule that defines it."""

__getattr__ = lazy_getattr(globals(), _HOMES)

if TYPE_CHECKING:
    from .canny import (
        DEFAULT_HIGH_THRESHOLD,
        DEFAULT_LOW_THRESHOLD,
        MAX_BLUR,
        MAX_RESOLUTION,
        MAX_THICKEN,
        MODES,
        SIZE_MULTIPLE,
        CannySettings,
        sketch_to_edges,
    )
    from .lora import MAX_LORA_STRENGTH, check_strength
    from .model_cache import DEFAULT_CACHE
    from .model_files import candidates, resolve_model
    from .pipeline_spec import PipelineSpec
    from .render_request import (
        CLIP_SKIP_CHOICES,
        DEFAULT_CONTROLNET_SCALE,
        DEFAULT_GUIDANCE_SCALE,
        DEFAULT_HIRES_DENOISE,
        DEFAULT_IP_ADAPTER_MODE,
        DEFAULT_IP_ADAPTER_SCALE,
        DEFAULT_STEPS,
        MAX_BATCH,
        MAX_CONTROLNET_SCALE,
        MAX_GUIDANCE_SCALE,
        MAX_IP_ADAPTER_SCALE,
        MAX_SEED,
        MAX_SIDE,
        MAX_STEPS,
        MAX_UPSCALE,
        IpAdapterMode,
        RenderRequest,
    )
    from .schedulers import DEFAULT_SAMPLER, SAMPLER_NAMES
