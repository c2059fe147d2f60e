"""The ``pipeline`` socket between the Hybrid loader, LoRA and sampler nodes, and the check of what arrives on it.

The socket carries the engine's ``PipelineSpec`` (which files, LoRAs, precision and device), never the models: those
stay in the engine's warm cache, which turns a spec into the loaded pipeline.
"""

from __future__ import annotations

from typing import Any

from comfy_api.v0_0_2 import io

from ..errors import InvalidParameterError

PipelineSpecType = io.Custom("SKETCHRAG_HYBRID_PIPELINE")
"""The socket type; its string is frozen, since saved workflows name it."""


def checked_spec(pipeline: Any) -> Any:
    """The ``PipelineSpec`` our loader and LoRA nodes pass on; ComfyUI lets an API graph's constant through instead."""
    from ..rendering import PipelineSpec

    if not isinstance(pipeline, PipelineSpec):
        raise InvalidParameterError(
            f"The pipeline input is a {type(pipeline).__name__}; connect a Hybrid Pipeline Loader (or a Hybrid LoRA "
            "after one) to it."
        )
    return pipeline
