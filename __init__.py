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
    """ComfyUI's V3 entry point: the Style Library tab's routes, and the extension that lists this pack's nodes.

    ComfyUI calls this while loading custom nodes, before it adds its route table to the server,
    so routes added here are served (also under ``/api``).
    """
    from .nodes.extension import SketchRagExtension
    from .nodes.library_routes import register_routes

    register_routes()
    return SketchRagExtension()
