"""What every browser test shares: the pack COPIED into a fresh ComfyUI base (as a clone or ComfyUI-Manager installs
it, so its web files and templates are served exactly as for a user) and Debian's chromium, headless."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from sketch_rag.cli.comfyui_server import ComfyServer, free_port, start_server
from tests.helpers.paths import COMFYUI_HOME, REPO

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
PACK_IGNORE = shutil.ignore_patterns(".venv", ".comfyui", ".pypath", ".git", "tests", "test-artifacts",
                                     "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache")
"""What a clone would not hold. ``.pypath`` (a worktree's import shim, a symlink back to the repository) would
make copytree recurse into the copy forever."""


def start_copied_pack_server(base: Path, models: Path) -> ComfyServer:
    """ComfyUI on a free loopback port with ``base`` as its base directory, the pack copied into its custom_nodes
    and ``models`` linked as its models folder. Fails the test, with ComfyUI's log, if the pack did not load."""
    shutil.copytree(REPO, base / "custom_nodes" / "sketch_rag", ignore=PACK_IGNORE)
    for folder in ("input", "output", "user", "temp"):
        (base / folder).mkdir()
    (base / "models").symlink_to(models, target_is_directory=True)
    server = start_server(COMFYUI_HOME / "ComfyUI", port=free_port(), cpu=True, log_path=base / "comfyui.log",
                          extra_args=("--base-directory", str(base), "--database-url", "sqlite:///:memory:"),
                          env={"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
    if "IMPORT FAILED" in server.log_text():
        server.stop()
        pytest.fail(f"ComfyUI could not load the pack:\n{server.log_text()[-3000:]}")
    return server


def launch_chromium(playwright: Any, profile: Path) -> Any:
    """A persistent headless chromium context with its own profile folder, 1600×1000."""
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed: apt-get install -y chromium")
    ARTIFACTS.mkdir(exist_ok=True)
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
        viewport={"width": 1600, "height": 1000})
