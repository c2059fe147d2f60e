"""The small render every engine test starts from: 64 px, 4 steps, one fixed seed, the style at full scale."""

from __future__ import annotations

from typing import Any

import numpy as np

from sketch_rag.rendering.render_request import RenderRequest

STEPS = 4


def request(edge: np.ndarray, styles: list[np.ndarray] | None = None, **changes: Any) -> RenderRequest:
    """A 64 px render of ``edge`` in ``styles`` (none: no style images); ``changes`` override any field."""
    settings: dict[str, Any] = {
        "prompt": "a watercolor house",
        "negative_prompt": "blurry",
        "control_image": edge,
        "style_images": styles or [],
        "num_inference_steps": STEPS,
        "seed": 7,
        "width": 64,
        "height": 64,
        "ip_adapter_scale": 1.0,
    }
    settings.update(changes)
    return RenderRequest(**settings)
