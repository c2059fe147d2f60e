"""The trust boundary through a real ComfyUI: folders listed in ``user/sketch_rag/config.json`` are read at run
time (no restart), and a cached library never outlives its permission.

What the access policy refuses, and the file names an added style gets, are checked in-process by the node
tier (``tests/node/test_retrieval_nodes.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sketch_rag.cli.comfyui_client import JobFailed
from sketch_rag.tiny_models.clip import TINY_CLIP_NAME
from tests.helpers.client import RecordingClient
from tests.helpers.configs import access_config, write_config
from tests.helpers.folders import outside_folder
from tests.helpers.graphs import ADD, LIBRARY_LOADER, Graph, Schemas, retrieval_graph


def add(schemas: Schemas, library_folder: str, image: str, name: str) -> Graph:
    """Style Library → Add to Style Library ← LoadImage(``image``)."""
    graph = Graph(schemas)
    library = graph.node(LIBRARY_LOADER, library_folder=library_folder, embedding_model=TINY_CLIP_NAME, store="")
    graph.node(ADD, library=library, image=graph.node("LoadImage", image=image), name=name, tags="access-test")
    return graph


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return outside_folder(tmp_path_factory)


@pytest.fixture
def config(comfy_base_dir: Path) -> Iterator[Path]:
    """The server's config file path; removed after the test so the next one starts from the defaults."""
    with access_config(comfy_base_dir / "user") as path:
        yield path


def refused(comfy: RecordingClient, graph: Graph | dict[str, Any], *fragments: str) -> str:
    with pytest.raises(JobFailed) as caught:
        comfy.run_recorded(graph, timeout=120)
    for fragment in fragments:
        assert fragment in caught.value.message, caught.value.message
    return caught.value.message


def test_folders_listed_in_the_config_file_work_without_a_restart(
    comfy: RecordingClient, schemas: Schemas, outside: Path, config: Path, example_sketches: list[Path]
) -> None:
    found = retrieval_graph(schemas, str(outside / "styles"), store=str(outside / "store"))
    refused(comfy, found.graph, "library_folder")
    write_config(config, {"allowed_folders": [{"path": str(outside), "writable": True}]})
    run = comfy.run_recorded(found.graph, timeout=240)
    assert run.outputs(found.retriever)["text"][0].split("  score")[0] in {"red", "blue"}
    assert (outside / "store").is_dir()

    image = comfy.upload_image(example_sketches[0].read_bytes(), example_sketches[0].name)
    comfy.run_recorded(add(schemas, str(outside / "styles"), image, "Listed folder"), timeout=240)
    assert (outside / "styles" / "listed_folder.png").is_file()
    comfy.run_recorded(found.graph, timeout=240)  # synced with the new style, and cached so

    write_config(config, {"allowed_folders": [str(outside)]})  # now read-only: reading works, writing is refused
    refused(comfy, found.graph, "store", "listed read-only")  # its store is no longer writable: not served from cache
    reading = retrieval_graph(schemas, str(outside / "styles"), prompt="blue")
    assert comfy.run_recorded(reading.graph, timeout=240).outputs(reading.retriever)["text"]
    refused(comfy, add(schemas, str(outside / "styles"), image, "Refused now"), "read-only")
    assert not any(p.name.startswith("refused_now") for p in (outside / "styles").iterdir())

    write_config(config, {})  # the entry removed: the same prompt that just worked is refused, not served from cache
    refused(comfy, reading.graph, "library_folder", "allowed_folders")
