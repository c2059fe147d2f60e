"""The SD1.5 family's configs, shipped with the pack, and what a model file's tensor shapes say about it.

diffusers' ``from_single_file`` needs a diffusers-format config folder; without a local one it goes to the
Hub even with ``local_files_only=True`` (and hangs on a dead network). The pack therefore ships the SD1.5,
ControlNet and ViT-H image-encoder configs under ``configs/`` (small JSON files plus the CLIP tokenizer).

The block *topology* (4 levels, 2 resnets each, attention on the first three) must be SD1.5's; the *widths*
are read from the file. That is how the tiny test models load through exactly the code path of the real
ones, and how a file of another family (SDXL, SD2, an SDXL IP-Adapter) is recognised and refused before
anything is built.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelMismatchError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SD15_CONFIG_DIR = CONFIG_DIR / "sd15"
CONTROLNET_CONFIG_DIR = CONFIG_DIR / "controlnet_sd15"
IMAGE_ENCODER_CONFIG_DIR = CONFIG_DIR / "image_encoder_vit_h"

SD15_LEVELS = 4
SD15_LAYERS_PER_BLOCK = 2
SD15_ATTENTION_LEVELS = (0, 1, 2)
TEXT_HEAD_DIM = 64  # CLIP ViT-L/14 text tower: 768 wide, 12 heads
VISION_HEAD_DIM = 80  # CLIP ViT-H/14 vision tower: 1280 wide, 16 heads
# The other vision towers kept in models/clip_vision, by width; their heads are 64 (B, L) or 104 (bigG) wide.
OTHER_VISION_TOWERS = {
    768: "a CLIP ViT-B vision tower (768 wide)",
    1024: "a CLIP ViT-L/14 vision tower (1024 wide, e.g. clip_vision_l / SD1.5's own CLIP image side)",
    1664: "a CLIP ViT-bigG/14 vision tower (1664 wide, for SDXL IP-Adapters)",
}
IP_ADAPTER_SD15_TOKENS = 4  # ip-adapter_sd15: 4 image tokens; the plus variant: 16
IP_ADAPTER_FULL_FACE_TOKENS = 257  # ip-adapter-full-face_sd15: ViT-H/14's 256 patches + CLS at 224 px

Shapes = Mapping[str, tuple[int, ...]]


def read_config(folder: Path, name: str = "config.json") -> dict[str, Any]:
    """One shipped JSON config as a dict (a fresh copy; callers may change it)."""
    with open(folder / name, encoding="utf-8") as f:
        return dict(json.load(f))


@dataclass(frozen=True)
class Sd15Widths:
    """The sizes that may differ between SD1.5-topology checkpoints (real: 320/640/1280/1280, CLIP-L)."""

    unet_channels: tuple[int, ...]
    cross_attention_dim: int
    vae_channels: tuple[int, ...]
    text_hidden: int
    text_intermediate: int
    text_layers: int
    vocab_size: int
    max_positions: int


def unet_config(channels: tuple[int, ...], cross_attention_dim: int) -> dict[str, Any]:
    config = read_config(SD15_CONFIG_DIR / "unet")
    config.update(block_out_channels=list(channels), cross_attention_dim=cross_attention_dim)
    return config


def vae_config(channels: tuple[int, ...]) -> dict[str, Any]:
    config = read_config(SD15_CONFIG_DIR / "vae")
    config.update(block_out_channels=list(channels))
    return config


def text_encoder_config(widths: Sd15Widths) -> dict[str, Any]:
    config = read_config(SD15_CONFIG_DIR / "text_encoder")
    config.update(
        hidden_size=widths.text_hidden,
        projection_dim=widths.text_hidden,
        intermediate_size=widths.text_intermediate,
        num_hidden_layers=widths.text_layers,
        num_attention_heads=max(1, widths.text_hidden // TEXT_HEAD_DIM),
        vocab_size=widths.vocab_size,
        max_position_embeddings=widths.max_positions,
    )
    return config


def controlnet_config(channels: tuple[int, ...], cross_attention_dim: int) -> dict[str, Any]:
    config = read_config(CONTROLNET_CONFIG_DIR)
    config.update(block_out_channels=list(channels), cross_attention_dim=cross_attention_dim)
    return config


def image_encoder_config(
    hidden: int, intermediate: int, layers: int, image_size: int, patch_size: int, projection_dim: int
) -> dict[str, Any]:
    config = read_config(IMAGE_ENCODER_CONFIG_DIR)
    config.update(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // VISION_HEAD_DIM),
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=projection_dim,
    )
    return config


def write_sd15_config_folder(target: Path, widths: Sd15Widths) -> Path:
    """A diffusers-format config folder for ``from_single_file(config=…)``: the shipped one with ``widths``."""
    target.mkdir(parents=True, exist_ok=True)
    for sub in ("scheduler", "tokenizer"):
        (target / sub).mkdir(exist_ok=True)
        for file in (SD15_CONFIG_DIR / sub).iterdir():
            (target / sub / file.name).write_bytes(file.read_bytes())
    (target / "model_index.json").write_bytes((SD15_CONFIG_DIR / "model_index.json").read_bytes())
    parts = {
        "unet": unet_config(widths.unet_channels, widths.cross_attention_dim),
        "vae": vae_config(widths.vae_channels),
        "text_encoder": text_encoder_config(widths),
    }
    for sub, config in parts.items():
        (target / sub).mkdir(exist_ok=True)
        (target / sub / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return target


# ---------------------------------------------------------------------------------------------------------------
# Reading a file's shapes
# ---------------------------------------------------------------------------------------------------------------


def _levels(shapes: Shapes, prefix: str) -> tuple[int, ...]:
    """Output channels of the first resnet of each down level, in LDM numbering (``input_blocks.N``)."""
    per_level = SD15_LAYERS_PER_BLOCK + 1
    channels = []
    for level in range(SD15_LEVELS):
        key = f"{prefix}input_blocks.{per_level * level + 1}.0.out_layers.3.weight"
        if key not in shapes:
            break
        channels.append(shapes[key][0])
    return tuple(channels)


def _check_unet_topology(shapes: Shapes, prefix: str, path: Path, what: str) -> None:
    indices = {int(m[1]) for k in shapes if (m := re.match(re.escape(prefix) + r"input_blocks\.(\d+)\.", k))}
    expected = set(range(SD15_LEVELS * (SD15_LAYERS_PER_BLOCK + 1)))
    attention = {
        level
        for level in range(SD15_LEVELS)
        if f"{prefix}input_blocks.{(SD15_LAYERS_PER_BLOCK + 1) * level + 1}.1.proj_in.weight" in shapes
    }
    if indices != expected or attention != set(SD15_ATTENTION_LEVELS):
        raise ModelMismatchError(
            f"{path.name} is not an SD1.5 {what}: its UNet has input blocks {sorted(indices)} with attention on "
            f"levels {sorted(attention)}, SD1.5 has blocks 0-11 with attention on levels 0-2. Pick an SD1.5 "
            f"{what} (e.g. v1-5-pruned-emaonly.safetensors / control_v11p_sd15_canny.pth)."
        )


def _cross_attention_dim(shapes: Shapes, prefix: str) -> int:
    return shapes[f"{prefix}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"][1]


def sd15_widths(shapes: Shapes, path: Path) -> Sd15Widths:
    """Check that a single-file checkpoint is SD1.x-shaped and read its widths.

    Raises:
        ModelMismatchError: an SDXL, SD2, SD3/Flux or otherwise non-SD1.5 file, or one with missing parts.
    """
    keys = shapes.keys()
    if any(k.startswith("conditioner.embedders.") for k in keys):
        raise ModelMismatchError(
            f"{path.name} is an SDXL checkpoint; this sampler runs Stable Diffusion 1.5. Pick an SD1.5 checkpoint "
            "(e.g. v1-5-pruned-emaonly.safetensors) in models/checkpoints."
        )
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise ModelMismatchError(
            f"{path.name} is an SD2.x checkpoint (OpenCLIP text encoder); this sampler runs Stable Diffusion 1.5. "
            "Pick an SD1.5 checkpoint (e.g. v1-5-pruned-emaonly.safetensors) in models/checkpoints."
        )
    unet = "model.diffusion_model."
    text = "cond_stage_model.transformer.text_model."
    needed = [
        f"{unet}input_blocks.0.0.weight",
        "first_stage_model.encoder.conv_in.weight",
        f"{text}embeddings.token_embedding.weight",
    ]
    missing = [k for k in needed if k not in keys]
    if missing:
        raise ModelMismatchError(
            f"{path.name} is not a complete SD1.5 single-file checkpoint: it lacks {', '.join(missing)} (UNet, VAE "
            "and CLIP text encoder must all be in the file). Pick a full checkpoint such as "
            "v1-5-pruned-emaonly.safetensors, not a UNet-only or LoRA file."
        )
    _check_unet_topology(shapes, unet, path, "checkpoint")
    if shapes[f"{unet}input_blocks.0.0.weight"][1] != 4:
        raise ModelMismatchError(
            f"{path.name} has a UNet with {shapes[f'{unet}input_blocks.0.0.weight'][1]} input channels (an inpainting "
            "or instruct-pix2pix model); this sampler needs a plain 4-channel SD1.5 checkpoint."
        )
    vae_channels = []
    for level in range(SD15_LEVELS):
        key = f"first_stage_model.encoder.down.{level}.block.0.conv1.weight"
        if key not in keys:
            raise ModelMismatchError(f"{path.name} has a VAE without level {level} ({key}); it is not an SD1.5 VAE.")
        vae_channels.append(shapes[key][0])
    token = shapes[f"{text}embeddings.token_embedding.weight"]
    layers = {int(m[1]) for k in keys if (m := re.match(re.escape(text) + r"encoder\.layers\.(\d+)\.", k))}
    return Sd15Widths(
        unet_channels=_levels(shapes, unet),
        cross_attention_dim=_cross_attention_dim(shapes, unet),
        vae_channels=tuple(vae_channels),
        text_hidden=token[1],
        text_intermediate=shapes[f"{text}encoder.layers.0.mlp.fc1.weight"][0],
        text_layers=len(layers),
        vocab_size=token[0],
        max_positions=shapes[f"{text}embeddings.position_embedding.weight"][0],
    )


CONTROLNET_HINT_CHANNELS = 3
"""The sampler conditions on RGB control images (canny, lineart, scribble, softedge, tile ... all take 3)."""

SD2_CROSS_ATTENTION_DIM = 1024  # OpenCLIP ViT-H/14; SD1.5 has CLIP ViT-L/14's 768, SDXL 2048
DIFFUSERS_CONTROLNET_KEY = "controlnet_cond_embedding.conv_in.weight"
DIFF_CONTROLNET_KEY = "difference"


def controlnet_prefix(shapes: Shapes) -> str:
    """The key prefix of an original-layout ControlNet: ``control_model.`` (lllyasviel ``.pth``) or none.

    ``"?"`` when the file is not a ControlNet in the original layout (diffusers layout, or not a ControlNet).
    """
    for prefix in ("control_model.", ""):
        if f"{prefix}input_hint_block.0.weight" in shapes:
            return prefix
    return "?"


def is_diffusers_controlnet(shapes: Shapes) -> bool:
    """Whether a single file holds a ControlNet in diffusers' key layout (``diffusion_pytorch_model.safetensors``)."""
    return DIFFUSERS_CONTROLNET_KEY in shapes


