"""Loading each model of the hybrid pipeline from a local file or diffusers folder, never from a hub.

Every loader checks the file against what the sampler needs (family, widths, completeness) *before* building
anything, so a wrong pick fails in milliseconds with a message naming the file and the fix, and never
leaves a half-built model behind. Single files go through diffusers' own ``from_single_file`` with a local
config folder (the shipped SD1.5 configs, widths taken from the file): without ``config=`` diffusers goes to
the Hub even when told ``local_files_only=True``. Each load runs offline (:func:`..hub_access.hub_offline`), so a
forgotten Hub lookup fails at once; the process's own setting is back as soon as the load returns.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelMismatchError
from ..hub_access import hub_offline
from . import architectures as arch
from . import sd15_checkpoint
from .model_files import load_state_dict, read_shapes

log = logging.getLogger(__name__)

SD15_CROSS_ATTENTION_LAYERS = 16


def place(module: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move a model to ``device``/``dtype`` for inference, touching only what differs.

    diffusers logs a warning on every dtype cast through ``.to``, even a no-op one; the loaders already
    produce ``dtype``, so a cast happens only for odd files (e.g. an fp32 encoder for an fp16 run).
    """
    first = next(module.parameters())
    # Every floating tensor, not just the first: one fp32 LayerNorm in an fp16 file breaks the first render.
    tensors = [*module.parameters(), *module.buffers()]
    if any(t.is_floating_point() and t.dtype != dtype for t in tensors):
        module.to(dtype=dtype)
    if first.device != device:
        module.to(device=device)
    return module.eval().requires_grad_(False)


@contextmanager
def quiet_progress() -> Iterator[None]:
    """diffusers draws a tqdm bar and logs dtype-cast notes for every load; inside ComfyUI that is console noise.

    Errors still surface as exceptions; only diffusers' info/warning log lines are held back during loads.
    """
    from diffusers.utils import logging as diffusers_logging

    enabled = diffusers_logging.is_progress_bar_enabled()
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(verbosity)
        if enabled:
            diffusers_logging.enable_progress_bar()


