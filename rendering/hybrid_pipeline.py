"""The warm SD1.5 + ControlNet + IP-Adapter pipeline: load once, swap only what changed, render many times.

Loading SD1.5 costs seconds to tens of seconds; a render with warm models costs about a second on a GPU.
``PipelineCache`` keeps one loaded model per role (checkpoint, ControlNet, image encoder, IP-Adapter), keyed
by file identity + dtype + device, so changing one file in the loader reloads that model only, and a repeat
run loads nothing (``loads`` counts every load for tests and the benchmark). ``release()`` drops everything
so the host (ComfyUI's model management, the CLI) can get the memory back.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InvalidParameterError, ModelNotFoundError, RenderInterruptedError
from . import loading, refine
from .images import to_uint8
from .model_files import FileKey
from .render_request import CheckedRequest, RenderRequest, check_request, ip_adapter_block_scales

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

StepCallback = Callable[[int, int, torch.Tensor], None]
"""Called after each denoising step with (steps done, total steps, current latents)."""
StopCheck = Callable[[], bool]
"""Polled after each step; returning True stops sampling with RenderInterruptedError."""


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is fp16 on CUDA (SD1.5 runs fine in half precision, twice as fast) and fp32 elsewhere.

    fp16 on CPU runs but measured ~7x slower than fp32, hence never chosen automatically.

    Raises:
        InvalidParameterError: an unknown name.
    """
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise InvalidParameterError(f"dtype is {name!r}; pick one of auto, {', '.join(DTYPES)}.")
    return DTYPES[name]


@dataclass(frozen=True)
class PipelineSpec:
    """Which files make the pipeline and how it runs. ``ip_adapter``/``image_encoder`` None: no style input."""

    checkpoint: Path
    controlnet: Path
    ip_adapter: Path | None = None
    image_encoder: Path | None = None
    dtype: str = "auto"
    device: str = "cpu"
    attention_slicing: bool = False
    vae_tiling: bool = False


class PipelineCache:
    """One warm model per role, swapped individually. Thread-safe; one render at a time."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._slots: dict[str, tuple[Hashable, Any]] = {}
        self._pipe: Any = None
        self._pipe_key: Hashable = None
        self._memory_key: Hashable = None
        self.loads: Counter[str] = Counter()

    def _slot(
        self, role: str, key: Hashable, load: Callable[[Any], Any], check: Callable[[], Any] | None = None
    ) -> Any:
        """The held model for ``key``, or a fresh one: ``check()``'s result (what it read) goes to ``load``."""
        held = self._slots.get(role)
        if held is not None and held[0] == key:
            return held[1]
        # A wrong or damaged file fails in check(), while the warm model is still in place.
        checked = check() if check is not None else None
        self._slots.pop(role, None)  # drop the old model before loading its replacement: peak memory
        gc.collect()
        start = time.perf_counter()
        value = load(checked)
        self.loads[role] += 1
        source = key[0].path if isinstance(key, tuple) and isinstance(key[0], FileKey) else key
        log.info("Sketch RAG: loaded %s from %s in %.2f s", role, source, time.perf_counter() - start)
        self._slots[role] = (key, value)
        return value

    def get(self, spec: PipelineSpec) -> HybridPipeline:
        """The warm pipeline for ``spec``, loading only the models whose file, dtype or device changed.

        Raises:
            ModelNotFoundError: a file is gone.
            ModelMismatchError: a file is not the SD1.5 model its role needs.
        """
        with self._lock:
            device = torch.device(spec.device)
            dtype = resolve_dtype(spec.dtype, device)
            if (spec.ip_adapter is None) != (spec.image_encoder is None):
                raise InvalidParameterError(
                    "An IP-Adapter needs its image encoder and vice versa; pick both (ip-adapter_sd15 + "
                    "CLIP-ViT-H-14) or neither."
                )
            files = [
                p for p in (spec.checkpoint, spec.controlnet, spec.ip_adapter, spec.image_encoder) if p is not None
            ]
            for path in files:
                if not path.exists():
                    raise ModelNotFoundError(
                        f"Model file {path} does not exist (any more); pick another in the loader."
                    )
            ckpt_key = (FileKey.of(spec.checkpoint), dtype, str(device))
            sd = self._slot(
                "checkpoint",
                ckpt_key,
                lambda widths: loading.load_sd15(spec.checkpoint, dtype, device, widths),
                lambda: loading.check_sd15(spec.checkpoint),
            )
            cad = int(sd.unet.config.cross_attention_dim)
            cn_key = (FileKey.of(spec.controlnet), dtype, str(device), cad)
            controlnet = self._slot(
                "controlnet",
                cn_key,
                lambda state: loading.load_controlnet(spec.controlnet, dtype, device, cad, state),
                lambda: loading.check_controlnet(spec.controlnet, cad),
            )
            encoder = None
            if spec.image_encoder is not None:
                enc_path = spec.image_encoder
                encoder = self._slot(
                    "image_encoder",
                    (FileKey.of(enc_path), dtype, str(device)),
                    lambda state: loading.load_image_encoder(enc_path, dtype, device, state),
                    lambda: loading.check_image_encoder(enc_path),
                )
            pipe_key = (id(sd), id(controlnet), id(encoder))
            if self._pipe is None or self._pipe_key != pipe_key:
                self._pipe = _assemble(sd, controlnet, encoder)  # cheap: only wires the loaded models together
                self._pipe_key = pipe_key
            # The adapter lives inside the UNet (attention processors + image projection), so it is keyed by
            # the UNet it was loaded into: a new checkpoint needs it loaded again, a new ControlNet does not.
            ip_info = None
            if spec.ip_adapter is not None and encoder is not None:
                ip_path, pipe = spec.ip_adapter, self._pipe
                ip_key = (FileKey.of(ip_path), id(sd.unet), id(encoder))
                ip_info = self._slot(
                    "ip_adapter",
                    ip_key,
                    lambda weights: _load_ip_adapter(pipe, weights),
                    lambda: loading.load_ip_adapter_weights(
                        ip_path,
                        int(pipe.unet.config.cross_attention_dim),
                        int(encoder.config.projection_dim),
                        int(encoder.config.hidden_size),
                    ),
                )
            else:
                self._slots.pop("ip_adapter", None)
                _unload_ip_adapter(self._pipe)
            # Loading an adapter replaces the attention processors, so its slot is part of the key; otherwise
            # the options stay applied and a warm ``get`` (every render asks again) rebuilds nothing.
            held_ip = self._slots.get("ip_adapter")
            memory_key = (pipe_key, held_ip[0] if held_ip else None, spec.attention_slicing, spec.vae_tiling)
            if memory_key != self._memory_key:
                _set_memory_options(self._pipe, spec)
                self._memory_key = memory_key
            return HybridPipeline(self, self._pipe, spec, ip_info)

    def release(self) -> None:
        """Drop every model so their memory can be reclaimed (the next ``get`` loads again)."""
        with self._lock:
            if self._slots:
                log.info("Sketch RAG: released the warm models (%s)", ", ".join(sorted(self._slots)))
            self._slots.clear()
            self._pipe = None
            self._pipe_key = None
            self._memory_key = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    @property
    def lock(self) -> threading.RLock:
        """Held while a model is loaded or an image rendered: one pipeline, one user at a time."""
        return self._lock

    @property
    def loaded_roles(self) -> list[str]:
        return sorted(self._slots)


