"""Tiny random-initialised SD1.5, ControlNet, IP-Adapter and image-encoder files, in the real formats and folders.

The whole graph (loader, sampler, CLI) must run offline in tests and demos, through exactly the code that
loads real models: the files below are what a ComfyUI user keeps, only with tiny widths. The block topology
is SD1.5's (4 levels, 2 resnets, attention on the first three, 16 cross-attention layers), so IP-Adapter
layer numbering, style-block targeting and LDM key names behave as with real weights. Real models simply
replace the files.

Nothing here downloads anything; the configs are the ones shipped in ``configs/`` with smaller widths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..model_folders import CHECKPOINTS, CLIP_VISION, CONTROLNET, IPADAPTER
from ..rendering import architectures as arch
from .ldm_layout import controlnet_checkpoint, sd15_checkpoint

TINY_SEED = 0
TINY_UNET_CHANNELS = (32, 32, 64, 64)  # SD1.5: 320, 640, 1280, 1280
TINY_VAE_CHANNELS = (32, 32, 32, 32)  # SD1.5: 128, 256, 512, 512
TINY_TEXT_HIDDEN = 64  # CLIP-L: 768 (also the UNet's cross-attention width)
TINY_VISION_HIDDEN = 80  # ViT-H: 1280
TINY_IMAGE_EMBED = 32  # ViT-H projection: 1024
TINY_RESAMPLER_WIDTH = 64  # ip-adapter-plus resampler: 768

CHECKPOINT_NAME = "tiny-sd15.safetensors"
CONTROLNET_NAMES = ("tiny-control_sd15_canny.safetensors", "tiny-control_sd15_canny.pth")
IP_ADAPTER_NAMES = (
    "tiny-ip-adapter_sd15.safetensors",
    "tiny-ip-adapter_sd15.bin",
    "tiny-ip-adapter-plus_sd15.safetensors",
)
IMAGE_ENCODER_NAME = "tiny-CLIP-ViT-H-14.safetensors"


def tiny_widths() -> arch.Sd15Widths:
    return arch.Sd15Widths(
        unet_channels=TINY_UNET_CHANNELS,
        cross_attention_dim=TINY_TEXT_HIDDEN,
        vae_channels=TINY_VAE_CHANNELS,
        text_hidden=TINY_TEXT_HIDDEN,
        text_intermediate=2 * TINY_TEXT_HIDDEN,
        text_layers=2,
        vocab_size=49408,  # the shipped CLIP tokenizer's vocabulary
        max_positions=77,
    )


def _randomise(module: torch.nn.Module, generator: torch.Generator, std: float) -> None:
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * std)


def build_tiny_sd15(seed: int = TINY_SEED) -> dict[str, Any]:
    """UNet, VAE, CLIP text encoder, canny-style ControlNet and image encoder, random but reproducible."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    widths = tiny_widths()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(arch.unet_config(widths.unet_channels, widths.cross_attention_dim))
    vae = AutoencoderKL.from_config(arch.vae_config(widths.vae_channels))
    text_encoder = CLIPTextModel(CLIPTextConfig(**arch.text_encoder_config(widths)))
    controlnet = ControlNetModel.from_unet(unet)  # how real ControlNets start: a copy of the UNet encoder
    # The zero-initialised output convolutions make a fresh ControlNet a no-op; a canny ControlNet after
    # training is not, and tests of its scale need it to have an effect.
    generator = torch.Generator().manual_seed(seed + 1)
    _randomise(controlnet.controlnet_down_blocks, generator, 0.05)
    _randomise(controlnet.controlnet_mid_block, generator, 0.05)
    vision = arch.image_encoder_config(TINY_VISION_HIDDEN, 2 * TINY_VISION_HIDDEN, 2, 32, 8, TINY_IMAGE_EMBED)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision))
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "controlnet": controlnet,
        "image_encoder": image_encoder,
    }


def cross_attention_widths(unet: Any) -> dict[int, int]:
    """Processor index -> hidden width of each cross-attention layer, numbered as IP-Adapter files number them.

    IP-Adapter's checkpoint holds every attention processor in order (self- and cross-attention alternate),
    so the cross-attention ones are the odd indices 1, 3, ..., 31 on SD1.5.
    """
    config = unet.config
    channels = list(config.block_out_channels)
    widths = {}
    for index, name in enumerate(unet.attn_processors):
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            widths[index] = channels[-1]
        elif name.startswith("up_blocks."):
            widths[index] = channels[::-1][int(name.split(".")[1])]
        else:
            widths[index] = channels[int(name.split(".")[1])]
    return widths