_SD2_OR_SDXL_FIX = (
    "Pick an SD1.5 ControlNet (e.g. control_v11p_sd15_canny.pth, control_v11p_sd15_lineart.pth) in models/controlnet."
)


def controlnet_widths(shapes: Shapes, path: Path, cross_attention_dim: int | None = None) -> tuple[int, ...]:
    """Check that a file is an SD1.5 ControlNet and return its block widths.

    Any SD1.5 ControlNet qualifies, whatever it was trained on (canny, lineart, scribble, softedge, tile,
    depth ...) and whatever its file is called: they all share SD1.5's encoder topology and differ only in
    their weights. Both key layouts users keep are recognised: the original one (lllyasviel's ``.pth``, with
    or without ``control_model.``, and ComfyUI's fp16 ``.safetensors`` repacks) and diffusers' own
    (``diffusion_pytorch_model.safetensors`` saved under another name).

    Raises:
        ModelMismatchError: not a ControlNet, an SDXL or SD2.x ControlNet, one whose hint is not an RGB image,
            or one for another checkpoint width.
    """
    if DIFF_CONTROLNET_KEY in shapes:
        # kohya's diff_control_sd15_* files: control_model.* holds each weight minus the SD1.5 UNet's, and a
        # ``difference`` key marks them (ComfyUI's comfy/controlnet.py adds the checkpoint's UNet back when it
        # sees that key). Loaded as weights they would steer the render with garbage.
        raise ModelMismatchError(
            f"{path.name} is a 'diff' ControlNet (kohya diff_control_sd15_*, with a 'difference' key): it holds "
            "differences from an SD1.5 UNet, not ControlNet weights, and this sampler does not rebuild them. Use the "
            "full ControlNet for the same control type (e.g. control_v11p_sd15_canny.pth or "
            "control_sd15_canny.pth) in models/controlnet, or ComfyUI's DiffControlNetLoader with its own sampler."
        )
    if is_diffusers_controlnet(shapes):
        return _diffusers_controlnet_widths(shapes, path, cross_attention_dim)
    prefix = controlnet_prefix(shapes)
    if prefix == "?":
        raise ModelMismatchError(
            f"{path.name} is not a ControlNet (no input_hint_block or controlnet_cond_embedding weights; a "
            "T2I-Adapter, LoRA or checkpoint is not one). Pick an SD1.5 ControlNet such as "
            "control_v11p_sd15_canny.pth in models/controlnet."
        )
    if (
        f"{prefix}label_emb.0.0.weight" in shapes
        or f"{prefix}input_blocks.7.1.transformer_blocks.1.attn1.to_q.weight" in shapes
    ):
        raise ModelMismatchError(f"{path.name} is an SDXL ControlNet; the checkpoint is SD1.5. {_SD2_OR_SDXL_FIX}")
    _check_unet_topology(shapes, prefix, path, "ControlNet")
    _check_controlnet_family(
        shapes,
        path,
        proj_in=f"{prefix}input_blocks.1.1.proj_in.weight",
        to_k=f"{prefix}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        hint=f"{prefix}input_hint_block.0.weight",
        cross_attention_dim=cross_attention_dim,
    )
    return _levels(shapes, prefix)


