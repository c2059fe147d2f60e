"""An SD1.5 single-file checkpoint turned into diffusers' UNet, VAE and CLIP text encoder, strictly.

diffusers' ``from_single_file`` fills every weight a checkpoint lacks with fresh random values and says
nothing, and it reads the file itself (a ``.ckpt`` already unpickled by the shape check would be unpickled a
second time). Here the keys go through diffusers' own converters (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``), first on meta tensors made from the shapes, so that a checkpoint missing any
weight is refused while the warm model is still loaded, then on the real tensors, which are loaded with
``strict=True``.

Older SD1.x merges keep the text encoder without ``text_model.`` (``cond_stage_model.transformer.encoder
.layers…``): ComfyUI core (``supported_models.SD15.process_clip_state_dict``) and A1111 insert it, and so does
:func:`text_encoder_keys`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..errors import ModelMismatchError
from . import architectures as arch
from .ldm_names import unet_module_to_ldm, vae_key_to_ldm

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer."
TEXT_MODEL_PREFIX = TEXT_PREFIX + "text_model."
POSITION_IDS = "embeddings.position_ids"  # a buffer, not a weight: some files carry it, the model makes its own
PARTS = ("unet", "vae", "text_encoder")
PART_NAMES = {"unet": "UNet", "vae": "VAE", "text_encoder": "CLIP text encoder"}

V = TypeVar("V")


def text_encoder_keys(state: Mapping[str, V]) -> dict[str, V]:
    """``state`` with every ``cond_stage_model.transformer.X`` key under ``…transformer.text_model.X``."""
    out: dict[str, V] = {}
    for key, value in state.items():
        if key.startswith(TEXT_PREFIX) and not key.startswith(TEXT_MODEL_PREFIX):
            key = TEXT_MODEL_PREFIX + key[len(TEXT_PREFIX) :]
        out[key] = value
    return out


@dataclass(frozen=True)
class CheckedCheckpoint:
    """What the check of a single-file checkpoint found: its widths and, for a pickle, the tensors it read."""

    widths: arch.Sd15Widths
    state: dict[str, torch.Tensor] | None


def _configs(widths: arch.Sd15Widths) -> dict[str, dict[str, Any]]:
    return {
        "unet": arch.unet_config(widths.unet_channels, widths.cross_attention_dim),
        "vae": arch.vae_config(widths.vae_channels),
        "text_encoder": arch.text_encoder_config(widths),
    }


def empty_models(widths: arch.Sd15Widths) -> dict[str, torch.nn.Module]:
    """UNet, VAE and text encoder on the meta device: the names and shapes the checkpoint must fill."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    configs = _configs(widths)
    with torch.device("meta"):
        return {
            "unet": UNet2DConditionModel.from_config(configs["unet"]),
            "vae": AutoencoderKL.from_config(configs["vae"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
        }


def convert(
    state: Mapping[str, torch.Tensor], widths: arch.Sd15Widths, text_model_prefix: bool, path: Path
) -> dict[str, dict[str, torch.Tensor]]:
    """The checkpoint's tensors in diffusers' names, per part, by diffusers' own converters.

    Raises:
        ModelMismatchError: a weight the converters need is absent.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    configs = _configs(widths)
    state = text_encoder_keys(state)
    converted = {}
    # The converters index some keys directly: an absent one is a KeyError naming it without its prefix.
    for part, converter, prefix in (
        ("unet", convert_ldm_unet_checkpoint, UNET_PREFIX),
        ("vae", convert_ldm_vae_checkpoint, VAE_PREFIX),
    ):
        try:
            converted[part] = dict(converter(state, configs[part]))
        except KeyError as exc:
            key = str(exc.args[0]) if exc.args else "?"
            raise _incomplete(path, [key if key.startswith(prefix) else prefix + key]) from exc
    inner = "text_model." if text_model_prefix else ""
    text = {
        inner + k[len(TEXT_MODEL_PREFIX) :]: v
        for k, v in state.items()
        if k.startswith(TEXT_MODEL_PREFIX) and not k.endswith(POSITION_IDS)
    }
    return {**converted, "text_encoder": text}


def _file_name(part: str, key: str) -> str:
    """A missing weight as the checkpoint would name it (LDM keys), for the message."""
    if part == "unet":
        ldm = unet_module_to_ldm(key)
        return f"{UNET_PREFIX}{ldm}" if ldm else f"{UNET_PREFIX}… ({key} in diffusers' names)"
    if part == "text_encoder":
        return TEXT_MODEL_PREFIX + key.removeprefix("text_model.")
    ldm = vae_key_to_ldm(key)
    return f"{VAE_PREFIX}{ldm}" if ldm else f"{VAE_PREFIX}… (VAE {key} in diffusers' names)"


def _incomplete(path: Path, missing: list[str]) -> ModelMismatchError:
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    return ModelMismatchError(
        f"{path.name} is an incomplete SD1.5 checkpoint: it lacks {len(missing)} weight(s) the UNet, VAE and text "
        f"encoder need ({shown}); the file is damaged or was saved without them. Nothing was loaded. Download "
        f"the checkpoint again into {path.parent}, or use a complete one such as v1-5-pruned-emaonly.safetensors."
    )


def missing_weights(shapes: Mapping[str, tuple[int, ...]], widths: arch.Sd15Widths, path: Path) -> list[str]:
    """The weights of UNet, VAE and text encoder the checkpoint does not hold, named as the file would name them.

    Runs the real converters on meta tensors of the file's shapes, so nothing is read or allocated.
    """
    models = empty_models(widths)
    text_model_prefix = hasattr(models["text_encoder"], "text_model")
    meta = {
        k: torch.empty(shape, device="meta")
        for k, shape in shapes.items()
        if k.startswith((UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX))
    }
    converted = convert(meta, widths, text_model_prefix, path)
    missing = []
    for part in PARTS:
        wanted = [k for k in models[part].state_dict() if not k.endswith(POSITION_IDS)]
        missing += [_file_name(part, k) for k in wanted if k not in converted[part]]
    return missing


def check_complete(shapes: Mapping[str, tuple[int, ...]], widths: arch.Sd15Widths, path: Path) -> None:
    """Refuse a checkpoint that lacks any UNet, VAE or text-encoder weight, naming some of them.

    Raises:
        ModelMismatchError: weights are missing.
    """
    missing = missing_weights(shapes, widths, path)
    if missing:
        raise _incomplete(path, missing)


def build(
    state: Mapping[str, torch.Tensor], widths: arch.Sd15Widths, dtype: torch.dtype, path: Path
) -> dict[str, torch.nn.Module]:
    """UNet, VAE and text encoder holding exactly the checkpoint's weights, every tensor cast to ``dtype``.

    Raises:
        ModelMismatchError: a weight is missing or has the wrong shape.
    """
    models = empty_models(widths)
    converted = convert(state, widths, hasattr(models["text_encoder"], "text_model"), path)
    for part, model in models.items():
        tensors = {k: v.to(dtype) for k, v in converted[part].items()}
        buffers = {k for k, _ in model.named_buffers()}
        tensors = {k: v for k, v in tensors.items() if k not in buffers}
        try:
            model.load_state_dict(tensors, strict=False, assign=True)
        except RuntimeError as exc:  # a shape that does not fit
            raise ModelMismatchError(
                f"{path.name} has a {PART_NAMES[part]} weight of the wrong shape "
                f"({str(exc).splitlines()[-1].strip()[:200]}). Download the checkpoint again into {path.parent}."
            ) from exc
        still_meta = [k for k, v in model.state_dict().items() if v.is_meta and not k.endswith(POSITION_IDS)]
        if still_meta:
            raise _incomplete(path, [_file_name(part, k) for k in still_meta])
    _real_position_ids(models["text_encoder"], widths.max_positions)
    return models


def _real_position_ids(text_encoder: torch.nn.Module, positions: int) -> None:
    """The text encoder's position-id buffer was made on the meta device and is in no file: make it real."""
    embeddings: Any = getattr(text_encoder, "text_model", text_encoder).embeddings
    embeddings.register_buffer("position_ids", torch.arange(positions).expand((1, -1)), persistent=False)
