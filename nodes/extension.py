"""The list of nodes this pack registers with ComfyUI."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from .preprocess import CannySketchPreprocessor


class SketchRagExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [CannySketchPreprocessor]
