"""Tiny LoRAs for the tiny SD1.5, in the two layouts users keep in ``models/loras``, plus wrong files to refuse.

One random LoRA (rank 4, alpha 2) covers what kohya's sd-scripts trains on SD1.5: every attention
projection, feed-forward and ``proj_in``/``proj_out`` of the UNet's transformers, one resnet 3x3 conv (a LoCon
layer), and every attention/MLP projection of the text encoder. It is written twice:

- kohya/A1111 layout by hand (``lora_unet_<module_with_underscores>.lora_down.weight`` / ``lora_up`` / ``alpha``,
  text encoder under ``lora_te_text_model_…``), as sd-scripts writes it; ComfyUI core's LoRA loader reading the
  same file is the test that this layout is the real one;
- diffusers layout by diffusers' own ``save_lora_weights`` (``unet.…lora_A.weight``, alpha in the metadata).

The fakes carry an SDXL's or an SD2's key names and shapes (at rank 1, so they stay small).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .sd import TINY_SEED

LORA_NAMES = ("tiny-lora_sd15_kohya.safetensors", "tiny-lora_sd15_diffusers.safetensors")
TINY_LORA_RANK = 4
TINY_LORA_ALPHA = 2.0
_UNET_LEAVES = (
    "proj_in",
    "proj_out",
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_q",
    "attn2.to_k",
    "attn2.to_v",
    "attn2.to_out.0",
    "ff.net.0.proj",
    "ff.net.2",
)
_LOCON_MODULE = "down_blocks.0.resnets.0.conv1"
_TEXT_LEAVES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


@dataclass(frozen=True)
class TinyLoraLayer:
    component: str  # "unet" or "text_encoder"
    module: str  # diffusers module name (text encoder: without ``text_model.``)
    down: torch.Tensor
    up: torch.Tensor


def _targets(unet: Any, text_encoder: Any) -> Iterator[tuple[str, str, torch.nn.Module]]:
    for name, module in unet.named_modules():
        if (".attentions." in name and name.endswith(_UNET_LEAVES)) or name == _LOCON_MODULE:
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                yield "unet", name, module
    for name, module in text_encoder.named_modules():
        if name.endswith(_TEXT_LEAVES) and isinstance(module, torch.nn.Linear):
            yield "text_encoder", name.removeprefix("text_model."), module


def tiny_lora_layers(unet: Any, text_encoder: Any, seed: int = TINY_SEED) -> list[TinyLoraLayer]:
    """The tiny LoRA's down/up pairs (fp16, as LoRAs ship), shaped for ``unet`` and ``text_encoder``."""
    g = torch.Generator().manual_seed(seed + 11)
    layers = []
    for component, name, module in _targets(unet, text_encoder):
        weight = module.get_parameter("weight")
        out_features, in_features, *kernel = (int(n) for n in weight.shape)
        # kohya's conv layers: down carries the kernel, up is 1x1
        down_shape = (TINY_LORA_RANK, in_features, *kernel)
        up_shape = (out_features, TINY_LORA_RANK, *([1] * len(kernel)))
        down = torch.randn(down_shape, generator=g) * 0.3
        up = torch.randn(up_shape, generator=g) * 0.3
        layers.append(TinyLoraLayer(component, name, down.half().contiguous(), up.half().contiguous()))
    return layers


def kohya_state_dict(layers: list[TinyLoraLayer], alpha: float = TINY_LORA_ALPHA) -> dict[str, torch.Tensor]:
    """sd-scripts' SD1.x layout: module names with ``_`` for ``.``, ``lora_unet_``/``lora_te_`` prefixes."""
    out: dict[str, torch.Tensor] = {}
    for layer in layers:
        if layer.component == "unet":
            name = "lora_unet_" + layer.module.replace(".", "_")
        else:
            name = "lora_te_text_model_" + layer.module.replace(".", "_")
        out[f"{name}.lora_down.weight"] = layer.down
        out[f"{name}.lora_up.weight"] = layer.up
        out[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.float16)
    return out