@dataclass
class Sd15Parts:
    """What one SD1.5 checkpoint provides."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any


def _check_tokenizer(tokenizer: Any, vocab_size: int, source: Path) -> None:
    # transformers 5 silently builds a 2-token tokenizer from a missing vocabulary; the pipeline then fails
    # only at generation time with an OverflowError. Refuse it here.
    if len(tokenizer) != vocab_size or tokenizer.model_max_length != 77:
        raise ModelMismatchError(
            f"The CLIP tokenizer for {source.name} has {len(tokenizer)} tokens and max length "
            f"{tokenizer.model_max_length}; the text encoder expects {vocab_size} and 77. The tokenizer files "
            f"(vocab.json, merges.txt) are missing or damaged: reinstall the pack (rendering/configs/sd15/tokenizer)."
        )


# The checks run while the warm model is still loaded, so a wrong file costs nothing; what they read is
# handed to the matching loader, so a file is read once: a pickle (.pth/.ckpt/.bin) cannot be inspected
# without unpickling all of it, and a 1.4 GB ControlNet .pth should not be unpickled twice.
Preread = dict[str, torch.Tensor] | None
"""The state dict a check already unpickled, or None where only a header was read (safetensors, folders)."""


def _preread_state(path: Path) -> tuple[dict[str, tuple[int, ...]], Preread]:
    if path.suffix.lower() == ".safetensors":
        return read_shapes(path), None
    state = load_state_dict(path)
    return {k: tuple(v.shape) for k, v in state.items()}, state


def check_sd15(path: Path) -> sd15_checkpoint.CheckedCheckpoint | None:
    """Refuse a file that is not a complete SD1.5 checkpoint, reading only its header (safetensors) where possible.

    What a pickle's check unpickled is handed on to :func:`load_sd15`, so a ``.ckpt`` is read once.
    """
    if path.is_dir():
        return None
    shapes, state = _preread_state(path)
    shapes = sd15_checkpoint.text_encoder_keys(shapes)
    try:
        widths = arch.sd15_widths(shapes, path)
    except KeyError as exc:  # a part present but without a weight its widths are read from
        raise ModelMismatchError(
            f"{path.name} is an incomplete SD1.5 checkpoint: it lacks {exc.args[0] if exc.args else '?'}. Download "
            f"the checkpoint again into {path.parent}, or use a complete one such as v1-5-pruned-emaonly.safetensors."
        ) from exc
    sd15_checkpoint.check_complete(shapes, widths, path)
    return sd15_checkpoint.CheckedCheckpoint(widths, state)


def check_controlnet(path: Path, cross_attention_dim: int) -> Preread:
    """Refuse a file that is not an SD1.5 ControlNet for this text width, before any model is dropped."""
    if path.is_dir():
        return None
    shapes, state = _preread_state(path)
    arch.controlnet_widths(shapes, path, cross_attention_dim)
    return state


def check_image_encoder(path: Path) -> Preread:
    """Refuse a file that is not a CLIP vision tower with projection, before any model is dropped."""
    if path.is_dir():
        return None
    shapes, state = _preread_state(path)
    arch.image_encoder_dims(shapes, path)
    return state


@hub_offline()
def load_sd15(
    path: Path, dtype: torch.dtype, device: torch.device, checked: sd15_checkpoint.CheckedCheckpoint | None = None
) -> Sd15Parts:
    """UNet, VAE, text encoder, tokenizer and scheduler from an SD1.5 single file or diffusers folder.

    A single file is converted by diffusers' converters and loaded strictly (``sd15_checkpoint``): every weight
    comes from the file, none is made up. ``checked`` is what :func:`check_sd15` found (and, for a pickle, read).

    Raises:
        ModelMismatchError: not an SD1.5 checkpoint, incomplete, truncated, or inconsistent with its tokenizer.
    """
    from diffusers import StableDiffusionPipeline

    common: dict[str, Any] = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelMismatchError(
                f"{path} is a folder without model_index.json; a diffusers SD1.5 folder (like "
                "stable-diffusion-v1-5/stable-diffusion-v1-5) or a single .safetensors checkpoint is needed."
            )
        with quiet_progress():
            pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, dtype=dtype, **common)
        _check_tokenizer(pipe.tokenizer, int(pipe.text_encoder.config.vocab_size), path)
        parts = Sd15Parts(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler)
    else:
        checked = checked or check_sd15(path)
        assert checked is not None  # a file, not a folder
        state = checked.state if checked.state is not None else load_state_dict(path)
        models = sd15_checkpoint.build(state, checked.widths, dtype, path)
        del state
        parts = Sd15Parts(models["unet"], models["vae"], models["text_encoder"], *_tokenizer_and_scheduler())
        _check_tokenizer(parts.tokenizer, checked.widths.vocab_size, path)
    for module in (parts.unet, parts.vae, parts.text_encoder):
        place(module, device, dtype)
    return parts


def _tokenizer_and_scheduler() -> tuple[Any, Any]:
    """SD1.5's CLIP tokenizer and PNDM scheduler from the shipped config folder (what from_single_file gives)."""
    from diffusers import PNDMScheduler
    from transformers import CLIPTokenizer

    # The pack's own config folder, read with local_files_only: no Hub download, so no revision to pin.
    tokenizer = CLIPTokenizer.from_pretrained(arch.SD15_CONFIG_DIR / "tokenizer", local_files_only=True)  # nosec B615
    scheduler = PNDMScheduler.from_pretrained(arch.SD15_CONFIG_DIR / "scheduler", local_files_only=True)
    return tokenizer, scheduler