def _diffusers_controlnet_widths(shapes: Shapes, path: Path, cross_attention_dim: int | None) -> tuple[int, ...]:
    keys = shapes.keys()
    if any(k.startswith("add_embedding.") for k in keys) or any(".transformer_blocks.1." in k for k in keys):
        raise ModelMismatchError(f"{path.name} is an SDXL ControlNet; the checkpoint is SD1.5. {_SD2_OR_SDXL_FIX}")
    levels = {int(m[1]) for k in keys if (m := re.match(r"down_blocks\.(\d+)\.", k))}
    resnets = {int(m[1]) for k in keys if (m := re.match(r"down_blocks\.\d+\.resnets\.(\d+)\.", k))}
    attention = {level for level in levels if f"down_blocks.{level}.attentions.0.proj_in.weight" in keys}
    if levels != set(range(SD15_LEVELS)) or resnets != set(range(SD15_LAYERS_PER_BLOCK)) or attention != set(
        SD15_ATTENTION_LEVELS
    ):
        raise ModelMismatchError(
            f"{path.name} is not an SD1.5 ControlNet: it has down blocks {sorted(levels)} with {len(resnets)} resnets "
            f"each and attention on {sorted(attention)}; SD1.5 has blocks 0-3 with 2 resnets and attention on 0-2. "
            f"{_SD2_OR_SDXL_FIX}"
        )
    _check_controlnet_family(
        shapes,
        path,
        proj_in="down_blocks.0.attentions.0.proj_in.weight",
        to_k="down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
        hint=DIFFUSERS_CONTROLNET_KEY,
        cross_attention_dim=cross_attention_dim,
    )
    return tuple(shapes[f"down_blocks.{level}.resnets.0.conv1.weight"][0] for level in range(SD15_LEVELS))


