"""The trust boundary through a real ComfyUI: what a ``POST /prompt`` caller can make the pack read and write.

Every refused prompt must end in an execution error that names the input and the fix, write
nothing outside ComfyUI's folders, and leave the server working; folders and servers listed in
``user/sketch_rag/config.json`` (read at run time, no restart) work.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sketch_rag.cli.comfyui_client import ComfyClient, JobFailed

pytestmark = pytest.mark.comfy

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


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and mtime: a write anywhere in it changes this."""
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}


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


def still_works(comfy: ComfyClient) -> None:
    entry = comfy.wait(comfy.queue_prompt(retrieve()), timeout=240)
    assert entry["outputs"]["2"]["text"], "the server no longer retrieves from the default library"


def test_library_folders_outside_comfyui_are_refused_and_nothing_is_written(
    comfy: ComfyClient, comfy_base_dir: Path, outside: Path, config: Path
) -> None:
    base = comfy_base_dir.resolve()
    linked = base / "input" / "linked-outside"
    linked.symlink_to(outside / "styles", target_is_directory=True)
    libraries = base / "user" / "sketch_rag" / "libraries"
    dot_dot = os.path.relpath(outside / "styles", libraries)  # a relative name climbing out of the libraries
    before = snapshot(outside)
    try:
        for folder, shown in ((str(outside / "styles"), str(outside / "styles")),
                              (dot_dot, str(outside / "styles")),
                              (f"{base}/input/../../{outside.name}/styles", str(outside / "styles")),
                              (str(linked), str(outside / "styles"))):
            message = refused(comfy, retrieve(library_folder=folder), "library_folder", "resolves to " + shown,
                              "allowed_folders", str(config))
            assert "outside the folders" in message
    finally:
        linked.unlink()
    assert snapshot(outside) == before
    still_works(comfy)


def test_a_library_at_the_filesystem_root_is_refused_before_any_walk(comfy: ComfyClient, config: Path) -> None:
    start = time.monotonic()
    refused(comfy, retrieve(library_folder="/"), "resolves to /,", "allowed_folders")
    assert time.monotonic() - start < 30, "the root was walked (fingerprint or sync) before being refused"
    refused(comfy, retrieve(library_folder="styles\x00/etc"), "library_folder", "NUL")
    refused(comfy, retrieve(library_folder="x" * 300), "library_folder", "longer than file systems allow")
    refused(comfy, retrieve(store="http://user:pw@127.0.0.1:8000/api"), "store", "only scheme://host:port")


def test_a_store_outside_and_unlisted_store_servers_are_refused(
    comfy: ComfyClient, outside: Path, config: Path
) -> None:
    before = snapshot(outside)
    refused(comfy, retrieve(store=str(outside / "store")), "store", str(outside / "store"), '"writable": true')
    start = time.monotonic()
    refused(comfy, retrieve(store="http://10.255.255.1:8000"), "http://10.255.255.1:8000", "allowed_store_urls")
    assert time.monotonic() - start < 30, "an unlisted host was contacted"
    assert snapshot(outside) == before
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    write_config(config, allowed_store_urls=[closed])
    start = time.monotonic()
    refused(comfy, retrieve(store=closed), "does not answer", closed)
    assert time.monotonic() - start < 30
    still_works(comfy)


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


def test_add_to_style_library_turns_bad_names_into_safe_files_inside_the_library(
    comfy: ComfyClient, comfy_base_dir: Path, outside: Path, example_sketches: list[Path]
) -> None:
    folder = comfy_base_dir / "user" / "sketch_rag" / "libraries" / "access-names"
    image = comfy.upload_image(example_sketches[0].read_bytes(), example_sketches[0].name)
    before_outside, before_base = snapshot(outside), set(snapshot(comfy_base_dir.parent))
    names = {"../../../../escape": "escape.png", "/etc/passwd": "etc_passwd.png", "CON": "con_style.png",
             "NUL": "nul_style.png", "COM1": "com1_style.png", "..": "style.png", " .hidden": "hidden.png",
             "library": "library_style.png", "x" * 300: "x" * 96 + ".png"}
    for name, file_name in names.items():
        comfy.wait(comfy.queue_prompt(add("access-names", image, name)), timeout=240)
        assert (folder / file_name).is_file() and (folder / file_name).with_suffix(".json").is_file(), name
    refused(comfy, add("access-names", image, "evil\x00name"), "control characters")
    assert not (folder / "library.json").exists()  # the style named "library" did not write a manifest
    written = sorted(set(snapshot(comfy_base_dir.parent)) - before_base)
    assert written and all(Path(p).is_relative_to(comfy_base_dir) for p in written), written
    assert snapshot(outside) == before_outside
    still_works(comfy)