@hub_offline()
def load_controlnet(
    path: Path, dtype: torch.dtype, device: torch.device, cross_attention_dim: int, state: Preread = None
) -> Any:
    """Any SD1.5 ControlNet: lllyasviel's ``.pth``, ComfyUI's ``.safetensors``, diffusers' single file or folder.

    What it was trained on (canny, lineart, scribble, softedge, tile ...) does not matter and neither does
    the file name: the file's keys and shapes are checked (``architectures.controlnet_widths``).

    Raises:
        ModelMismatchError: not an SD1.5 ControlNet or not matching the checkpoint's text width.
    """
    from diffusers import ControlNetModel

    if path.is_dir():
        model = ControlNetModel.from_pretrained(path, local_files_only=True, dtype=dtype)
        if model.config.cross_attention_dim != cross_attention_dim:
            raise ModelMismatchError(
                f"{path.name} is a ControlNet for text width {model.config.cross_attention_dim}, the checkpoint has "
                f"{cross_attention_dim}. Pick an SD1.5 ControlNet."
            )
        return place(model, device, dtype)
    state = state if state is not None else load_state_dict(path)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    channels = arch.controlnet_widths(shapes, path, cross_attention_dim)
    prefix = "" if arch.is_diffusers_controlnet(shapes) else arch.controlnet_prefix(shapes)
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    with tempfile.TemporaryDirectory(prefix="sketch-rag-controlnet-") as tmp:
        import json

        (Path(tmp) / "config.json").write_text(json.dumps(arch.controlnet_config(channels, cross_attention_dim)))
        # A diffusers-layout state dict whose keys match the model exactly is loaded as is; an original-layout
        # one goes through diffusers' own converter.
        try:
            with quiet_progress():
                model = ControlNetModel.from_single_file(state, config=tmp, local_files_only=True, dtype=dtype)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ModelMismatchError(
                f"{path.name} looks like an SD1.5 ControlNet but its weights do not fit the layout "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}). "
                f"Download it again into {path.parent}."
            ) from exc
    return place(model, device, dtype)


@hub_offline()
def load_image_encoder(path: Path, dtype: torch.dtype, device: torch.device, state: Preread = None) -> Any:
    """The IP-Adapter image encoder (``CLIPVisionModelWithProjection``) from a clip_vision file or folder.

    Raises:
        ModelMismatchError: not a transformers-layout CLIP vision tower with a projection.
    """
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if path.is_dir():
        # Bandit B615 (no pinned revision): a local folder with local_files_only, nothing is fetched.
        model = CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True, dtype=dtype)  # nosec B615
    else:
        state = state if state is not None else load_state_dict(path)
        dims = arch.image_encoder_dims({k: tuple(v.shape) for k, v in state.items()}, path)
        config = CLIPVisionConfig(**dims)
        with torch.device("meta"):
            model = CLIPVisionModelWithProjection(config)
        state.pop("vision_model.embeddings.position_ids", None)  # a buffer older exports carry
        # Files mixing fp16 and fp32 tensors (an fp32 LayerNorm kept by a converter) are common: cast each one.
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise ModelMismatchError(
                f"{path.name} does not fit a CLIP vision encoder ({str(exc).splitlines()[0][:200]}). Use "
                "h94/IP-Adapter models/image_encoder/model.safetensors (ViT-H/14)."
            ) from exc
        # Non-persistent buffers are not in the file and were created on the meta device: make them real.
        positions = (int(dims["image_size"]) // int(dims["patch_size"])) ** 2 + 1
        model.vision_model.embeddings.register_buffer(
            "position_ids", torch.arange(positions).expand((1, -1)), persistent=False
        )
    return place(model, device, dtype)


@dataclass
class IpAdapterWeights:
    """An IP-Adapter state dict in the nested form diffusers' ``load_ip_adapter`` takes, and what it is."""

    state: dict[str, dict[str, torch.Tensor]]
    info: arch.IpAdapterInfo


def load_ip_adapter_weights(
    path: Path, cross_attention_dim: int, image_embed_dim: int, encoder_hidden: int
) -> IpAdapterWeights:
    """Read and check an IP-Adapter SD1.5 file (``.safetensors`` or ``.bin``) against checkpoint and encoder.

    Raises:
        ModelMismatchError: an SDXL/FaceID adapter, or one made for another image encoder.
    """
    flat = load_state_dict(path)
    info = arch.ip_adapter_info(
        {k: tuple(v.shape) for k, v in flat.items()}, path, cross_attention_dim, SD15_CROSS_ATTENTION_LAYERS
    )
    expected = encoder_hidden if info.plus else image_embed_dim
    if info.image_embed_dim != expected:
        what = "patch features" if info.plus else "image embeddings"
        raise ModelMismatchError(
            f"{path.name} expects {what} of width {info.image_embed_dim}, the image encoder gives {expected}. "
            "IP-Adapter SD1.5 (plain and plus) needs the ViT-H/14 encoder (CLIP-ViT-H-14-laion2B-s32B-b79K)."
        )
    nested: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        group, _, rest = key.partition(".")
        if group in nested:
            nested[group][rest] = value
    return IpAdapterWeights(nested, info)