def _check_controlnet_family(
    shapes: Shapes, path: Path, proj_in: str, to_k: str, hint: str, cross_attention_dim: int | None
) -> None:
    """What separates an SD1.5 ControlNet from an SD2.x one of the same topology, and the hint it takes."""
    cad = shapes[to_k][1]
    # SD2.x projects into its transformers with a Linear (2-D weight), SD1.5 with a 1×1 convolution (4-D).
    if len(shapes[proj_in]) == 2 or cad == SD2_CROSS_ATTENTION_DIM:
        raise ModelMismatchError(
            f"{path.name} is an SD2.x ControlNet (text width {cad}, linear projections); the checkpoint is SD1.5. "
            f"{_SD2_OR_SDXL_FIX}"
        )
    if cross_attention_dim is not None and cad != cross_attention_dim:
        raise ModelMismatchError(
            f"{path.name} expects text embeddings of width {cad}, the checkpoint gives {cross_attention_dim}: they are "
            "not from the same model family. Pick a ControlNet made for SD1.5."
        )
    channels = shapes[hint][1]
    if channels != CONTROLNET_HINT_CHANNELS:
        raise ModelMismatchError(
            f"{path.name} is a ControlNet whose control image has {channels} channels; this sampler feeds it an RGB "
            f"image ({CONTROLNET_HINT_CHANNELS} channels). Pick an SD1.5 ControlNet that takes an image "
            "(canny, lineart, scribble, softedge, tile ...)."
        )


@dataclass(frozen=True)
class IpAdapterInfo:
    """What an IP-Adapter file is: the plain variant (4 tokens from the pooled embedding) or one fed with the
    encoder's patch features (``plus``: plus, 16 tokens, and full-face, 257)."""

    plus: bool
    cross_attention_dim: int
    image_embed_dim: int
    tokens: int


