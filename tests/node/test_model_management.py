"""Our warm models inside ComfyUI's real model management: a swap frees the old model first, an unload frees all.

ComfyUI's ``comfy.model_management`` is imported in a fresh interpreter (``comfy_mm_probe.py``) from the
installed ComfyUI, so what is checked is the module the server runs, not a stand-in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sketch_rag.cli.comfyui_install import install_comfyui
from sketch_rag.model_folders import STYLE_CLIP
from sketch_rag.tiny_models.clip import write_tiny_clip
from sketch_rag.tiny_models.sd import CHECKPOINT_NAME, CONTROLNET_NAMES, IMAGE_ENCODER_NAME, IP_ADAPTER_NAMES
from tests.helpers.paths import COMFYUI_HOME

pytestmark = pytest.mark.slow

PROBE = Path(__file__).with_name("comfy_mm_probe.py")


@pytest.fixture(scope="module")
def report(models_dir: Path, other_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    comfy_dir = install_comfyui(COMFYUI_HOME, requirements=False)
    clip_root = tmp_path_factory.mktemp("clip")
    write_tiny_clip(clip_root)
    a = {
        "checkpoint": str(models_dir / "checkpoints" / CHECKPOINT_NAME),
        "controlnet": str(models_dir / "controlnet" / CONTROLNET_NAMES[0]),
        "ip_adapter": str(models_dir / "ipadapter" / IP_ADAPTER_NAMES[0]),
        "image_encoder": str(models_dir / "clip_vision" / IMAGE_ENCODER_NAME),
    }
    b = {**a, "checkpoint": str(other_models["checkpoint"])}
    args = {"a": a, "b": b, "clip_dir": str(clip_root / STYLE_CLIP)}
    # The child runs in ComfyUI's folder: relative entries of our own PYTHONPATH must not change meaning there.
    ours = [os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    path = os.pathsep.join([str(comfy_dir), *ours])
    done = subprocess.run(
        [sys.executable, str(PROBE), json.dumps(args)],
        cwd=comfy_dir,
        env={**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_pipeline_is_one_entry_in_comfyuis_loaded_models(report: Any) -> None:
    assert report["entries_after_a"] == [["controlnet", "image_encoder", "text_encoder", "unet", "vae"]]


def test_a_checkpoint_swap_frees_the_old_model_and_comfyuis_entry_before_the_new_load(report: Any) -> None:
    assert report["alive_at_b_load"] == []  # neither the cache, the assembled pipe nor ComfyUI's patcher held it
    assert report["entries_at_b_load"] == 0
    assert report["entries_after_b"] == 1 and report["entry_holds_b"]


def test_unload_models_frees_the_pipeline_and_the_style_librarys_clip(report: Any) -> None:
    assert report["entries_with_clip"] == 2
    assert report["after_unload"] == {"pipeline_roles": [], "unet_alive": False, "clip_loaded": False, "entries": 0}


def test_the_clip_loads_again_on_its_next_use_and_registers_again(report: Any) -> None:
    assert report["clip_reloaded"] == {"loaded": True, "generation": 2, "same_embedding": True, "entries": 1}
