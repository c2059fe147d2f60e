"""The node unit tier: each node's ``execute`` called in-process on tiny tensors, with no ComfyUI server.

ComfyUI core tests its own nodes this way (``tests-unit/``): the installed ComfyUI is importable, its
argument parser is told ``--cpu`` before ``comfy.model_management`` loads, and ``folder_paths`` points
at a scratch base directory. Here that base directory holds the tiny models (written once per session
by the same writer as the server tier's, and shared with it through a link) and its own user, input,
output and temp folders, so nothing a node writes reaches the server tier's folders or the pack.

ComfyUI's folder is appended to ``sys.path``, not prepended: its top-level ``utils/``, ``app/`` and
``server.py`` must not shadow a module of the same name anywhere else in the test session.

Without an installed ComfyUI the tier fails, naming the fix: its only collected test
(``test_comfyui_present.py``) fails, so ``-m node`` can never pass by running nothing.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.helpers.images import as_loaded_by_comfyui, image_batch
from tests.helpers.paths import COMFYUI_DIR, COMFYUI_INSTALLED, NO_COMFYUI
from tests.helpers.tiers import mark_tier

HERE = Path(__file__).parent

if COMFYUI_INSTALLED:
    if str(COMFYUI_DIR) not in sys.path:
        sys.path.append(str(COMFYUI_DIR))
    # Before any test module imports a node (and with it comfy.model_management, which reads the flag once).
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = True
else:  # the node modules cannot even be imported: collect only the test that says so
    collect_ignore = [p.name for p in HERE.glob("test_*.py") if p.name != "test_comfyui_present.py"]


def pytest_report_header() -> str:
    if COMFYUI_INSTALLED:
        return f"node tier: ComfyUI from {COMFYUI_DIR} (in-process, --cpu)"
    return f"node tier: FAILS, {NO_COMFYUI}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tier(items, HERE, "node")


# Node outputs are compared with the engine's bit for bit, which holds at a fixed thread count.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def comfyui_installed() -> None:
    """Fails each node test at once, naming the fix, when there is no ComfyUI to import."""
    if not COMFYUI_INSTALLED:
        pytest.fail(NO_COMFYUI)


@pytest.fixture(scope="session", autouse=True)
def comfy_base(
    comfyui_installed: None, comfy_base_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """ComfyUI's base directory for in-process nodes: the session's tiny models, fresh user/input/output/temp.

    ``folder_paths`` computes its folders from ``--base-directory`` when imported, so it is reloaded with
    ours (in place: the node modules' ``import folder_paths`` sees the new folders) and reset at the end.
    """
    base = tmp_path_factory.mktemp("node_base").resolve()
    for folder in ("input", "output", "user", "temp"):
        (base / folder).mkdir()
    (base / "models").symlink_to(comfy_base_dir / "models", target_is_directory=True)
    import folder_paths
    from comfy.cli_args import args as comfy_args

    previous = comfy_args.base_directory
    comfy_args.base_directory = str(base)
    importlib.reload(folder_paths)
    try:
        yield base
    finally:
        comfy_args.base_directory = previous
        importlib.reload(folder_paths)


@pytest.fixture(scope="session")
def to_image_batch() -> Callable[..., torch.Tensor]:
    return image_batch


@pytest.fixture(scope="session")
def house_sketch(example_sketches: list[Path]) -> np.ndarray:
    """sketch_house.png as LoadImage gives it: RGB float32 in [0, 1], (H, W, 3)."""
    return as_loaded_by_comfyui(next(p for p in example_sketches if p.stem == "sketch_house"))


@pytest.fixture
def interrupted() -> Iterator[Any]:
    """ComfyUI's interrupt flag (what ``POST /interrupt`` sets), cleared again after the test."""
    import comfy.model_management as mm

    yield mm
    mm.interrupt_current_processing(False)