def ip_adapter_info(shapes: Shapes, path: Path, cross_attention_dim: int, cross_attention_layers: int) -> IpAdapterInfo:
    """Check an IP-Adapter state dict (flat ``image_proj.*`` / ``ip_adapter.*`` keys) against the checkpoint.

    Raises:
        ModelMismatchError: an SDXL or FaceID adapter, or not an IP-Adapter at all.
    """
    full_face = "image_proj.proj.3.weight" in shapes  # ip-adapter-full-face_sd15: an MLP with a final LayerNorm
    if (not full_face and "image_proj.proj.0.weight" in shapes) or any(
        k.startswith("image_proj.perceiver_resampler.") for k in shapes
    ):
        raise ModelMismatchError(
            f"{path.name} is an IP-Adapter FaceID/FaceID-plus model, which needs InsightFace; use ip-adapter_sd15 or "
            "ip-adapter-plus_sd15 in models/ipadapter."
        )
    layers = {k.split(".")[1] for k in shapes if k.startswith("ip_adapter.") and k.endswith("to_k_ip.weight")}
    if not layers or not any(k.startswith("image_proj.") for k in shapes):
        raise ModelMismatchError(
            f"{path.name} is not an IP-Adapter (no image_proj / ip_adapter.N.to_k_ip weights). Put ip-adapter_sd15 "
            "or ip-adapter-plus_sd15 (.safetensors or .bin) in models/ipadapter."
        )
    first = min(layers, key=int)
    cad = shapes[f"ip_adapter.{first}.to_k_ip.weight"][1]
    if cad != cross_attention_dim or len(layers) != cross_attention_layers:
        family = "an SDXL" if cad == 2048 else "another model's"
        raise ModelMismatchError(
            f"{path.name} is {family} IP-Adapter ({len(layers)} attention layers of width {cad}); the SD1.5 checkpoint "
            f"has {cross_attention_layers} of width {cross_attention_dim}. "
            "Pick ip-adapter_sd15 or ip-adapter-plus_sd15."
        )
    if full_face:  # diffusers' IPAdapterFullImageProjection: every patch token of the encoder, projected
        return IpAdapterInfo(True, cad, shapes["image_proj.proj.0.weight"][1], IP_ADAPTER_FULL_FACE_TOKENS)
    if "image_proj.latents" in shapes:
        return IpAdapterInfo(True, cad, shapes["image_proj.proj_in.weight"][1], shapes["image_proj.latents"][1])
    proj = shapes["image_proj.proj.weight"]
    return IpAdapterInfo(False, cad, proj[1], proj[0] // cad)


def image_encoder_dims(shapes: Shapes, path: Path) -> dict[str, Any]:
    """The transformers ``CLIPVisionModelWithProjection`` config for a ``models/clip_vision`` single file.

    Raises:
        ModelMismatchError: not a transformers-layout CLIP vision tower with a projection.
    """
    pre = "vision_model."
    needed = [
        f"{pre}embeddings.patch_embedding.weight",
        f"{pre}embeddings.position_embedding.weight",
        "visual_projection.weight",
    ]
    missing = [k for k in needed if k not in shapes]
    if missing:
        raise ModelMismatchError(
            f"{path.name} is not a CLIP vision encoder in the transformers layout with a projection (missing "
            f"{', '.join(missing)}). IP-Adapter SD1.5 needs CLIP-ViT-H-14 (h94/IP-Adapter models/image_encoder/"
            "model.safetensors, kept by ComfyUI users as CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors) "
            "in models/clip_vision."
        )
    patch = shapes[f"{pre}embeddings.patch_embedding.weight"]
    hidden = patch[0]
    if hidden in OTHER_VISION_TOWERS or hidden % VISION_HEAD_DIM:
        tower = OTHER_VISION_TOWERS.get(hidden, f"a CLIP vision tower {hidden} wide")
        raise ModelMismatchError(
            f"{path.name} is {tower}, not ViT-H/14 (1280 wide, 16 heads of 80). IP-Adapter SD1.5 (plain, plus and "
            "full-face) is trained on ViT-H/14's features: put h94/IP-Adapter models/image_encoder/model.safetensors "
            "(ComfyUI users name it CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors) in models/clip_vision and pick it."
        )
    positions = shapes[f"{pre}embeddings.position_embedding.weight"][0]
    grid = round((positions - 1) ** 0.5)
    layers = {int(m[1]) for k in shapes if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k))}
    return image_encoder_config(
        hidden=hidden,
        intermediate=shapes[f"{pre}encoder.layers.0.mlp.fc1.weight"][0],
        layers=len(layers),
        image_size=grid * patch[2],
        patch_size=patch[2],
        projection_dim=shapes["visual_projection.weight"][0],
    )
