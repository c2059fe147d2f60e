"""The warm SD1.5 + ControlNet + IP-Adapter pipeline: load once, swap only what changed, render many times.

Loading SD1.5 costs seconds to tens of seconds; a render with warm models costs about a second on a GPU.
``PipelineCache`` keeps one loaded model per role (checkpoint, ControlNet, image encoder, IP-Adapter), keyed
by file identity + dtype + device, so changing one file in the loader reloads that model only, and a repeat
run loads nothing (``loads`` counts every load for tests and the benchmark). ``release()`` drops everything
so the host (ComfyUI's model management, the CLI) can get the memory back.

What is built from the loaded models (the assembled diffusers pipeline, the IP-Adapter inside the UNet) is
keyed by *load generation*: every load gets the next number of one counter. ``id()`` would not do: once the
old model is freed, CPython may give the new one the same address, and a cache keyed by it then keeps serving
the old UNet. A swap drops every reference to the old model first (its slot, the assembled pipeline, and
through :meth:`PipelineCache.add_replace_listener` the host's, e.g. ComfyUI's model patcher) and only then
loads the new one, so memory peaks at about one model's worth, not old + new.
"""

from __future__ import annotations

import gc
import itertools
import logging
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InvalidImageError, InvalidParameterError, ModelNotFoundError, RenderInterruptedError
from ..hub_access import hub_offline
from ..imaging import to_uint8
from ..precisions import PRECISIONS
from . import loading, refine
from .lora import LoraFusion
from .model_files import FileKey
from .prompt_embeds import encode_prompts
from .render_request import CheckedRequest, RenderRequest, check_request, ip_adapter_block_scales
from .schedulers import SAMPLERS, make_scheduler

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
"""Torch dtypes of the :data:`~..precisions.PRECISIONS` other than ``auto``."""

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
        raise InvalidParameterError(f"dtype is {name!r}; pick one of {', '.join(PRECISIONS)}.")
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
    loras: tuple[tuple[Path, float], ...] = ()
    """LoRA files and their strengths, applied in order on top of the checkpoint (see ``lora.py``)."""


ReplaceListener = Callable[[str], None]
"""Called with a role just before the cache drops that role's model to load its replacement."""

PIPELINE_ROLES = ("checkpoint", "controlnet", "image_encoder")
"""The roles the assembled diffusers pipeline holds a reference to."""


@dataclass(frozen=True)
class _Slot:
    key: Hashable
    value: Any
    generation: int


