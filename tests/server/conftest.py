"""The server tier: a real ComfyUI with the pack (the session's ``comfy_server``), driven over HTTP.

Its tests check wiring and caching through ComfyUI; what the engines compute is the unit tier's. Here too: a fast
job setup on the tiny models, and extra servers of a test's own (to kill, restart or hang).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sketch_rag.cli.comfyui_install import install_comfyui
from sketch_rag.cli.comfyui_server import ComfyServer, free_port, link_pack, start_server
from sketch_rag.cli.workflows import tiny_models
from tests.helpers.client import RecordingClient
from tests.helpers.paths import COMFYUI_HOME, STYLE_LIBRARY
from tests.helpers.tiers import mark_tier

FAST: dict[str, Any] = {"steps": 2, "resolution": 64, "style_resolution": 64, "height": 64}
"""Tiny models, two steps, 64 px: the whole graph runs, in seconds."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tier(items, Path(__file__).parent, "comfy")


@pytest.fixture(scope="session")
def fast_fields() -> dict[str, Any]:
    return {**tiny_models(), **FAST}


def start_extra_server(base: Path, models: Path, port: int | None = None) -> ComfyServer:
    """Another ComfyUI with its own base directory (own library store) sharing the tiny model files."""
    if not (base / "models").exists():
        base.mkdir(parents=True, exist_ok=True)
        link_pack(base)
        for folder in ("input", "output", "user", "temp"):
            (base / folder).mkdir(exist_ok=True)
        (base / "models").symlink_to(models, target_is_directory=True)
    return start_server(
        install_comfyui(COMFYUI_HOME, requirements=False), port=port or free_port(), cpu=True,
        log_path=base / f"comfyui-{port}.log",
        extra_args=("--base-directory", str(base), "--database-url", "sqlite:///:memory:"),
        env={"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"},
    )


@pytest.fixture
def extra_server_factory(tmp_path: Path, comfy_base_dir: Path) -> Iterator[Any]:
    started: list[ComfyServer] = []

    def make(name: str = "extra", port: int | None = None) -> ComfyServer:
        server = start_extra_server(tmp_path / name, comfy_base_dir / "models", port)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def render_inputs(comfy: RecordingClient, example_sketches: list[Path]) -> tuple[str, str]:
    """The house sketch and Monet's water lilies uploaded to the session's server: what ``render_graph`` takes."""
    sketch = next(p for p in example_sketches if p.stem == "sketch_house")
    style = STYLE_LIBRARY / "monet_water_lilies.jpg"
    return comfy.upload_image(sketch.read_bytes(), sketch.name), comfy.upload_image(style.read_bytes(), style.name)
