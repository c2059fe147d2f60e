"""Fixtures every tier may use: example assets, the tiny models, and a real ComfyUI server with the pack.

The server tier starts ``.comfyui/ComfyUI`` (installed by ``./dev.sh``) once per session, with a
fresh base directory (custom_nodes, models, input, output, user) under pytest's tmp folder, and
stops it by PID at the end. The node tier shares that base directory's tiny models, without the server.
The tiny SD1.5 fixtures (``models_dir``, ``make_spec``, ...) come from the ``tests.helpers.tiny_sd`` plugin.
"""

from __future__ import annotations

import os

# Nothing in the test suite may reach a model hub; these must be set before transformers/diffusers load.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["ANONYMIZED_TELEMETRY"] = "False"

from collections.abc import Iterator
from pathlib import Path

import pytest

from sketch_rag.cli.comfyui_install import install_comfyui
from sketch_rag.cli.comfyui_server import ComfyServer, free_port, link_pack, start_server
from sketch_rag.cli.workflows import SKETCHES_DIR
from sketch_rag.tiny_models.files import write_tiny_models
from tests.helpers.client import RecordingClient
from tests.helpers.graphs import Schemas
from tests.helpers.paths import COMFYUI_HOME

pytest_plugins = ["tests.helpers.tiny_sd"]

EXAMPLE_SKETCHES = SKETCHES_DIR


@pytest.fixture(scope="session")
def example_sketches() -> list[Path]:
    sketches = sorted(EXAMPLE_SKETCHES.glob("*.png"))
    assert sketches, f"no example sketches in {EXAMPLE_SKETCHES}"
    return sketches


@pytest.fixture(scope="session")
def comfy_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's --base-directory: the pack linked into custom_nodes, the tiny models in models/."""
    base = tmp_path_factory.mktemp("comfy_base")
    link_pack(base)
    for folder in ("input", "output", "user", "temp"):
        (base / folder).mkdir()
    write_tiny_models(base / "models")
    return base


@pytest.fixture(scope="session")
def comfy_server(comfy_base_dir: Path) -> Iterator[ComfyServer]:
    comfy_dir = install_comfyui(COMFYUI_HOME, requirements=False)
    server = start_server(
        comfy_dir,
        port=free_port(),
        cpu=True,
        log_path=comfy_base_dir / "comfyui.log",
        extra_args=("--base-directory", str(comfy_base_dir), "--database-url", "sqlite:///:memory:"),
        env={"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"},
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def comfy(comfy_server: ComfyServer) -> RecordingClient:
    """The session server's client; its ``run_recorded`` tells which nodes ran and which ComfyUI served from cache."""
    return RecordingClient(comfy_server.url)


@pytest.fixture(scope="session")
def schemas(comfy: RecordingClient) -> Schemas:
    """The server's node schemas (``/object_info/{type}``, fetched once each): what ``Graph`` fills defaults from."""
    return Schemas(comfy)
