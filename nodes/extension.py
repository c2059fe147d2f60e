"""The list of nodes this pack registers with ComfyUI."""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io
from typing_extensions import override

from .add_style_node import AddToStyleLibrary
from .lora_node import HybridLoRA
from .pipeline_loader_node import HybridPipelineLoader
from .preprocess import CannySketchPreprocessor
from .retriever_node import ClipStyleRetriever
from .sampler_node import HybridSampler
from .style_library_node import StyleLibraryLoader


class SketchRagExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [
            CannySketchPreprocessor,
            StyleLibraryLoader,
            ClipStyleRetriever,
            AddToStyleLibrary,
            HybridPipelineLoader,
            HybridLoRA,
            HybridSampler,
        ]
