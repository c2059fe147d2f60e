"""SD1.5 UNet module names in the original (CompVis LDM) layout and in diffusers', both ways.

Checkpoints, ComfyUI's own LoRAs (``diffusion_model.input_blocks.1.1.proj_in``) and some kohya LoRAs
(``lora_unet_input_blocks_1_1_proj_in``) name UNet modules the LDM way; the pipeline's UNet is diffusers'.
The correspondence is fixed by SD1.5's topology (4 levels of 2 resnets, attention on levels 0-2, the first up
level without attention) and is the one diffusers' ``convert_ldm_unet_checkpoint`` and ComfyUI's
``comfy.utils.unet_to_diffusers`` apply; ``tests/node/test_files_from_the_wild.py`` checks it against
ComfyUI's table for every module.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .architectures import SD15_ATTENTION_LEVELS, SD15_LAYERS_PER_BLOCK, SD15_LEVELS

PER_LEVEL = SD15_LAYERS_PER_BLOCK + 1  # resnets + the down/upsampler slot
RESNET_LEAVES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
# diffusers numbers up blocks from the bottom: up level L mirrors down level SD15_LEVELS - 1 - L
UP_ATTENTION_LEVELS = {SD15_LEVELS - 1 - level for level in SD15_ATTENTION_LEVELS}


def _resnet(leaf: str) -> str:
    name, _, rest = leaf.partition(".")
    return RESNET_LEAVES[name] + (f".{rest}" if rest else "")


def unet_module_to_ldm(name: str) -> str | None:
    """The LDM name of a diffusers UNet module (or parameter) name; None for a name outside SD1.5's UNet."""
    for diffusers, ldm in FIXED.items():
        if name == diffusers or name.startswith(diffusers + "."):
            return ldm + name[len(diffusers) :]
    try:
        if m := re.fullmatch(r"down_blocks\.(\d)\.resnets\.(\d)\.(.+)", name):
            return f"input_blocks.{PER_LEVEL * int(m[1]) + int(m[2]) + 1}.0.{_resnet(m[3])}"
        if m := re.fullmatch(r"down_blocks\.(\d)\.attentions\.(\d)\.(.+)", name):
            return f"input_blocks.{PER_LEVEL * int(m[1]) + int(m[2]) + 1}.1.{m[3]}"
        if m := re.fullmatch(r"down_blocks\.(\d)\.downsamplers\.0\.conv(\..+)?", name):
            return f"input_blocks.{PER_LEVEL * (int(m[1]) + 1)}.0.op{m[2] or ''}"
        if m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", name):
            return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
        if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", name):
            return f"middle_block.1.{m[1]}"
        if m := re.fullmatch(r"up_blocks\.(\d)\.resnets\.(\d)\.(.+)", name):
            return f"output_blocks.{PER_LEVEL * int(m[1]) + int(m[2])}.0.{_resnet(m[3])}"
        if m := re.fullmatch(r"up_blocks\.(\d)\.attentions\.(\d)\.(.+)", name):
            return f"output_blocks.{PER_LEVEL * int(m[1]) + int(m[2])}.1.{m[3]}"
        if m := re.fullmatch(r"up_blocks\.(\d)\.upsamplers\.0\.conv(\..+)?", name):
            level = int(m[1])
            slot = 2 if level in UP_ATTENTION_LEVELS else 1  # after the attention, where the level has one
            return f"output_blocks.{PER_LEVEL * level + PER_LEVEL - 1}.{slot}.conv{m[2] or ''}"
    except KeyError:  # a resnet leaf SD1.5 does not have
        return None
    return None


@lru_cache(maxsize=1)
def ldm_to_diffusers_modules() -> dict[str, str]:
    """Every Linear/Conv/Norm module of SD1.5's UNet: LDM name -> diffusers name.

    Built from the module names of diffusers' own SD1.5 UNet (on the meta device, so nothing is allocated);
    the names do not depend on the widths.
    """
    import torch
    from diffusers import UNet2DConditionModel

    from .architectures import unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config((32, 32, 64, 64), 64))
    table = {}
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d | torch.nn.GroupNorm | torch.nn.LayerNorm):
            ldm = unet_module_to_ldm(name)
            if ldm is not None:
                table[ldm] = name
    return table


def kohya_ldm_to_diffusers() -> dict[str, str]:
    """kohya's underscore spelling of every LDM module name -> the diffusers module name.

    kohya writes a module name with ``_`` for ``.`` (``lora_unet_input_blocks_1_1_proj_in``), which cannot be
    split back without knowing the modules; ComfyUI's ``model_lora_keys_unet`` matches them the same way.
    """
    return {ldm.replace(".", "_"): name for ldm, name in ldm_to_diffusers_modules().items()}


VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_key_to_ldm(name: str) -> str | None:
    """The LDM key (without ``first_stage_model.``) of a diffusers ``AutoencoderKL`` parameter of SD1.5's VAE.

    The inverse of diffusers' ``convert_ldm_vae_checkpoint``: LDM numbers the decoder levels from the bottom.
    """
    last = SD15_LEVELS - 1
    if m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", name):
        return f"{m[1]}.norm_out.{m[2]}"
    if re.fullmatch(r"(encoder|decoder)\.conv_(in|out)\..+|(post_)?quant_conv\..+", name):
        return name
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d)\.resnets\.(\d)\.(.+)", name):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d)\.downsamplers\.0\.conv\.(.+)", name):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d)\.resnets\.(\d)\.(.+)", name):
        return f"decoder.up.{last - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d)\.upsamplers\.0\.conv\.(.+)", name):
        return f"decoder.up.{last - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", name):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", name):
        return f"{m[1]}.mid.attn_1.{VAE_ATTENTION.get(m[2], m[2])}.{m[3]}"
    return None
