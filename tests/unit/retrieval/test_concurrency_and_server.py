"""Two writer processes on one library, and the same index on a real Chroma server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sketch_rag.errors import LibraryError
from sketch_rag.retrieval.folder import LibraryRoot
from sketch_rag.retrieval.index import EF_SEARCH, ChromaIndex
from sketch_rag.retrieval.library import open_library
from sketch_rag.retrieval.query import StyleQuery
from tests.helpers import geometry
from tests.helpers.geometry import COLOURS, GeometryEmbedder

HELPER = Path(geometry.__file__)
CHROMA = Path(sys.executable).with_name("chroma")


@pytest.mark.slow
def test_two_processes_adding_at_once_lose_nothing(tmp_path: Path) -> None:
    folder, store = tmp_path / "styles", tmp_path / "store"
    folder.mkdir()
    n = 12
    writers = [
        subprocess.Popen([sys.executable, str(HELPER), str(store), str(folder), prefix, str(n)])
        for prefix in ("alpha", "beta")
    ]
    assert [w.wait(timeout=240) for w in writers] == [0, 0]
    library, report = open_library([LibraryRoot(folder, "")], GeometryEmbedder(), store)
    assert report.total == 2 * n and not report.added and not report.rebuilt
    records = library.state.records()
    everything = {i: library.cache.get_many(library.stores.cache_key, [r.sha256])[r.sha256] for i, r in records.items()}
    assert library.index.self_test(everything), "a vector written by one of the processes cannot be found"
    assert library.stores.verify(records)


@pytest.mark.slow
def test_processes_opening_a_new_store_at_once_all_succeed(colour_folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    start_at = str(time.time() + 6)  # after every process has imported everything: all open at once
    openers = [
        subprocess.Popen([sys.executable, str(HELPER), str(store), str(colour_folder), "opener", "0", start_at],
                         stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [w.communicate(timeout=240)[1] for w in openers]
    assert [w.returncode for w in openers] == [0] * 4, [err[-2000:] for err in errors]
    library, report = open_library([LibraryRoot(colour_folder, "")], GeometryEmbedder(), store)
    assert report.total == len(COLOURS) and not report.added
    assert [m.item_id for m in library.query(StyleQuery(text="red", k=1))] == ["red.png"]


def test_index_made_with_an_older_search_breadth_is_brought_up_to_date(tmp_path: Path) -> None:
    import chromadb
    from chromadb.config import Settings

    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"), settings=Settings(anonymized_telemetry=False))
    client.create_collection(
        "styles-old", embedding_function=None, configuration={"hnsw": {"space": "cosine", "ef_search": 100}},
        metadata={"model_key": "geometry@1", "dim": 4},
    )
    index = ChromaIndex(tmp_path / "chroma", "styles-old", "geometry@1", 4).open()
    assert index.collection.configuration_json["hnsw"]["ef_search"] == EF_SEARCH


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def chroma_server(tmp_path: Path):
    port = _free_port()
    log = (tmp_path / "chroma.log").open("wb")
    server = subprocess.Popen(
        [str(CHROMA), "run", "--path", str(tmp_path / "server_db"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "chroma.log").read_text()  # exits 0 when the port is taken
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_library_on_a_chroma_server(colour_folder: Path, tmp_path: Path, chroma_server: str) -> None:
    library, report = open_library(
        [LibraryRoot(colour_folder, "")], GeometryEmbedder(), tmp_path / "local", chroma_url=chroma_server
    )
    assert report.total == len(COLOURS) and not (tmp_path / "local" / "chroma").exists()
    assert [m.item_id for m in library.query(StyleQuery(text="red", k=2))] == ["red.png", "orange.png"]
    (colour_folder / "green.png").unlink()
    library, report = open_library(
        [LibraryRoot(colour_folder, "")], GeometryEmbedder(), tmp_path / "local", chroma_url=chroma_server
    )
    assert report.removed == ["green.png"] and library.index.count() == len(COLOURS) - 1


def test_unreachable_chroma_server_is_a_clear_error(colour_folder: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(LibraryError, match="Cannot reach the Chroma server"):
        open_library([LibraryRoot(colour_folder, "")], GeometryEmbedder(), tmp_path / "local", chroma_url=url)
