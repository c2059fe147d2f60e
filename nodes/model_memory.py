"""Our warm models as entries in ComfyUI's model management: the hybrid pipeline and the Style Library's CLIP.

Each goes through ``comfy_host.ManagedModels``, so ComfyUI counts their memory when it makes room for its own
models, and its "Unload models" (``POST /free``) releases them; without those internals every call here does
nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .comfy_host import ManagedModels

if TYPE_CHECKING:
    from ..retrieval import ClipEmbedder

_MANAGED: dict[str, ManagedModels] = {}


def pipeline_models() -> ManagedModels:
    """The entry of the warm hybrid pipeline in ComfyUI's model management (made on first use).

    ComfyUI's unload releases the engine's cache; a model swap inside the cache drops the entry first (its
    replace listener), so ComfyUI's patcher never keeps the old model alive while the new one loads.
    """
    from ..rendering import DEFAULT_CACHE

    managed = _MANAGED.get("pipeline")
    if managed is None:
        managed = _MANAGED["pipeline"] = ManagedModels("the hybrid pipeline", DEFAULT_CACHE.release)
        DEFAULT_CACHE.add_replace_listener(_drop_pipeline_entry)
    return managed


def _drop_pipeline_entry(_role: str) -> None:
    managed = _MANAGED.get("pipeline")
    if managed is not None:
        managed.drop()


def register_with_model_management(hybrid: Any) -> None:
    """Let ComfyUI account for and free the warm pipeline's models like its own (see ``comfy_host.ManagedModels``)."""
    pipe = hybrid.pipe
    parts = {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder, "controlnet": pipe.controlnet}
    if pipe.image_encoder is not None:
        parts["image_encoder"] = pipe.image_encoder
    pipeline_models().use(hybrid.generation, parts)


def managed_embedder(embedder: ClipEmbedder) -> ClipEmbedder:
    """Register ``embedder``'s CLIP with ComfyUI's model management, like the SD models (``comfy_host.ManagedModels``).

    ComfyUI's "Unload models" (``POST /free``) then releases its weights; the libraries keep the embedder,
    which loads the weights again on its next use and registers them anew (its ``on_use`` hook runs before
    every embedding, so ComfyUI always knows the CLIP is in memory and in use).
    """
    managed = ManagedModels(f"the Style Library CLIP model {embedder.name}", embedder.release)

    def in_use(current: ClipEmbedder) -> None:
        if current.model is not None:
            managed.use(current.generation, {"clip": current.model})

    embedder.on_use = in_use
    in_use(embedder)  # accounted for from the load on, not only from its first embedding
    return embedder
