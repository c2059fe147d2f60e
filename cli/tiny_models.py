"""``sketch-rag tiny-models``: tiny random-initialised models in the real file formats and folders.

Everything runs offline with them (tests, demos, CI); real models simply replace the files.
Each builder writes into a ComfyUI ``models/`` folder and returns the paths it wrote.
"""

from __future__ import annotations

from pathlib import Path


def write_tiny_models(models_dir: Path) -> list[Path]:
    """Write the tiny CLIP (retrieval), the tiny SD1.5 set (rendering) and its LoRAs under ``models_dir``."""
    from ..rendering.tiny_lora import write_tiny_loras
    from ..rendering.tiny_sd import build_tiny_sd15, write_tiny_sd_models
    from ..retrieval.tiny_clip import write_tiny_clip

    models_dir.mkdir(parents=True, exist_ok=True)
    written = [*write_tiny_clip(models_dir), *write_tiny_sd_models(models_dir)]
    sd = build_tiny_sd15()  # the same seed as the files above: the LoRAs need only its layer shapes
    return [*written, *write_tiny_loras(models_dir / "loras", sd["unet"], sd["text_encoder"])]