def write_kohya(layers: list[TinyLoraLayer], path: Path, alpha: float = TINY_LORA_ALPHA) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(kohya_state_dict(layers, alpha), str(path), metadata={"ss_network_module": "networks.lora"})
    return path


def write_diffusers(layers: list[TinyLoraLayer], path: Path, alpha: float = TINY_LORA_ALPHA) -> Path:
    """The same LoRA through diffusers' own writer (``save_lora_weights``), alpha in its adapter metadata."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    unet: dict[str, Any] = {}  # diffusers types these as modules or tensors
    text: dict[str, Any] = {}
    for layer in layers:
        target, module = (unet, layer.module) if layer.component == "unet" else (text, f"text_model.{layer.module}")
        target[f"{module}.lora_A.weight"] = layer.down
        target[f"{module}.lora_B.weight"] = layer.up

    def config(part: dict[str, Any]) -> dict[str, Any]:
        modules = sorted({k.split(".lora_")[0] for k in part})
        return {"r": TINY_LORA_RANK, "lora_alpha": alpha, "target_modules": modules, "alpha_pattern": {}}

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sketch-rag-lora-") as tmp:
        StableDiffusionLoraLoaderMixin.save_lora_weights(
            tmp,
            unet_lora_layers=unet,
            text_encoder_lora_layers=text,
            weight_name=path.name,
            unet_lora_adapter_metadata=config(unet),
            text_encoder_lora_adapter_metadata=config(text),
        )
        Path(tmp, path.name).replace(path)
    return path


def write_tiny_loras(folder: Path, unet: Any, text_encoder: Any) -> list[Path]:
    """The tiny LoRA as ``loras/`` holds it: kohya and diffusers layout (same weights), returned in that order."""
    layers = tiny_lora_layers(unet, text_encoder)
    return [write_kohya(layers, folder / LORA_NAMES[0]), write_diffusers(layers, folder / LORA_NAMES[1])]


def write_fake_sdxl_lora(path: Path) -> Path:
    """kohya's SDXL layout: two text encoders (``lora_te1_``/``lora_te2_``), LDM block names, text width 2048."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(21)
    sd = {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.randn(
            1, 2048, generator=g
        ),
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.randn(640, 1, generator=g),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.randn(1, 768, generator=g),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.randn(768, 1, generator=g),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.randn(1, 1280, generator=g),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.randn(1280, 1, generator=g),
    }
    save_file({k: v.half() for k, v in sd.items()}, str(path))
    return path


def write_fake_sd2_lora(path: Path) -> Path:
    """kohya's SD2.x layout: SD1's module names, but OpenCLIP-H's text width 1024 and linear ``proj_in``."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(22)
    base = "lora_unet_down_blocks_0_attentions_0"
    sd = {
        f"{base}_proj_in.lora_down.weight": torch.randn(1, 320, generator=g),
        f"{base}_proj_in.lora_up.weight": torch.randn(320, 1, generator=g),
        f"{base}_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.randn(1, 1024, generator=g),
        f"{base}_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.randn(320, 1, generator=g),
        "lora_te_text_model_encoder_layers_22_self_attn_q_proj.lora_down.weight": torch.randn(1, 1024, generator=g),
        "lora_te_text_model_encoder_layers_22_self_attn_q_proj.lora_up.weight": torch.randn(1024, 1, generator=g),
    }
    alphas = {k.replace(".lora_down.weight", ".alpha"): torch.tensor(1.0) for k in sd if "lora_down" in k}
    save_file({k: v.half() for k, v in {**sd, **alphas}.items()}, str(path))
    return path


def write_random_tensors(path: Path) -> Path:
    """A safetensors file of tensors with no LoRA names at all (e.g. an embedding or an upscaler)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(23)
    save_file(
        {"emb_params": torch.randn(2, 64, generator=g), "layer.0.weight": torch.randn(8, 8, generator=g)}, str(path)
    )
    return path
