"""The node tier runs on the installed ComfyUI, imported in-process on the CPU; without one the tier fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.paths import COMFYUI_DIR, COMFYUI_INSTALLED, NO_COMFYUI


def test_the_installed_comfyui_is_the_one_imported_and_it_runs_on_the_cpu(comfy_base: Path) -> None:
    if not COMFYUI_INSTALLED:
        pytest.fail(NO_COMFYUI)
    import comfy.model_management as mm
    import folder_paths

    assert Path(mm.__file__).resolve().is_relative_to(COMFYUI_DIR.resolve())
    assert mm.get_torch_device().type == "cpu"
    assert Path(folder_paths.get_folder_paths("checkpoints")[0]).is_relative_to(comfy_base)
