"""What the Comfy Registry ships: the archive ``comfy node pack`` builds (``tools/registry_archive.py`` reads git and
``.comfyignore`` the same way), loaded by ComfyUI's own custom-node loader from that archive alone, and the
``[tool.comfy]`` metadata as ComfyUI's own ``comfy_config`` parser reads it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
COMFYUI_DIR = REPO / ".comfyui" / "ComfyUI"
_spec = importlib.util.spec_from_file_location("registry_archive", REPO / "tools" / "registry_archive.py")
assert _spec and _spec.loader
registry_archive = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(registry_archive)

NODE_IDS = sorted(json.loads((REPO / "tests" / "server" / "snapshots" / "node_schemas.json").read_text()))


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The archive, unpacked into a custom_nodes folder under the name ComfyUI-Manager gives a Registry install."""
    where = tmp_path_factory.mktemp("registry")
    archive = where / "node.zip"
    registry_archive.write_archive(archive)
    pack = where / "custom_nodes" / "sketch-rag"
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(pack)
    return pack


def test_the_archive_leaves_out_everything_comfyui_does_not_load() -> None:
    files = registry_archive.archive_files()
    tops = {PurePosixPath(f).parts[0] for f in files}
    assert not tops & {"tests", "bench", "tools", ".ci", "cli", "tiny_models", "dev.sh", "constraints.txt"}, tops
    for needed in ("__init__.py", "pyproject.toml", "requirements.txt", "LICENSE", "CHANGELOG.md",
                   "nodes/extension.py", "web/js/style_library_tab.js", "workflows/sketch_to_render.json",
                   "workflows/api/sketch_to_render.json", "style_library/library.json",
                   "rendering/configs/sd15/unet/config.json"):
        assert needed in files, needed


def test_ignore_patterns_follow_comfy_clis_reading(tmp_path: Path) -> None:
    (tmp_path / ".comfyignore").write_text("# a comment\n\n/tests/\n*.log\n", encoding="utf-8")
    for name in ("tests/a.py", "nodes/tests/b.py", "keep.py", "x/debug.log"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("", encoding="utf-8")
    # Not a git checkout: every file is a candidate, as in comfy-cli; only the root tests/ folder is left out.
    assert sorted(registry_archive.archive_files(tmp_path)) == [".comfyignore", "keep.py", "nodes/tests/b.py"]


@pytest.mark.node
def test_comfyui_loads_the_pack_and_registers_every_node_from_the_archive_alone(unpacked: Path) -> None:
    assert (COMFYUI_DIR / "main.py").is_file(), f"no ComfyUI in {COMFYUI_DIR}; run ./dev.sh setup"
    code = f"""
import asyncio, sys
sys.path.insert(0, {str(COMFYUI_DIR)!r})  # a subprocess of its own: ComfyUI first, as main.py has it
import utils.install_util  # as in main.py, ComfyUI's utils package before comfy/ (with a utils.py) joins sys.path
from comfy.cli_args import args
args.cpu = True
from aiohttp import web
import server
server.PromptServer.instance = type("Routes", (), {{"routes": web.RouteTableDef()}})()  # the table the pack adds to
import nodes
assert asyncio.run(nodes.load_custom_node({str(unpacked)!r})), "ComfyUI's loader refused the pack"
ours = sorted(k for k in nodes.NODE_CLASS_MAPPINGS if k.startswith("SketchRAG"))
for node_id in ours:
    nodes.NODE_CLASS_MAPPINGS[node_id].GET_SCHEMA()
pack_modules = {{name: getattr(m, "__file__", None) for name, m in sys.modules.items()
                if name.split(".")[0] in ({str(unpacked)!r}.replace(".", "_x_"), "sketch_rag")}}
assert "sketch_rag" not in pack_modules, "the installed sketch_rag package was imported instead of the archive"
outside = [f for f in pack_modules.values() if f and not f.startswith({str(unpacked)!r})]
assert not outside, outside
routes = [r.path for r in server.PromptServer.instance.routes]
print(ours, len(routes))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=unpacked.parent, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    registered = result.stdout.strip().splitlines()[-1]
    assert registered == f"{NODE_IDS} 7", registered


@pytest.mark.node
def test_comfyuis_parser_reads_the_registry_metadata(unpacked: Path) -> None:
    assert (COMFYUI_DIR / "comfy_config").is_dir(), f"no ComfyUI in {COMFYUI_DIR}; run ./dev.sh setup"
    code = f"""
import json, sys
sys.path.insert(0, {str(COMFYUI_DIR)!r})  # a subprocess of its own: ComfyUI first, as main.py has it
from comfy_config import config_parser
config = config_parser.extract_node_configuration({str(unpacked)!r})
print(json.dumps({{"os": config.project.supported_os, "gpu": config.project.supported_accelerators,
                  "comfyui": config.project.supported_comfyui_version, "icon": config.tool_comfy.icon,
                  "publisher": config.tool_comfy.publisher_id, "version": config.project.version}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    meta = json.loads(result.stdout.strip().splitlines()[-1])
    assert meta["os"] == ["OS Independent"] and meta["gpu"] == ["GPU :: NVIDIA CUDA"]
    assert meta["comfyui"].startswith(">=0.3.75,<") and meta["publisher"] == "sketch-rag"
    icon = unpacked / urlsplit(meta["icon"]).path.split("/main/", 1)[1]
    with Image.open(icon) as image:
        assert image.format == "PNG" and image.width == image.height <= 400
    assert f"## [{meta['version']}]" in (unpacked / "CHANGELOG.md").read_text(encoding="utf-8")
