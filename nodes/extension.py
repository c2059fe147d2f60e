"""The list of nodes this pack registers with ComfyUI."""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io
from typing_extensions import override

from .lora_node import HybridLoRA
from .preprocess import CannySketchPreprocessor
from .retrieval_nodes import RETRIEVAL_NODES
from .sampler_nodes import HybridPipelineLoader, HybridSampler


class SketchRagExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [CannySketchPreprocessor, *RETRIEVAL_NODES, HybridPipelineLoader, HybridLoRA, HybridSampler]
