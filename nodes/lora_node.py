"""Hybrid LoRA node: adds one LoRA (file + strength) to the Hybrid pipeline; chain it to stack several.

The pipeline travelling between nodes is the engine's ``PipelineSpec``; this node returns a copy with one more
``(file, strength)`` in ``loras``. The weights are fused here already (the warm checkpoint stays loaded), so a
wrong file fails on this node, and the sampler finds the stack in place.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from comfy_api.v0_0_2 import io

from ..model_folders import LORAS
from ..rendering import MAX_LORA_STRENGTH
from .common import CATEGORY, NODE_PREFIX
from .input_checks import unknown_options
from .model_choices import choices, full_path
from .pipeline_socket import PipelineSpecType, checked_spec


class HybridLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{NODE_PREFIX}HybridLoRA",
            display_name="Hybrid LoRA (SD1.5)",
            category=CATEGORY,
            description=(
                "Adds an SD1.5 LoRA from models/loras to the Hybrid pipeline (UNet and text encoder); chain several "
                "to stack them. Changing the strength or removing the node never reloads the checkpoint."
            ),
            inputs=[
                PipelineSpecType.Input("pipeline", tooltip="From the Hybrid Pipeline Loader or another Hybrid LoRA."),
                io.Combo.Input(
                    "lora",
                    options=choices(LORAS),
                    tooltip="An SD1.5 LoRA from models/loras, kohya/A1111 or diffusers layout (.safetensors).",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-MAX_LORA_STRENGTH,
                    max=MAX_LORA_STRENGTH,
                    step=0.05,
                    tooltip="How strongly the LoRA applies, to UNet and text encoder alike: 1 as trained, 0 off, "
                    "negative inverts it.",
                ),
            ],
            outputs=[
                PipelineSpecType.Output(
                    display_name="pipeline", tooltip="The pipeline with this LoRA, for the sampler or the next LoRA."
                )
            ],
        )

    @classmethod
    def validate_inputs(cls, lora: str | None = None) -> bool | str:
        return unknown_options(cls, lora=lora)

    @classmethod
    def execute(cls, pipeline: Any, lora: str, strength: float = 1.0) -> io.NodeOutput:
        from ..rendering import DEFAULT_CACHE, check_strength

        given = checked_spec(pipeline)
        path = full_path(LORAS, lora)
        spec = dataclasses.replace(given, loras=(*given.loras, (path, check_strength(strength, path))))
        DEFAULT_CACHE.get(spec)  # read, check and fuse now, so a bad file fails on this node
        return io.NodeOutput(spec)