class PipelineCache:
    """One warm model per role, swapped individually. Thread-safe; one render at a time."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._slots: dict[str, _Slot] = {}
        self._pipe: Any = None
        self._pipe_key: Hashable = None
        self._memory_key: Hashable = None
        self._generations = itertools.count(1)
        self._listeners: list[ReplaceListener] = []
        self._loras = LoraFusion()
        self.loads: Counter[str] = Counter()

    def add_replace_listener(self, listener: ReplaceListener) -> None:
        """Have ``listener(role)`` called before a loaded model is dropped for a replacement (once per listener).

        A host that holds references to the models (ComfyUI's model patcher) drops them there, so the old
        model is really freed before the new one loads. Not called by :meth:`release`: the host that asks for
        a release is already letting go.
        """
        with self._lock:
            if listener not in self._listeners:
                self._listeners.append(listener)

    def _drop_for_replacement(self, role: str) -> None:
        """Let go of ``role``'s model and of everything built from it, before its replacement is loaded."""
        if role not in self._slots:
            return
        for listener in list(self._listeners):
            listener(role)
        del self._slots[role]
        if role in PIPELINE_ROLES:
            # The assembled pipeline (and the IP-Adapter inside its UNet) references the old model.
            self._forget_pipe()
        _free_memory()

    def _slot(
        self, role: str, key: Hashable, load: Callable[[Any], Any], check: Callable[[], Any] | None = None
    ) -> _Slot:
        """The held model for ``key``, or a fresh one: ``check()``'s result (what it read) goes to ``load``."""
        held = self._slots.get(role)
        if held is not None and held.key == key:
            return held
        del held  # no local reference may keep the old model alive through the load below
        # A wrong or damaged file fails in check(), while the warm model is still in place.
        checked = check() if check is not None else None
        self._drop_for_replacement(role)
        start = time.perf_counter()
        value = load(checked)
        self.loads[role] += 1
        source = key[0].path if isinstance(key, tuple) and isinstance(key[0], FileKey) else key
        log.info("Sketch RAG: loaded %s from %s in %.2f s", role, source, time.perf_counter() - start)
        slot = _Slot(key, value, next(self._generations))
        self._slots[role] = slot
        return slot

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
            sd_slot = self._slot(
                "checkpoint",
                ckpt_key,
                lambda widths: loading.load_sd15(spec.checkpoint, dtype, device, widths),
                lambda: loading.check_sd15(spec.checkpoint),
            )
            sd: loading.Sd15Parts = sd_slot.value
            # LoRAs go into the weights, before the IP-Adapter replaces the attention processors (see lora.py).
            models = {"unet": sd.unet, "text_encoder": sd.text_encoder}
            if lora_reads := self._loras.apply(models, spec.loras, spec.checkpoint.name):
                self.loads["lora"] += lora_reads
            cad = int(sd.unet.config.cross_attention_dim)
            cn_key = (FileKey.of(spec.controlnet), dtype, str(device), cad)
            cn_slot = self._slot(
                "controlnet",
                cn_key,
                lambda state: loading.load_controlnet(spec.controlnet, dtype, device, cad, state),
                lambda: loading.check_controlnet(spec.controlnet, cad),
            )
            encoder = None
            enc_generation = None
            if spec.image_encoder is not None:
                enc_path = spec.image_encoder
                enc_slot = self._slot(
                    "image_encoder",
                    (FileKey.of(enc_path), dtype, str(device)),
                    lambda state: loading.load_image_encoder(enc_path, dtype, device, state),
                    lambda: loading.check_image_encoder(enc_path),
                )
                encoder, enc_generation = enc_slot.value, enc_slot.generation
            elif "image_encoder" in self._slots:
                self._drop_for_replacement("image_encoder")  # not needed any more: free it
            pipe_key = (sd_slot.generation, cn_slot.generation, enc_generation)
            if self._pipe is None or self._pipe_key != pipe_key:
                # cheap: only wires the loaded models together
                self._pipe = _assemble(sd, cn_slot.value, encoder)
                self._pipe_key = pipe_key
                self._memory_key = None
            # The adapter lives inside the UNet (attention processors + image projection), so it is keyed by
            # the UNet it was loaded into: a new checkpoint needs it loaded again, a new ControlNet does not.
            ip_info = None
            if spec.ip_adapter is not None and encoder is not None:
                ip_path, pipe = spec.ip_adapter, self._pipe
                ip_key = (FileKey.of(ip_path), sd_slot.generation, enc_generation)
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
                ).value
            else:
                self._slots.pop("ip_adapter", None)
                _unload_ip_adapter(self._pipe)
            # Loading an adapter replaces the attention processors, so its slot is part of the key; otherwise
            # the options stay applied and a warm ``get`` (every render asks again) rebuilds nothing.
            held_ip = self._slots.get("ip_adapter")
            ip_generation = held_ip.generation if held_ip else None
            memory_key = (pipe_key, ip_generation, spec.attention_slicing, spec.vae_tiling)
            if memory_key != self._memory_key:
                _set_memory_options(self._pipe, spec)
                self._memory_key = memory_key
            return HybridPipeline(self, self._pipe, spec, ip_info, (*pipe_key, ip_generation))

    def release(self) -> None:
        """Drop every model so their memory can be reclaimed (the next ``get`` loads again)."""
        with self._lock:
            if self._slots:
                log.info("Sketch RAG: released the warm models (%s)", ", ".join(sorted(self._slots)))
            self._slots.clear()
            self._loras.forget()
            self._forget_pipe()
            _free_memory()

    def _forget_pipe(self) -> None:
        self._pipe = None
        self._pipe_key = None
        self._memory_key = None

    @property
    def lock(self) -> threading.RLock:
        """Held while a model is loaded or an image rendered: one pipeline, one user at a time."""
        return self._lock

    def generation(self, role: str) -> int | None:
        """The load generation of ``role``'s held model (None: not loaded); a new load, a new number."""
        with self._lock:
            held = self._slots.get(role)
            return held.generation if held else None