def _assemble(sd: loading.Sd15Parts, controlnet: Any, encoder: Any) -> Any:
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


def _load_ip_adapter(pipe: Any, weights: Any) -> Any:
    """Put checked IP-Adapter weights (:func:`loading.load_ip_adapter_weights`) into the pipeline's UNet."""
    _unload_ip_adapter(pipe)
    with loading.quiet_progress():
        pipe.load_ip_adapter(weights.state, subfolder="", weight_name="", image_encoder_folder=None)
    return weights.info


def _unload_ip_adapter(pipe: Any) -> None:
    if getattr(pipe.unet, "encoder_hid_proj", None) is None:
        return
    encoder, extractor = pipe.image_encoder, pipe.feature_extractor
    pipe.unload_ip_adapter()  # also drops the encoder from the pipeline; it belongs to the cache, put it back
    pipe.register_modules(image_encoder=encoder, feature_extractor=extractor)


def _set_memory_options(pipe: Any, spec: PipelineSpec) -> None:
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


class HybridPipeline:
    """A ready pipeline for one spec; ``render`` runs one request on it.

    The cache may have swapped models for another spec since this object was made (another loader node,
    a release by ComfyUI); ``render`` therefore asks the cache for its spec again, which costs nothing when
    the models are still the right ones.
    """

    def __init__(self, cache: PipelineCache, pipe: Any, spec: PipelineSpec, ip_info: Any) -> None:
        self.cache = cache
        self.pipe = pipe
        self.spec = spec
        self.ip_info = ip_info

    @property
    def has_ip_adapter(self) -> bool:
        return self.ip_info is not None

    def render(
        self, request: RenderRequest, on_step: StepCallback | None = None, should_stop: StopCheck | None = None
    ) -> np.ndarray:
        """Render ``request``; returns float32 images ``(B, H, W, 3)`` in [0, 1].

        All inputs are checked first; a refused request, an interrupt or an out-of-memory error leave the
        pipeline usable for the next call.

        Raises:
            InvalidImageError, InvalidParameterError: bad inputs (nothing was sampled).
            RenderInterruptedError: ``should_stop`` returned True; sampling stopped after the current step.
        """
        checked = check_request(request, self.has_ip_adapter)
        with self.cache.lock, torch.inference_mode():
            current = self.cache.get(self.spec)
            self.pipe, self.ip_info = current.pipe, current.ip_info
            try:
                return self._render(checked, on_step, should_stop)
            except torch.OutOfMemoryError as exc:
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise InvalidParameterError(
                    f"Out of GPU memory rendering {checked.width}×{checked.height} × {request.num_images_per_prompt} "
                    "image(s). Lower width/height or the batch size, or turn on attention slicing and VAE tiling in "
                    "the loader."
                ) from exc

    def _style_embeds(self, checked: CheckedRequest, cfg: bool) -> list[torch.Tensor]:
        """One weighted average of the references' image embeddings, in diffusers' ``ip_adapter_image_embeds`` form.

        Averaging embeddings is how several references are blended (the retriever's weights); the plus variant
        averages the encoder's patch features, the plain one the pooled projection.
        """
        pipe = self.pipe
        device = pipe.unet.device
        hidden = bool(self.ip_info.plus)
        cond: torch.Tensor | None = None
        uncond: torch.Tensor | None = None
        for image, weight in zip(checked.style_images, checked.style_weights, strict=True):
            embeds, negative = pipe.encode_image(to_uint8(image), device, 1, hidden)
            cond = embeds * weight if cond is None else cond + embeds * weight
            uncond = negative if uncond is None else uncond  # the zero image / zero embedding: the same for all
        assert cond is not None and uncond is not None  # check_request guarantees at least one reference
        stacked = torch.cat([uncond, cond]) if cfg else cond
        return [stacked.unsqueeze(1)]  # (2 or 1, images=1, tokens..., dim)

    def _render(
        self, checked: CheckedRequest, on_step: StepCallback | None, should_stop: StopCheck | None
    ) -> np.ndarray:
        from PIL import Image

        pipe = self.pipe
        request = checked.request
        control = Image.fromarray(to_uint8(checked.control_image))
        cfg = request.guidance_scale > 1.0
        total = checked.steps_total
        common: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt or None,
            "control_image": control,
            "guidance_scale": request.guidance_scale,
            "controlnet_conditioning_scale": request.controlnet_conditioning_scale,
            "control_guidance_start": request.control_guidance_start,
            "control_guidance_end": request.control_guidance_end,
            "num_images_per_prompt": request.num_images_per_prompt,
            "output_type": "np",
        }
        if self.has_ip_adapter:
            pipe.set_ip_adapter_scale(ip_adapter_block_scales(request.ip_adapter_mode, request.ip_adapter_scale))
            common["ip_adapter_image_embeds"] = self._style_embeds(checked, cfg)

        def steps_from(done_before: int) -> Callable[..., dict[str, Any]]:
            """diffusers' step-end callback, counting on from the steps of the passes before this one."""

            def step_end(_pipe: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
                done = done_before + step + 1
                if on_step is not None:
                    on_step(done, total, tensors["latents"])
                if should_stop is not None and should_stop():
                    raise RenderInterruptedError(f"Rendering stopped after step {done} of {total}.")
                return tensors

            return step_end

        def run(target: Any, steps: int, done_before: int, **kwargs: Any) -> np.ndarray:
            # A fresh scheduler per pass: an interrupted run leaves no half-stepped state behind.
            target.scheduler = _fresh_scheduler(pipe)
            options = {**common, **kwargs}
            if target is pipe:  # the text-to-image ControlNet pipeline calls its control input "image"
                options["image"] = options.pop("control_image")
            result = target(
                num_inference_steps=steps,
                generator=torch.Generator("cpu").manual_seed(request.seed),
                callback_on_step_end=steps_from(done_before),
                **options,
            )
            return np.asarray(result.images, dtype=np.float32)

        if checked.init_image is not None and checked.mask is not None:
            return self._inpaint(checked, run)
        images = run(pipe, request.num_inference_steps, 0, width=checked.width, height=checked.height)
        if not checked.hires_width:
            return images
        # Hires pass: the base render upscaled in pixel space and refined at partial denoise (see refine.py).
        return run(
            refine.derived_pipeline(pipe, "img2img"),
            request.hires_steps or request.num_inference_steps,
            request.num_inference_steps,
            image=refine.upscaled(images, checked.hires_width, checked.hires_height),
            strength=request.hires_denoise,
            width=checked.hires_width,
            height=checked.hires_height,
        )

    def _inpaint(self, checked: CheckedRequest, run: Callable[..., np.ndarray]) -> np.ndarray:
        """Re-render the masked region at the render size, then lay it back over the init image at its own size.

        Only the masked pixels can change: the blend after decoding keeps every unmasked pixel of the init image
        exactly, whatever the VAE's round trip did to them.
        """
        from PIL import Image

        assert checked.init_image is not None and checked.mask is not None  # the caller checked
        init, mask = checked.init_image, checked.mask
        width, height = checked.width, checked.height
        renders = run(
            refine.derived_pipeline(self.pipe, "inpaint"),
            checked.request.num_inference_steps,
            0,
            image=Image.fromarray(to_uint8(init)),
            mask_image=Image.fromarray(to_uint8(mask)),
            strength=checked.request.inpaint_denoise,
            width=width,
            height=height,
        )
        renders = np.stack([refine.resized_float(r, init.shape[1], init.shape[0]) for r in renders])
        return refine.blend_into(init, renders, mask)


def _fresh_scheduler(pipe: Any) -> Any:
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler.from_config(pipe.scheduler.config)


DEFAULT_CACHE = PipelineCache()
"""The process-wide warm cache the nodes and the CLI share."""
