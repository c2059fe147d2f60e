"""``sketch-rag tiny-models``: tiny random-initialised models in the real file formats and folders.

Everything runs offline with them (tests, demos, CI); real models simply replace the files.
Each builder writes into a ComfyUI ``models/`` folder and returns the paths it wrote.
"""

from __future__ import annotations

from pathlib import Path

from ..model_folders import LORAS


def write_tiny_models(models_dir: Path) -> list[Path]:
    """Write the tiny CLIP (retrieval), the tiny SD1.5 set (rendering) and its LoRAs under ``models_dir``."""
    from .clip import write_tiny_clip
    from .lora import write_tiny_loras
    from .sd import build_tiny_sd15, write_tiny_sd_models

    models_dir.mkdir(parents=True, exist_ok=True)
    written = [*write_tiny_clip(models_dir), *write_tiny_sd_models(models_dir)]
    sd = build_tiny_sd15()  # the same seed as the files above: the LoRAs need only its layer shapes
    return [*written, *write_tiny_loras(models_dir / LORAS, sd["unet"], sd["text_encoder"])]
