"""The sampling passes on a warm pipeline: one render, a batch of edge maps, the hires and inpaint passes.

``HybridPipeline`` is what the cache hands out for one spec. It holds no model strongly: every render asks its
model source (the cache, ``model_cache.PipelineCache``) for the spec again, which costs nothing while the models
are still the right ones and reloads what another spec swapped out meanwhile. What a render needs on top of the
models is made here: the seed's noise, the style embeddings, a fresh scheduler per pass.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import InvalidImageError, InvalidParameterError, RenderInterruptedError
from ..imaging import to_uint8
from . import refine
from .device_memory import free_memory
from .pipeline_spec import PipelineSpec
from .prompt_embeds import encode_prompts
from .render_request import CheckedRequest, RenderRequest, check_request, ip_adapter_block_scales
from .schedulers import SAMPLERS, make_scheduler
from .vae_precision import decode

StepCallback = Callable[[int, int, torch.Tensor], None]
"""Called after each denoising step with (steps done, total steps, current latents)."""
StopCheck = Callable[[], bool]
"""Polled after each step; returning True stops sampling with RenderInterruptedError."""


class ModelSource(Protocol):
    """Where a ``HybridPipeline`` gets its models: the warm cache (``model_cache.PipelineCache``)."""

    @property
    def lock(self) -> threading.RLock: ...

    def get(self, spec: PipelineSpec) -> HybridPipeline: ...


class HybridPipeline:
    """A ready pipeline for one spec; ``render`` runs one request on it.

    The cache may have swapped models for another spec since this object was made (another loader node,
    a release by ComfyUI); ``render`` therefore asks the cache for its spec again, which costs nothing when
    the models are still the right ones. The diffusers pipeline is held weakly, so a ``HybridPipeline`` kept
    by a caller never keeps swapped-out models alive; ``pipe`` fetches the current one when it is gone.
    """

    def __init__(
        self, cache: ModelSource, pipe: Any, spec: PipelineSpec, ip_info: Any, generation: tuple[int | None, ...]
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
                free_memory()
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
            "output_type": "latent",  # decoded below, in the VAE's own precision
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
            return decode(pipe, result.images)

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
