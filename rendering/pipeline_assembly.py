"""What is built from the loaded models: the diffusers pipeline, the IP-Adapter inside its UNet, memory options.

All of it is cheap next to a load (it wires modules together and swaps attention processors), so the cache
rebuilds it whenever a model it holds changes (see ``model_cache``).
"""

from __future__ import annotations

from typing import Any

from ..hub_access import hub_offline
from . import loading
from .pipeline_spec import PipelineSpec


def assemble(sd: loading.Sd15Parts, controlnet: Any, encoder: Any) -> Any:
    """The SD1.5 ControlNet pipeline over the loaded models (``encoder`` None: no style input)."""
    from diffusers import StableDiffusionControlNetPipeline
    from transformers import CLIPImageProcessor

    feature_extractor = None
    if encoder is not None:  # the encoder's own input size: 224 for ViT-H, smaller for the tiny test model
        size = int(encoder.config.image_size)
        feature_extractor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    pipe: Any = StableDiffusionControlNetPipeline(
        vae=sd.vae,
        text_encoder=sd.text_encoder,
        tokenizer=sd.tokenizer,
        unet=sd.unet,
        controlnet=controlnet,
        scheduler=sd.scheduler,
        safety_checker=None,
        feature_extractor=feature_extractor,
        image_encoder=encoder,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_ip_adapter(pipe: Any, weights: Any) -> Any:
    """Put checked IP-Adapter weights (:func:`loading.load_ip_adapter_weights`) into the pipeline's UNet.

    The memory options are off afterwards; the cache sets them again (a new adapter is a new generation).
    """
    unload_ip_adapter(pipe)
    _plain_self_attention(pipe)
    with loading.quiet_progress(), hub_offline():
        pipe.load_ip_adapter(weights.state, subfolder="", weight_name="", image_encoder_folder=None)
    return weights.info


def unload_ip_adapter(pipe: Any) -> None:
    """Take the IP-Adapter out of the UNet (nothing to do when none is in); the memory options are off after."""
    if getattr(pipe.unet, "encoder_hid_proj", None) is None:
        return
    _plain_self_attention(pipe)
    encoder, extractor = pipe.image_encoder, pipe.feature_extractor
    pipe.unload_ip_adapter()  # also drops the encoder from the pipeline; it belongs to the cache, put it back
    pipe.register_modules(image_encoder=encoder, feature_extractor=extractor)


def set_memory_options(pipe: Any, spec: PipelineSpec) -> None:
    """VAE tiling and self-attention slicing for small GPUs; both off by default (SDPA is already lean).

    diffusers' ``enable_attention_slicing`` would replace the IP-Adapter processors too (and silently drop the
    style), so slicing is applied to self-attention (``attn1``, the O(pixels²) one) only.
    """
    from diffusers.models.attention_processor import AttnProcessor2_0, SlicedAttnProcessor

    if spec.vae_tiling:
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()
    processors = dict(pipe.unet.attn_processors)
    for name in processors:
        if name.endswith("attn1.processor"):
            processors[name] = SlicedAttnProcessor(2) if spec.attention_slicing else AttnProcessor2_0()
    pipe.unet.set_attn_processor(processors)


def _plain_self_attention(pipe: Any) -> None:
    """Undo attention slicing before diffusers rebuilds the attention processors for an IP-Adapter change.

    diffusers' ``load_ip_adapter`` and ``unload_ip_adapter`` re-create every processor they keep as
    ``type(processor)()``; ``SlicedAttnProcessor`` needs its slice size, so with slicing on either raises
    ``TypeError`` halfway through, leaving a UNet with some processors swapped. Plain processors first avoids it.
    """
    from diffusers.models.attention_processor import AttnProcessor2_0, SlicedAttnProcessor

    processors = dict(pipe.unet.attn_processors)
    if not any(isinstance(p, SlicedAttnProcessor) for p in processors.values()):
        return
    for name, processor in processors.items():
        if isinstance(processor, SlicedAttnProcessor):
            processors[name] = AttnProcessor2_0()
    pipe.unet.set_attn_processor(processors)
