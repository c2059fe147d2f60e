"""Second passes on the warm pipeline: a hires refinement and a masked (inpaint) re-render.

SD1.5 was trained at 512²; asked for 1024² directly it tends to repeat the subject across the canvas. The usual
remedy (A1111's "hires fix", ComfyUI's two-KSampler graph) is to render at the base size, upscale, and re-render the
upscaled image at partial denoise so the second pass adds detail without re-inventing the layout. Here the upscale
is in **pixel space** (Lanczos on the decoded image), not in latent space: a latent upscale needs denoise well above
0.5 to hide its interpolation artefacts, a pixel upscale is clean at any denoise. The edge map steers both passes;
diffusers resizes it to each pass's size exactly as it does for the first.

Both passes reuse the loaded models: the img2img and inpaint pipelines are new wrappers around the same modules
(and the IP-Adapter inside the UNet), built per render because wiring them costs nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..imaging import to_uint8


def round_to_8(value: float) -> int:
    return max(8, int(round(value / 8)) * 8)


def hires_size(width: int, height: int, upscale: float) -> tuple[int, int]:
    """The second pass's size: the base size times ``upscale``, on the VAE's 8-pixel grid."""
    return round_to_8(width * upscale), round_to_8(height * upscale)


def denoised_steps(steps: int, denoise: float) -> int:
    """How many steps an img2img/inpaint pass at ``denoise`` runs (diffusers' ``get_timesteps``)."""
    return min(int(steps * denoise), steps)


def derived_pipeline(pipe: Any, kind: str) -> Any:
    """The img2img (``"img2img"``) or inpaint (``"inpaint"``) ControlNet pipeline over ``pipe``'s own modules.

    Built from the constructor, not ``from_pipe``: ``from_pipe`` casts every shared module to float32 unless told
    otherwise, which would silently upcast an fp16 UNet in place.
    """
    from diffusers import StableDiffusionControlNetImg2ImgPipeline, StableDiffusionControlNetInpaintPipeline

    cls: Any = (
        StableDiffusionControlNetImg2ImgPipeline if kind == "img2img" else StableDiffusionControlNetInpaintPipeline
    )
    derived = cls(**pipe.components, requires_safety_checker=False)
    derived.set_progress_bar_config(disable=True)
    return derived


def upscaled(images: np.ndarray, width: int, height: int) -> list[Any]:
    """Float ``(B, H, W, 3)`` renders as PIL images resized to ``width``×``height`` (Lanczos)."""
    from PIL import Image

    return [Image.fromarray(to_uint8(image)).resize((width, height), Image.Resampling.LANCZOS) for image in images]


def resized_float(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """A float image in [0, 1] (``(H, W)`` or ``(H, W, C)``) resized with area averaging, kept in float."""
    import cv2

    if image.shape[1] == width and image.shape[0] == height:
        return image
    interpolation = cv2.INTER_AREA if width < image.shape[1] else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(image, (width, height), interpolation=interpolation), dtype=np.float32)


def blend_into(init: np.ndarray, renders: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each render laid over the init image through the mask; pixels where the mask is 0 are the init's exactly.

    ``init`` ``(H, W, 3)``, ``renders`` ``(B, H, W, 3)``, ``mask`` ``(H, W)`` in [0, 1] (1 = re-rendered). A soft
    mask edge mixes the two; ``np.where`` keeps the unmasked pixels bit for bit rather than trusting ``x*1 + y*0``.
    """
    weight = mask[None, :, :, None]
    mixed = init[None] * (1.0 - weight) + renders * weight
    return np.where(weight > 0, mixed, np.broadcast_to(init[None], renders.shape)).astype(np.float32)
