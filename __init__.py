"""Sketch RAG: sketch → retrieve a style → render, as ComfyUI nodes.

Registration only. ComfyUI imports this folder as a package and calls ``comfy_entrypoint``;
the node modules are imported there, not at import time, so that the engine packages stay
importable (as ``sketch_rag``) in the CLI and tests where ComfyUI is absent.
"""

from __future__ import annotations

from typing import Any

WEB_DIRECTORY = "./web"
"""The Style Library sidebar tab's plain ES modules (ComfyUI serves them under /extensions/)."""


async def comfy_entrypoint() -> Any:
    """ComfyUI's V3 entry point: the extension that lists this pack's nodes."""
    from .nodes.extension import SketchRagExtension

    return SketchRagExtension()