def _free_memory() -> None:
    """Collect what dropped references freed, and hand CUDA's cached blocks back."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
    with loading.quiet_progress(), hub_offline():
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
    the models are still the right ones. The diffusers pipeline is held weakly, so a ``HybridPipeline`` kept
    by a caller never keeps swapped-out models alive; ``pipe`` fetches the current one when it is gone.
    """

    def __init__(
        self, cache: PipelineCache, pipe: Any, spec: PipelineSpec, ip_info: Any, generation: tuple[int | None, ...]
    ) -> None:
        self.cache = cache
        self.spec = spec
        self.ip_info = ip_info
        self.generation = generation
        """Load generations of (checkpoint, ControlNet, image encoder, IP-Adapter): which models ``pipe`` holds."""
        self._pipe = weakref.ref(pipe)

    @property
    def pipe(self) -> Any:
        pipe = self._pipe()
        if pipe is None:
            pipe = self._refresh(self.cache.get(self.spec))
        return pipe

    def _refresh(self, current: HybridPipeline) -> Any:
        pipe = current.pipe
        self._pipe, self.ip_info, self.generation = weakref.ref(pipe), current.ip_info, current.generation
        return pipe

    @property
    def has_ip_adapter(self) -> bool:
        return self.ip_info is not None

    def render(
        self, request: RenderRequest, on_step: StepCallback | None = None, should_stop: StopCheck | None = None
    ) -> np.ndarray:
        """Render ``request``; returns float32 images ``(num_images_per_prompt, H, W, 3)`` in [0, 1].

        All inputs are checked first; a refused request, an interrupt or an out-of-memory error leave the
        pipeline usable for the next call.

        Raises:
            InvalidImageError, InvalidParameterError: bad inputs (nothing was sampled).
            RenderInterruptedError: ``should_stop`` returned True; sampling stopped after the current step.
        """
        return self.render_batch(request, [request.control_image], on_step, should_stop)

    def render_batch(
        self,
        request: RenderRequest,
        control_images: Sequence[np.ndarray],
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> np.ndarray:
        """Render ``request`` once per edge map, in order: ``(len(control_images) * num_images_per_prompt, H, W, 3)``.

        Edge map ``b``'s images come at ``b * n .. b * n + n - 1`` (``n`` = ``num_images_per_prompt``). One seed
        serves the whole output batch, as in ComfyUI's KSampler on a latent batch: output image ``j`` starts
        from the ``j``-th noise drawn from the seed, so the same seed, edge maps and batch size give the same
        images, every image differs, and the first images of a batch are exactly those of a smaller one (edge
        map 0's are the ones it gets alone). Edge maps are sampled one after another, so memory stays at one
        edge map's worth. ``on_step`` counts the steps of all of them. Every edge map is checked before the
        first is sampled.

        Raises:
            InvalidImageError, InvalidParameterError: bad inputs (nothing was sampled).
            RenderInterruptedError: ``should_stop`` returned True; sampling stopped after the current step.
        """
        if len(control_images) == 0:
            raise InvalidImageError("The edge map batch is empty; connect at least one edge image.")
        checked = [
            check_request(replace(request, control_image=image), self.has_ip_adapter)
            for image in control_images
        ]
        per_edge = request.num_images_per_prompt
        with self.cache.lock, torch.inference_mode():
            pipe = self._refresh(self.cache.get(self.spec))  # held strongly for the render
            try:
                noise, generator = _initial_noise(pipe, checked[0], len(checked) * per_edge)
                outputs = []
                for index, one in enumerate(checked):

                    # n: the UNet evaluations of one edge map (two per step for second-order samplers).
                    def step(i: int, n: int, latents: torch.Tensor, index: int = index) -> None:
                        if on_step is not None:
                            on_step(index * n + i, n * len(checked), latents)

                    which = f" (edge map {index + 1} of {len(checked)})" if len(checked) > 1 else ""
                    latents = noise[index * per_edge : (index + 1) * per_edge]
                    outputs.append(self._render(pipe, one, step, should_stop, latents, generator, which))
                return np.concatenate(outputs)
            except torch.OutOfMemoryError as exc:
                _free_memory()
                raise InvalidParameterError(
                    f"Out of GPU memory rendering {checked[0].width}×{checked[0].height} × {per_edge} image(s). "
                    "Lower width/height or the batch size, or turn on attention slicing and VAE tiling in the loader."
                ) from exc

    def _style_embeds(self, pipe: Any, checked: CheckedRequest, cfg: bool) -> list[torch.Tensor]:
        """One weighted average of the references' image embeddings, in diffusers' ``ip_adapter_image_embeds`` form.

        Averaging embeddings is how several references are blended (the retriever's weights); the plus variant
        averages the encoder's patch features, the plain one the pooled projection.
        """
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
        self,
        pipe: Any,
        checked: CheckedRequest,
        on_step: StepCallback | None,
        should_stop: StopCheck | None,
        latents: torch.Tensor,
        generator: torch.Generator,
        which: str,
    ) -> np.ndarray:
        """One edge map's render: the base pass, then the hires pass if asked, or the inpaint pass instead."""
        from PIL import Image

        request = checked.request
        # diffusers' own rule: guidance_scale <= 1 (LCM/TCD's usual 1.0) skips CFG and the negative prompt.
        cfg = request.guidance_scale > 1.0 and pipe.unet.config.time_cond_proj_dim is None
        # Encoded first: a prompt over the token limit is refused before the scheduler is touched.
        embeds = encode_prompts(pipe, request.prompt, request.negative_prompt, request.clip_skip, cfg)
        common: dict[str, Any] = {
            "prompt_embeds": embeds.positive,
            "negative_prompt_embeds": embeds.negative,
            "guidance_scale": request.guidance_scale,
            "controlnet_conditioning_scale": request.controlnet_conditioning_scale,
            "control_guidance_start": request.control_guidance_start,
            "control_guidance_end": request.control_guidance_end,
            "num_images_per_prompt": request.num_images_per_prompt,
            "generator": generator,  # the noise stochastic samplers add each step, continuing the seed's stream
            "eta": SAMPLERS[request.sampler].eta,
            "output_type": "np",
        }
        if self.has_ip_adapter:
            pipe.set_ip_adapter_scale(ip_adapter_block_scales(request.ip_adapter_mode, request.ip_adapter_scale))
            common["ip_adapter_image_embeds"] = self._style_embeds(pipe, checked, cfg)
        control = Image.fromarray(to_uint8(checked.control_image))
        steps = request.num_inference_steps
        second_steps = (
            refine.denoised_steps(request.hires_steps or steps, request.hires_denoise) if checked.hires_width else 0
        )
        done_before = [0]  # UNet evaluations of the passes before the running one

        def step_end(_pipe: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            # Second-order samplers (dpmpp_sde) evaluate the UNet twice per step: count model evaluations. While
            # the base pass runs, the hires pass's count is estimated at the same evaluations per step.
            evaluations = int(_pipe.num_timesteps)
            later = round(second_steps * evaluations / steps) if done_before[0] == 0 else 0
            done, total = done_before[0] + step + 1, done_before[0] + evaluations + later
            if on_step is not None:
                on_step(done, total, tensors["latents"])
            if should_stop is not None and should_stop():
                raise RenderInterruptedError(f"Rendering stopped after step {done} of {total}{which}.")
            return tensors

        def run(target: Any, num_inference_steps: int, **kwargs: Any) -> np.ndarray:
            # A fresh scheduler per pass: an interrupted run leaves no half-stepped state behind.
            target.scheduler = make_scheduler(request.sampler, pipe.scheduler.config, request.seed)
            result = target(
                num_inference_steps=num_inference_steps, callback_on_step_end=step_end, **common, **kwargs
            )
            done_before[0] += int(target.num_timesteps)
            return np.asarray(result.images, dtype=np.float32)

        if checked.init_image is not None and checked.mask is not None:
            # Inpaint: the derived pipeline draws its own noise from the stream (given latents would replace
            # the noised init image at denoise < 1).
            return self._inpaint(pipe, checked, control, run)
        images = run(pipe, steps, image=control, width=checked.width, height=checked.height, latents=latents)
        if not checked.hires_width:
            return images
        # Hires pass: the base render upscaled in pixel space and refined at partial denoise (see refine.py).
        return run(
            refine.derived_pipeline(pipe, "img2img"),
            request.hires_steps or steps,
            image=refine.upscaled(images, checked.hires_width, checked.hires_height),
            control_image=control,
            strength=request.hires_denoise,
            width=checked.hires_width,
            height=checked.hires_height,
        )

    def _inpaint(
        self, pipe: Any, checked: CheckedRequest, control: Any, run: Callable[..., np.ndarray]
    ) -> np.ndarray:
        """Re-render the masked region at the render size, then lay it back over the init image at its own size.

        Only the masked pixels can change: the blend after decoding keeps every unmasked pixel of the init image
        exactly, whatever the VAE's round trip did to them.
        """
        from PIL import Image

        assert checked.init_image is not None and checked.mask is not None  # the caller checked
        init, mask = checked.init_image, checked.mask
        renders = run(
            refine.derived_pipeline(pipe, "inpaint"),
            checked.request.num_inference_steps,
            image=Image.fromarray(to_uint8(init)),
            mask_image=Image.fromarray(to_uint8(mask)),
            control_image=control,
            strength=checked.request.inpaint_denoise,
            width=checked.width,
            height=checked.height,
        )
        renders = np.stack([refine.resized_float(r, init.shape[1], init.shape[0]) for r in renders])
        return refine.blend_into(init, renders, mask)


def _initial_noise(pipe: Any, checked: CheckedRequest, images: int) -> tuple[torch.Tensor, torch.Generator]:
    """The starting latents of ``images`` images: one draw per image, one after another, from the seed.

    Drawing per image makes image ``j``'s noise depend on the seed and ``j`` only: torch's CPU ``randn`` of a
    whole batch at once gives the first image other values than a draw of one image at some sizes (its
    vectorised path works in blocks of 16), so a batch-at-once draw would not keep the promise that the
    first images of a batch are those of a smaller batch. A single image is drawn exactly as diffusers draws
    it (same generator, shape, device and dtype), so one image per run renders as it always did. The generator
    is returned too: stochastic samplers draw their per-step noise from it, after the starting latents, as
    diffusers does when it draws the latents itself.
    """
    from diffusers.utils.torch_utils import randn_tensor

    shape = (
        1,
        int(pipe.unet.config.in_channels),
        checked.height // pipe.vae_scale_factor,
        checked.width // pipe.vae_scale_factor,
    )
    generator = torch.Generator("cpu").manual_seed(checked.request.seed)
    device, dtype = pipe._execution_device, pipe.text_encoder.dtype
    noise = torch.cat([randn_tensor(shape, generator=generator, device=device, dtype=dtype) for _ in range(images)])
    return noise, generator


DEFAULT_CACHE = PipelineCache()
"""The process-wide warm cache the nodes and the CLI share."""