def ip_adapter_state_dict(unet: Any, plus: bool, seed: int = TINY_SEED) -> dict[str, torch.Tensor]:
    """An IP-Adapter SD1.5 state dict with h94's flat key names (``image_proj.*``, ``ip_adapter.N.to_k_ip``)."""
    g = torch.Generator().manual_seed(seed + (7 if plus else 5))
    cad = TINY_TEXT_HIDDEN

    def rand(*shape: int, std: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    sd: dict[str, torch.Tensor] = {}
    if plus:  # the Resampler of ip-adapter-plus: 16 learned queries attending to the encoder's patch tokens
        dim = TINY_RESAMPLER_WIDTH
        sd["image_proj.latents"] = rand(1, 16, dim, std=1.0)
        sd["image_proj.proj_in.weight"], sd["image_proj.proj_in.bias"] = rand(dim, TINY_VISION_HIDDEN), torch.zeros(dim)
        sd["image_proj.proj_out.weight"], sd["image_proj.proj_out.bias"] = rand(cad, dim), torch.zeros(cad)
        sd["image_proj.norm_out.weight"], sd["image_proj.norm_out.bias"] = torch.ones(cad), torch.zeros(cad)
        for i in range(4):
            layer = f"image_proj.layers.{i}"
            for norm in ("0.norm1", "0.norm2", "1.0"):
                sd[f"{layer}.{norm}.weight"], sd[f"{layer}.{norm}.bias"] = torch.ones(dim), torch.zeros(dim)
            sd[f"{layer}.0.to_q.weight"] = rand(dim, dim)
            sd[f"{layer}.0.to_kv.weight"] = rand(2 * dim, dim)
            sd[f"{layer}.0.to_out.weight"] = rand(dim, dim)
            sd[f"{layer}.1.1.weight"] = rand(4 * dim, dim)
            sd[f"{layer}.1.3.weight"] = rand(dim, 4 * dim)
    else:
        sd["image_proj.proj.weight"] = rand(cad * arch.IP_ADAPTER_SD15_TOKENS, TINY_IMAGE_EMBED)
        sd["image_proj.proj.bias"] = torch.zeros(cad * arch.IP_ADAPTER_SD15_TOKENS)
        sd["image_proj.norm.weight"], sd["image_proj.norm.bias"] = torch.ones(cad), torch.zeros(cad)
    for index, hidden in cross_attention_widths(unet).items():
        sd[f"ip_adapter.{index}.to_k_ip.weight"] = rand(hidden, cad)
        sd[f"ip_adapter.{index}.to_v_ip.weight"] = rand(hidden, cad)
    return {k: v.half().contiguous() for k, v in sd.items()}  # h94 ships fp16


def nest_ip_adapter(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The ``.bin`` layout of h94's files: ``{"image_proj": {...}, "ip_adapter": {...}}``."""
    nested: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        group, _, rest = key.partition(".")
        nested[group][rest] = value
    return nested


def write_tiny_sd_models(models_dir: Path) -> list[Path]:
    """Write the tiny SD1.5 set into a ComfyUI ``models/`` folder and return the files written.

    ``checkpoints/`` gets an fp16 single-file checkpoint in the original LDM layout, ``controlnet/`` a canny
    ControlNet as ComfyUI's fp16 ``.safetensors`` and as lllyasviel's ``.pth`` (``control_model.`` prefix),
    ``ipadapter/`` ip-adapter_sd15 (``.safetensors`` and ``.bin``) and the plus variant, ``clip_vision/`` the
    image encoder. Same seed, same bytes of weights.
    """
    from safetensors.torch import save_file

    models = build_tiny_sd15()
    folders = {name: models_dir / name for name in (CHECKPOINTS, CONTROLNET, IPADAPTER, CLIP_VISION)}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def keep(path: Path) -> Path:
        written.append(path)
        return path

    checkpoint = sd15_checkpoint(models["unet"], models["vae"], models["text_encoder"], dtype=torch.float16)
    save_file(checkpoint, str(keep(folders[CHECKPOINTS] / CHECKPOINT_NAME)))
    save_file(
        controlnet_checkpoint(models["controlnet"], prefix="", dtype=torch.float16),
        str(keep(folders[CONTROLNET] / CONTROLNET_NAMES[0])),
    )
    torch.save(controlnet_checkpoint(models["controlnet"]), keep(folders[CONTROLNET] / CONTROLNET_NAMES[1]))
    plain = ip_adapter_state_dict(models["unet"], plus=False)
    save_file(plain, str(keep(folders[IPADAPTER] / IP_ADAPTER_NAMES[0])))
    torch.save(nest_ip_adapter(plain), keep(folders[IPADAPTER] / IP_ADAPTER_NAMES[1]))
    save_file(ip_adapter_state_dict(models["unet"], plus=True), str(keep(folders[IPADAPTER] / IP_ADAPTER_NAMES[2])))
    encoder = {k: v.half().contiguous() for k, v in models["image_encoder"].state_dict().items()}
    save_file(encoder, str(keep(folders[CLIP_VISION] / IMAGE_ENCODER_NAME)))
    return written
