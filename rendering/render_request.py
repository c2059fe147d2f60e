"""Everything one render needs, and the checks that refuse bad input before any sampling starts.

A run costs seconds to minutes of GPU time; a mistake in its inputs should cost milliseconds. Every check
here runs before the pipeline is touched, so a refused request leaves the warm pipeline exactly as it was.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from ..errors import InvalidImageError, InvalidParameterError
from ..imaging import check_image_array, to_float_image
from .refine import denoised_steps, hires_size
from .schedulers import DEFAULT_SAMPLER, check_sampler

DEFAULT_STEPS = 20
MAX_STEPS = 500
DEFAULT_GUIDANCE_SCALE = 7.5
MAX_GUIDANCE_SCALE = 30.0
DEFAULT_CONTROLNET_SCALE = 1.5  # above 1: the sketch's edges hold the geometry firmly against the style
MAX_CONTROLNET_SCALE = 5.0
DEFAULT_IP_ADAPTER_SCALE = 0.8
MAX_IP_ADAPTER_SCALE = 3.0
DEFAULT_SHORT_SIDE = 512  # SD1.5's training resolution
MIN_SIDE = 64
MAX_SIDE = 2048
MAX_BATCH = 16
MAX_PIXELS_PER_RUN = 4 * 1024 * 1024  # width * height * batch; beyond this a 24 GB GPU runs out in attention
ASPECT_TOLERANCE = 0.05  # a 5% stretch of the edge map is invisible; more distorts the sketch's geometry
MAX_SEED = 2**64 - 1
CLIP_SKIP_CHOICES = (1, 2)  # 1: CLIP's last layer (SD1.5's default); 2: the penultimate (see prompt_embeds)
MAX_PROMPT_CHARS = 10_000  # far above the 600-token limit; stops a megabyte prompt before it is tokenized
MAX_UPSCALE = 2.0  # SD1.5 refines well up to about twice its base size; beyond, a tiled upscaler is the tool
DEFAULT_HIRES_DENOISE = 0.5  # enough to add detail at the new size, low enough to keep the first pass's layout


class IpAdapterMode(str, Enum):
    """Which of SD1.5's 16 cross-attention layers receive the reference image.

    ``full``: all of them (the original IP-Adapter). ``style``: only the three layers of ``up_blocks.1``, the
    blocks InstantStyle identifies as carrying style; ``composition``: only the layout blocks (``down_blocks.2`` and
    the mid block); ``style_and_composition``: both sets. Whether the restricted modes keep a reference's objects
    out of a render depends on the real weights; what the code guarantees is where the image is injected.
    """

    FULL = "full"
    STYLE = "style"
    COMPOSITION = "composition"
    STYLE_AND_COMPOSITION = "style_and_composition"


DEFAULT_IP_ADAPTER_MODE = IpAdapterMode.STYLE
"""The default everywhere (engine, node, CLI): a retrieved reference should lend its style, not its objects."""


def ip_adapter_block_scales(mode: IpAdapterMode, scale: float) -> float | dict[str, object]:
    """The ``set_ip_adapter_scale`` argument for ``mode`` on the SD1.5 UNet.

    Follows InstantStyle's SD1.5 reference script (instantX-research/InstantStyle, ``infer_style_sd15.py``):
    ``target_blocks=["up_blocks.1"]`` for style and ``["down_blocks.2", "mid_block", "up_blocks.1"]`` for style +
    layout, each matched as a substring of the attention-processor names. So "up_blocks.1" is all three of its
    transformers (``up_blocks.1.attentions.0/1/2``), and layout is both transformers of ``down_blocks.2`` plus the mid
    block's. In diffusers' form a number given for a whole block applies to every transformer in it. (SDXL's
    single-layer pattern ``[0, s, 0]`` would keep one of SD1.5's 16 layers; diffusers' SDXL example
    ``{"up": {"block_0": …}}`` silently turns the adapter off here, since SD1.5's ``up_blocks.0`` has no attention.)
    """
    if mode is IpAdapterMode.FULL:
        return scale
    scales: dict[str, object] = {}
    if mode in (IpAdapterMode.STYLE, IpAdapterMode.STYLE_AND_COMPOSITION):
        scales["up"] = {"block_1": scale}
    if mode in (IpAdapterMode.COMPOSITION, IpAdapterMode.STYLE_AND_COMPOSITION):
        scales["down"] = {"block_2": scale}
        scales["mid"] = scale
    return scales


@dataclass
class RenderRequest:
    """One render: prompt, edge map, style references and sampler settings (diffusers' argument names).

    Images are numpy arrays ``(H, W)`` or ``(H, W, C)``, uint8 or float in [0, 1]. ``width``/``height`` of 0
    follow the edge map's aspect with a short side of ``DEFAULT_SHORT_SIDE``. ``sampler`` is one of
    :data:`schedulers.SAMPLER_NAMES` (ComfyUI's names); ``clip_skip`` 1 uses CLIP's last layer, 2 its penultimate.
    """

    prompt: str
    control_image: np.ndarray
    style_images: Sequence[np.ndarray] = ()
    style_weights: Sequence[float] | None = None
    negative_prompt: str = ""
    num_inference_steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    controlnet_conditioning_scale: float = DEFAULT_CONTROLNET_SCALE
    control_guidance_start: float = 0.0
    control_guidance_end: float = 1.0
    ip_adapter_scale: float = DEFAULT_IP_ADAPTER_SCALE
    ip_adapter_mode: IpAdapterMode = DEFAULT_IP_ADAPTER_MODE
    seed: int = 0
    width: int = 0
    height: int = 0
    num_images_per_prompt: int = 1
    sampler: str = DEFAULT_SAMPLER
    clip_skip: int = 1
    upscale: float = 1.0
    """Above 1: render at the base size, upscale the image by this factor and refine it in a second pass."""
    hires_denoise: float = DEFAULT_HIRES_DENOISE
    hires_steps: int = 0
    """Steps of the second pass before ``hires_denoise`` shortens them; 0 = ``num_inference_steps``."""
    init_image: np.ndarray | None = None
    """With ``mask``: re-render only the masked region of this image (inpaint); the rest stays as it is."""
    mask: np.ndarray | None = None
    """``(H, W)`` in [0, 1], 1 = re-render (ComfyUI's MASK convention); the same size as the init and edge images."""
    inpaint_denoise: float = 1.0


def _number(name: str, value: float, low: float, high: float, fix: str) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise InvalidParameterError(f"{name} is {value!r}; it must be between {low:g} and {high:g}. {fix}")


def output_size(control_height: int, control_width: int, width: int, height: int) -> tuple[int, int]:
    """(width, height) of the render: multiples of 8 (the VAE's factor) that keep the edge map's aspect.

    Raises:
        InvalidParameterError: a size that is not a multiple of 8, out of range, or a different aspect.
    """
    aspect = control_width / control_height
    for name, value in (("width", width), ("height", height)):
        if value and (value % 8 or not MIN_SIDE <= value <= MAX_SIDE):
            nearest = min(MAX_SIDE, max(MIN_SIDE, round(value / 8) * 8))
            raise InvalidParameterError(
                f"{name} is {value}; it must be a multiple of 8 between {MIN_SIDE} and {MAX_SIDE} (SD1.5's VAE works "
                f"in 8-pixel cells). Use {nearest}, or 0 to follow the edge image."
            )
    if not width and not height:
        short = DEFAULT_SHORT_SIDE
        width, height = (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))
    elif not width:
        width = round(height * aspect)
    elif not height:
        height = round(width / aspect)
    else:
        if abs((width / height) / aspect - 1) > ASPECT_TOLERANCE:
            raise InvalidParameterError(
                f"width×height {width}×{height} (aspect {width / height:.3f}) does not match the edge image "
                f"{control_width}×{control_height} (aspect {aspect:.3f}); the sketch would be stretched. Set one of "
                "them to 0 to follow the edge image, or crop the sketch first."
            )
        return width, height
    # Derived sides: round to multiples of 8, keeping the aspect as closely as the 8-pixel grid allows.
    width, height = max(8, round(width / 8) * 8), max(8, round(height / 8) * 8)
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise InvalidParameterError(
            f"Following the edge image's aspect ({control_width}×{control_height}) gives {width}×{height}, outside "
            f"{MIN_SIDE}-{MAX_SIDE} pixels a side. Set width or height so that both sides fit."
        )
    return width, height


def _rgb(image: np.ndarray, what: str) -> np.ndarray:
    checked = check_image_array(image, what)
    channels = checked.shape[2]
    if channels not in (1, 3):
        raise InvalidImageError(
            f"The {what} has {channels} channels; expected 1 (gray) or 3 (RGB). "
            + ("Flatten its alpha channel onto a background first." if channels in (2, 4) else "")
        )
    rgb = to_float_image(checked, what)
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    return rgb


@dataclass
class CheckedRequest:
    """A validated request: float RGB images, normalised weights, final size."""

    request: RenderRequest
    control_image: np.ndarray
    style_images: list[np.ndarray]
    style_weights: list[float]
    width: int
    height: int
    hires_width: int = 0
    hires_height: int = 0
    """The second pass's size; 0 = no hires pass."""
    init_image: np.ndarray | None = None
    mask: np.ndarray | None = None


def check_request(request: RenderRequest, has_ip_adapter: bool) -> CheckedRequest:
    """Validate every input of a render before sampling.

    Raises:
        InvalidImageError: bad edge or style images (shape, channels, values, empty style batch).
        InvalidParameterError: a setting out of range, or a size that cannot be rendered.
    """
    if not isinstance(request.prompt, str) or not isinstance(request.negative_prompt, str):
        raise InvalidParameterError("prompt and negative_prompt must be text.")
    for name, text in (("prompt", request.prompt), ("negative_prompt", request.negative_prompt)):
        if len(text) > MAX_PROMPT_CHARS:
            raise InvalidParameterError(
                f"{name} is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS} (and 600 CLIP tokens). "
                "Shorten it."
            )
    steps = request.num_inference_steps
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise InvalidParameterError(
            f"num_inference_steps is {steps!r}; it must be a whole number from 1 to {MAX_STEPS} "
            f"({DEFAULT_STEPS} is a good default for SD1.5; 4-8 for lcm/tcd)."
        )
    check_sampler(request.sampler, steps)
    if isinstance(request.clip_skip, bool) or request.clip_skip not in CLIP_SKIP_CHOICES:
        raise InvalidParameterError(
            f"clip_skip is {request.clip_skip!r}; use 1 (CLIP's last layer, SD1.5's default) or 2 (the penultimate "
            "layer, for checkpoints trained with it, e.g. many anime models)."
        )
    _number("guidance_scale", request.guidance_scale, 0.0, MAX_GUIDANCE_SCALE, "7.5 is the usual CFG for SD1.5.")
    _number(
        "controlnet_conditioning_scale",
        request.controlnet_conditioning_scale,
        0.0,
        MAX_CONTROLNET_SCALE,
        "Use 0 to ignore the edges, 1-1.5 to follow them.",
    )
    _number("ip_adapter_scale", request.ip_adapter_scale, 0.0, MAX_IP_ADAPTER_SCALE, "Use 0.5-1.0 for style transfer.")
    _number("control_guidance_start", request.control_guidance_start, 0.0, 1.0, "It is a fraction of the steps.")
    _number("control_guidance_end", request.control_guidance_end, 0.0, 1.0, "It is a fraction of the steps.")
    if request.control_guidance_start >= request.control_guidance_end:
        raise InvalidParameterError(
            f"control_guidance_start ({request.control_guidance_start}) must be below control_guidance_end "
            f"({request.control_guidance_end}); to turn ControlNet off set controlnet_conditioning_scale to 0."
        )
    if not isinstance(request.seed, int) or not 0 <= request.seed <= MAX_SEED:
        raise InvalidParameterError(f"seed is {request.seed!r}; it must be a whole number from 0 to 2**64-1.")
    batch = request.num_images_per_prompt
    if not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise InvalidParameterError(f"num_images_per_prompt is {batch!r}; it must be from 1 to {MAX_BATCH}.")
    if not isinstance(request.ip_adapter_mode, IpAdapterMode):
        raise InvalidParameterError(
            f"ip_adapter_mode is {request.ip_adapter_mode!r}; pick one of {[m.value for m in IpAdapterMode]}."
        )

    control = _rgb(request.control_image, "edge image")
    width, height = output_size(control.shape[0], control.shape[1], request.width, request.height)
    if width * height * batch > MAX_PIXELS_PER_RUN:
        raise InvalidParameterError(
            f"{batch} image(s) of {width}×{height} is {width * height * batch / 1e6:.1f} MP in one run; the limit is "
            f"{MAX_PIXELS_PER_RUN / 1e6:.1f} MP (SD1.5 is made for 512×512). Lower width/height or the batch size."
        )

    styles = [_rgb(image, f"style image {i + 1}") for i, image in enumerate(request.style_images)]
    if has_ip_adapter and not styles:
        raise InvalidImageError(
            "The style image batch is empty; connect at least one style reference (e.g. from the CLIP Style "
            "Retriever), or load the pipeline without an IP-Adapter."
        )
    if styles and not has_ip_adapter:
        raise InvalidParameterError(
            f"{len(styles)} style image(s) were given but the pipeline has no IP-Adapter to use them; pick an "
            "IP-Adapter and image encoder in the loader, or disconnect the style images."
        )
    weights = [1.0] * len(styles) if request.style_weights is None else [float(w) for w in request.style_weights]
    if len(weights) != len(styles):
        raise InvalidParameterError(
            f"{len(weights)} style weight(s) for {len(styles)} style image(s); give one weight per image or none."
        )
    if any(not math.isfinite(w) or w < 0 for w in weights) or (weights and sum(weights) <= 0):
        raise InvalidParameterError(
            f"style weights {weights} must be finite, non-negative and not all 0; they are normalised to sum to 1."
        )
    total = sum(weights)
    checked = CheckedRequest(request, control, styles, [w / total for w in weights], width, height)
    _check_hires(request, checked)
    _check_inpaint(request, checked)
    return checked


def _check_hires(request: RenderRequest, checked: CheckedRequest) -> None:
    _number("upscale", request.upscale, 1.0, MAX_UPSCALE, "1 renders once at the base size; 1.5-2 adds a hires pass.")
    if request.upscale == 1.0:
        return
    _number(
        "hires_denoise", request.hires_denoise, 0.0, 1.0, f"{DEFAULT_HIRES_DENOISE} keeps the layout and adds detail."
    )
    steps = request.hires_steps
    if not isinstance(steps, int) or not 0 <= steps <= MAX_STEPS:
        raise InvalidParameterError(
            f"hires_steps is {steps!r}; it must be from 0 (= num_inference_steps) to {MAX_STEPS}."
        )
    steps = steps or request.num_inference_steps
    if denoised_steps(steps, request.hires_denoise) < 1:
        raise InvalidParameterError(
            f"hires_denoise {request.hires_denoise} of {steps} hires steps runs no step at all; raise hires_denoise "
            f"to at least {1 / steps:.2f} or hires_steps."
        )
    width, height = hires_size(checked.width, checked.height, request.upscale)
    batch = request.num_images_per_prompt
    if max(width, height) > MAX_SIDE or width * height * batch > MAX_PIXELS_PER_RUN:
        raise InvalidParameterError(
            f"upscale {request.upscale:g} of {checked.width}×{checked.height} gives {width}×{height} × {batch} "
            f"image(s); the limits are {MAX_SIDE} pixels a side and {MAX_PIXELS_PER_RUN / 1e6:.1f} MP a run. Lower "
            "upscale, the base width/height or the batch size."
        )
    if request.init_image is not None:
        raise InvalidParameterError(
            "upscale applies to full renders; an inpaint keeps the init image's size. Set upscale to 1, or upscale "
            "the inpainted image in a second sampler."
        )
    checked.hires_width, checked.hires_height = width, height


def _check_inpaint(request: RenderRequest, checked: CheckedRequest) -> None:
    if request.mask is None and request.init_image is None:
        return
    if request.init_image is None:
        raise InvalidParameterError(
            "A mask was given without an init image; connect the image the mask belongs to (init_image), or "
            "disconnect the mask for a full render."
        )
    if request.mask is None:
        raise InvalidParameterError(
            "An init image was given without a mask; connect a MASK (1 = re-render) to re-render part of it, or "
            "disconnect init_image for a full render."
        )
    _number("inpaint_denoise", request.inpaint_denoise, 0.0, 1.0, "1 re-renders the masked region from scratch.")
    if denoised_steps(request.num_inference_steps, request.inpaint_denoise) < 1:
        raise InvalidParameterError(
            f"inpaint_denoise {request.inpaint_denoise} of {request.num_inference_steps} steps runs no step at all; "
            "raise inpaint_denoise or num_inference_steps."
        )
    init = _rgb(request.init_image, "init image")
    mask = np.asarray(request.mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[:, :, 0]
    if mask.ndim != 2 or mask.size == 0:
        raise InvalidImageError(f"The mask has shape {mask.shape}; expected one (height, width) mask.")
    if not np.issubdtype(mask.dtype, np.floating) and not np.issubdtype(mask.dtype, np.integer):
        raise InvalidImageError(f"The mask has dtype {mask.dtype}; expected float values in [0, 1].")
    mask = mask.astype(np.float32)
    if not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise InvalidImageError("The mask has values outside [0, 1] or NaN; a MASK is 0 (keep) to 1 (re-render).")
    edge = checked.control_image.shape[:2]
    for what, shape in (("init image", init.shape[:2]), ("mask", mask.shape)):
        if shape != edge:
            raise InvalidImageError(
                f"The {what} is {shape[1]}×{shape[0]} but the edge image is {edge[1]}×{edge[0]}; the init image, "
                "its mask and the edge map must be the same size. Resize them to one size first (e.g. the Canny "
                "node's resolution and ImageScale / the mask's own node), or crop."
            )
    if not mask.any():
        raise InvalidImageError("The mask is empty (all 0): nothing would be re-rendered. Paint the region to change.")
    checked.init_image, checked.mask = init, mask
