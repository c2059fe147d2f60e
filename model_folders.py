"""The ComfyUI ``models/`` subfolders the pack reads: one definition for the nodes, the CLI and the test models.

``ipadapter`` and ``style_clip`` are not core ComfyUI folders; the nodes register them with ComfyUI when a
schema is first built. The others are ComfyUI's own names, so models a user already has are found.
"""

from __future__ import annotations

CHECKPOINTS = "checkpoints"
CONTROLNET = "controlnet"
IPADAPTER = "ipadapter"
CLIP_VISION = "clip_vision"
LORAS = "loras"
STYLE_CLIP = "style_clip"
"""CLIP folders (transformers layout) for style retrieval, listed by the Style Library node."""

FOLDER_OF_INPUT = {
    "checkpoint": CHECKPOINTS,
    "controlnet": CONTROLNET,
    "ip_adapter": IPADAPTER,
    "image_encoder": CLIP_VISION,
    "embedding_model": STYLE_CLIP,
    "lora": LORAS,
}
"""The node input (and CLI option) that names a model -> the folder its choices come from."""
