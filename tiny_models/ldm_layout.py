"""diffusers -> original (CompVis LDM / ControlNet) key layout, for writing single-file checkpoints.

diffusers only reads the original layout (``loaders/single_file_utils.py``); it ships no writer. The tiny
test models must be written exactly the way ComfyUI users keep real ones (``models/checkpoints/*.safetensors``,
``models/controlnet/*.pth``), so that the tests go through the same ``from_single_file`` path as real files.
This is the inverse of diffusers' converters for the SD1.x family, for any block widths and block counts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}

_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    # ControlNet only
    "controlnet_cond_embedding.conv_in": "input_hint_block.0",
    "controlnet_cond_embedding.conv_out": "input_hint_block.14",
    "controlnet_mid_block": "middle_block_out.0",
}

_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _resnet_key(rest: str) -> str:
    layer, _, param = rest.partition(".")
    return f"{_RESNET_NAMES[layer]}.{param}"


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A ``UNet2DConditionModel`` or ``ControlNetModel`` state dict in LDM keys (no ``model.diffusion_model.``)."""
    per_level = int(config["layers_per_block"]) + 1  # resnets + the down/upsampler slot
    up_types = list(config.get("up_block_types") or [])
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        module, _, param = key.rpartition(".")
        if module in _UNET_FIXED:
            out[f"{_UNET_FIXED[module]}.{param}"] = value
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            out[f"input_blocks.{per_level * int(m[1]) + int(m[2]) + 1}.0.{_resnet_key(m[3])}"] = value
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            out[f"input_blocks.{per_level * int(m[1]) + int(m[2]) + 1}.1.{m[3]}"] = value
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            out[f"input_blocks.{per_level * (int(m[1]) + 1)}.0.op.{m[2]}"] = value
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            out[f"middle_block.{2 * int(m[1])}.{_resnet_key(m[2])}"] = value
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            out[f"middle_block.1.{m[1]}"] = value
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            out[f"output_blocks.{per_level * int(m[1]) + int(m[2])}.0.{_resnet_key(m[3])}"] = value
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
            out[f"output_blocks.{per_level * int(m[1]) + int(m[2])}.1.{m[3]}"] = value
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            level = int(m[1])
            slot = 2 if "CrossAttn" in up_types[level] else 1  # after the attention, when the block has one
            out[f"output_blocks.{per_level * level + per_level - 1}.{slot}.conv.{m[2]}"] = value
        elif m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.+)", key):
            out[f"zero_convs.{m[1]}.0.{m[2]}"] = value
        elif m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.+)", key):
            out[f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"] = value
        else:
            raise KeyError(f"no LDM name for UNet/ControlNet key {key!r}")
    return out


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """An ``AutoencoderKL`` state dict in LDM keys (no ``first_stage_model.``); attention projections as 1x1 convs."""
    levels = len(config["block_out_channels"])
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key):
            out[f"{m[1]}.norm_out.{m[2]}"] = value
        elif re.fullmatch(r"(encoder|decoder)\.conv_(in|out)\..+|(post_)?quant_conv\..+", key):
            out[key] = value
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            out[f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"] = value
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            out[f"encoder.down.{m[1]}.downsample.conv.{m[2]}"] = value
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            level = levels - 1 - int(m[1])  # LDM numbers the decoder levels from the bottom
            out[f"decoder.up.{level}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"] = value
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            out[f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"] = value
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            out[f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"] = value
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            name = _VAE_ATTENTION[m[2]]
            if m[3] == "weight" and name != "norm":
                value = value.reshape(*value.shape, 1, 1)
            out[f"{m[1]}.mid.attn_1.{name}.{m[3]}"] = value
        else:
            raise KeyError(f"no LDM name for VAE key {key!r}")
    return out


def text_encoder_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ``CLIPTextModel`` state dict under SD1.x's ``cond_stage_model.transformer.text_model.``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = key if key.startswith("text_model.") else f"text_model.{key}"
        out[f"cond_stage_model.transformer.{name}"] = value
    return out


def sd15_checkpoint(
    unet: torch.nn.Module, vae: torch.nn.Module, text_encoder: torch.nn.Module, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """One SD1.x single-file state dict (what ``models/checkpoints/*.safetensors`` holds)."""
    parts: dict[str, torch.Tensor] = {}
    unet_config: Any = unet.config
    vae_config: Any = vae.config
    for key, value in unet_to_ldm(unet.state_dict(), dict(unet_config)).items():
        parts[f"model.diffusion_model.{key}"] = value
    for key, value in vae_to_ldm(vae.state_dict(), dict(vae_config)).items():
        parts[f"first_stage_model.{key}"] = value
    parts.update(text_encoder_to_ldm(text_encoder.state_dict()))
    return {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in parts.items()}


def controlnet_checkpoint(
    controlnet: torch.nn.Module, prefix: str = "control_model.", dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """A ControlNet single-file state dict as lllyasviel's ``control_v11p_sd15_*.pth`` files hold it."""
    config: Any = controlnet.config
    converted = unet_to_ldm(controlnet.state_dict(), dict(config))
    return {f"{prefix}{k}": (v.to(dtype) if dtype is not None else v).contiguous() for k, v in converted.items()}
