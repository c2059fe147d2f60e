"""The trust boundary through a real ComfyUI: folders listed in ``user/sketch_rag/config.json`` are read at run
time (no restart), and a cached library never outlives its permission.

What the access policy refuses, and the file names an added style gets, are checked in-process by the node
unit tier (``tests/nodes/test_retrieval_nodes.py``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sketch_rag.cli.comfyui_client import ComfyClient, JobFailed

LOADER, RETRIEVER, ADD = "SketchRAGStyleLibraryLoader", "SketchRAGClipStyleRetriever", "SketchRAGAddToStyleLibrary"


def retrieve(library_folder: str = "", store: str = "", prompt: str = "a red poster") -> dict[str, Any]:
    return {
        "1": {"class_type": LOADER, "inputs": {"library_folder": library_folder, "embedding_model": "tiny-random-clip",
                                               "store": store, "allow_download": False, "rebuild_index": False}},
        "2": {"class_type": RETRIEVER, "inputs": {"library": ["1", 0], "prompt": prompt, "k": 1, "tag_filter": "",
                                                  "image_weight": 0.5, "resolution": 64, "blend_temperature": 0.01}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }


def add(library_folder: str, image: str, name: str) -> dict[str, Any]:
    return {
        "1": {"class_type": LOADER, "inputs": {"library_folder": library_folder, "embedding_model": "tiny-random-clip",
                                               "store": "", "allow_download": False, "rebuild_index": False}},
        "4": {"class_type": "LoadImage", "inputs": {"image": image}},
        "5": {"class_type": ADD, "inputs": {"library": ["1", 0], "image": ["4", 0], "name": name,
                                            "tags": "access-test"}},
    }


def styles(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        Image.fromarray(np.full((16, 16, 3), colour, dtype=np.uint8)).save(folder / f"{name}.png")
    return folder


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder outside the server's base directory, holding a library nobody allowed."""
    folder = tmp_path_factory.mktemp("outside").resolve()
    styles(folder / "styles")
    return folder


@pytest.fixture
def config(comfy_base_dir: Path) -> Iterator[Path]:
    """The server's config file path; removed after the test so the next one starts from the defaults."""
    path = comfy_base_dir / "user" / "sketch_rag" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    yield path
    path.unlink(missing_ok=True)


def write_config(path: Path, **content: Any) -> None:
    path.write_text(json.dumps(content), encoding="utf-8")
    now = time.time_ns()
    os.utime(path, ns=(now, now + 10**9))  # a rewrite within one mtime tick is still a change


def refused(comfy: ComfyClient, graph: dict[str, Any], *fragments: str, timeout: float = 120) -> str:
    with pytest.raises(JobFailed) as caught:
        comfy.wait(comfy.queue_prompt(graph), timeout=timeout)
    for fragment in fragments:
        assert fragment in caught.value.message, caught.value.message
    return caught.value.message


def test_folders_listed_in_the_config_file_work_without_a_restart(
    comfy: ComfyClient, comfy_base_dir: Path, outside: Path, config: Path, example_sketches: list[Path]
) -> None:
    graph = retrieve(library_folder=str(outside / "styles"), store=str(outside / "store"))
    refused(comfy, graph, "library_folder")
    write_config(config, allowed_folders=[{"path": str(outside), "writable": True}])
    entry = comfy.wait(comfy.queue_prompt(graph), timeout=240)
    assert entry["outputs"]["2"]["text"][0].split("  score")[0] in {"red", "blue"}
    assert (outside / "store").is_dir()

    image = comfy.upload_image(example_sketches[0].read_bytes(), example_sketches[0].name)
    comfy.wait(comfy.queue_prompt(add(str(outside / "styles"), image, "Listed folder")), timeout=240)
    assert (outside / "styles" / "listed_folder.png").is_file()
    comfy.wait(comfy.queue_prompt(graph), timeout=240)  # synced with the new style, and cached so

    write_config(config, allowed_folders=[str(outside)])  # now read-only: reading works, writing is refused
    refused(comfy, graph, "store", "listed read-only")  # its store is no longer writable: not served from cache
    read_graph = retrieve(library_folder=str(outside / "styles"), prompt="blue")
    assert comfy.wait(comfy.queue_prompt(read_graph), timeout=240)["outputs"]["2"]["text"]
    refused(comfy, add(str(outside / "styles"), image, "Refused now"), "read-only")
    assert not any(p.name.startswith("refused_now") for p in (outside / "styles").iterdir())

    write_config(config)  # the entry removed: the same prompt that just worked is refused, not served from cache
    refused(comfy, read_graph, "library_folder", "allowed_folders")
