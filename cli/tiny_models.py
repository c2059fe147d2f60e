"""``sketch-rag tiny-models``: tiny random-initialised models in the real file formats and folders.

Everything runs offline with them (tests, demos, CI); real models simply replace the files.
Each builder writes into a ComfyUI ``models/`` folder and returns the paths it wrote.
"""

from __future__ import annotations

from pathlib import Path


def write_tiny_models(models_dir: Path) -> list[Path]:
    """Write the tiny CLIP (retrieval) and the tiny SD1.5 set (rendering) under ``models_dir``."""
    from ..rendering.tiny_sd import write_tiny_sd_models
    from ..retrieval.tiny_clip import write_tiny_clip

    models_dir.mkdir(parents=True, exist_ok=True)
    return [*write_tiny_clip(models_dir), *write_tiny_sd_models(models_dir)]
