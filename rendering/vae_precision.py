"""The VAE's own precision: bf16 where the GPU has it, fp32 elsewhere, and never a black image from an overflow.

SD1.5's VAE overflows fp16 on some latents (large activations in its decoder), and a NaN decode turns into a
black image without a word. ComfyUI therefore runs the VAE in its own dtype, independent of the UNet's: bf16
on devices that support it (same range as fp32), fp32 elsewhere (``comfy.model_management.vae_dtype``). The
same rule holds here. The VAE is cast to that dtype after the checkpoint loads, and hooks cast what goes in
(latents, images) to the VAE's dtype at call time and what ``encode`` gives back to the UNet's, so the
diffusers pipelines, which hand the VAE tensors in the UNet's dtype, work unchanged. A decode that still gives a
non-finite value is done again in fp32 and logged.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ..errors import InvalidParameterError
from ..precisions import PRECISIONS
from .loading import quiet_progress
from .pipeline_spec import DTYPES

log = logging.getLogger(__name__)

BF16_MIN_CAPABILITY = (8, 0)
"""CUDA compute capability from which bf16 runs natively (Ampere); ComfyUI's ``should_use_bf16`` draws the same line."""


def resolve_vae_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a CUDA GPU that supports it, fp32 everywhere else; otherwise the named precision.

    fp16 is never chosen automatically: it is the precision the SD1.5 VAE overflows in.

    Raises:
        InvalidParameterError: an unknown name.
    """
    if name == "auto":
        if device.type == "cuda" and torch.cuda.get_device_capability(device) >= BF16_MIN_CAPABILITY:
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise InvalidParameterError(f"vae_precision is {name!r}; pick one of {', '.join(PRECISIONS)}.")
    return DTYPES[name]


def _dtype_of(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def place_vae(vae: Any, dtype: torch.dtype, compute_dtype: torch.dtype) -> Any:
    """Cast ``vae`` to ``dtype`` and let it take and give tensors of the UNet's ``compute_dtype``.

    Inputs are cast to the VAE's dtype *at call time*, so a temporary fp32 redo (:func:`decode`) needs no other
    hook; the encoder's output (the latent distribution's moments) goes back to ``compute_dtype``, which is what
    the pipelines add noise to and hand the UNet. Nothing is hooked when both dtypes are the same.
    """
    _cast(vae, dtype)
    if dtype == compute_dtype:
        return vae

    def to_vae_dtype(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        wanted = _dtype_of(module)
        return tuple(a.to(wanted) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)

    def to_compute_dtype(_module: torch.nn.Module, _args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return output.to(compute_dtype)

    for part in (vae.encoder, vae.quant_conv, vae.post_quant_conv, vae.decoder):
        if part is not None:
            part.register_forward_pre_hook(to_vae_dtype)
    (vae.quant_conv if vae.quant_conv is not None else vae.encoder).register_forward_hook(to_compute_dtype)
    return vae


def decode(pipe: Any, latents: torch.Tensor) -> np.ndarray:
    """Latents from a pipeline run with ``output_type="latent"`` as float32 images ``(B, H, W, 3)`` in [0, 1].

    What diffusers' pipelines do after sampling (scale, decode, postprocess), in the VAE's own dtype; a result
    with a NaN or an infinity is decoded again with the VAE in fp32, and the VAE goes back to its dtype after.
    """
    vae = pipe.vae
    dtype = _dtype_of(vae)
    images = _decoded(vae, latents)
    if not torch.isfinite(images).all():
        if dtype == torch.float32:
            raise InvalidParameterError(
                "The VAE decoded a non-finite image even in fp32: the latents or the VAE's weights hold NaN or "
                "infinity. Try another seed or sampler; if every render fails, re-download the checkpoint."
            )
        log.warning(
            "Sketch RAG: the VAE's %s decode gave NaN or infinite values; decoded again in fp32 "
            "(set vae_precision to fp32 to skip the first try).",
            str(dtype).removeprefix("torch."),
        )
        _cast(vae, torch.float32)
        try:
            images = _decoded(vae, latents)
        finally:
            _cast(vae, dtype)
    return np.asarray(pipe.image_processor.postprocess(images, output_type="np"), dtype=np.float32)


def _cast(vae: Any, dtype: torch.dtype) -> None:
    if _dtype_of(vae) != dtype:
        with quiet_progress():  # diffusers logs a note on every cast
            vae.to(dtype=dtype)


def _decoded(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    scaled = latents / vae.config.scaling_factor
    return vae.decode(scaled.to(_dtype_of(vae)), return_dict=False)[0]
