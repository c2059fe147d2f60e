"""What a LoRA changes in our warm models, under ComfyUI's names, for comparison with ComfyUI core's own loader."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from sketch_rag.rendering.model_cache import PipelineCache
from sketch_rag.rendering.pipeline_spec import PipelineSpec
from sketch_rag.tiny_models.ldm_layout import unet_to_ldm


def our_deltas(spec: PipelineSpec, lora: Path, strength: float) -> dict[str, torch.Tensor]:
    """Every weight ``lora`` at ``strength`` changes in a fresh cache's UNet and text encoder, nonzero ones only."""
    cache = PipelineCache()
    pipe = cache.get(spec).pipe
    parts = {"unet": pipe.unet, "clip": pipe.text_encoder}
    base = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in parts.items()}
    cache.get(dataclasses.replace(spec, loras=((lora, strength),)))
    unet = {k: v - base["unet"][k] for k, v in pipe.unet.state_dict().items()}
    text = {k: v - base["clip"][k] for k, v in pipe.text_encoder.state_dict().items()}
    # Our names -> ComfyUI's: the UNet through the project's LDM converter, the CLIP under clip_l.transformer.
    deltas = {f"unet.{k}": v for k, v in unet_to_ldm(unet, dict(pipe.unet.config)).items()}
    prefix = "clip.clip_l.transformer.text_model."
    deltas |= {prefix + k.removeprefix("text_model."): v for k, v in text.items()}
    return {k: v for k, v in deltas.items() if v.abs().max() > 0}
