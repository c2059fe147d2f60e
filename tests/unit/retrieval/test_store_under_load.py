"""The store and library under concurrent use in one process: what a shared ComfyUI does to them.

A stalled store server is an error naming it within the time limit; a client reopened by one
thread never fails another thread's call; a file moved while the folder is scanned is simply
gone; a list that finds nothing changed does not rescan; an add answers with what it added
while other threads read the library.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sketch_rag.errors import AccessDeniedError, StoreUnavailableError, StyleNotFoundError
from sketch_rag.retrieval import chroma_http, folder
from sketch_rag.retrieval.embedder import ClipEmbedder
from sketch_rag.retrieval.folder import LibraryRoot, iter_image_files
from sketch_rag.retrieval.index import ChromaIndex
from sketch_rag.retrieval.library import StyleLibrary, open_library
from sketch_rag.retrieval.library_edits import read_style
from sketch_rag.retrieval.query import StyleQuery
from tests.helpers.geometry import COLOURS, GeometryEmbedder, solid

LIMIT_S = 1.0
"""The store time limit the tests run with (the shipped one is 10 s)."""


@pytest.fixture
def short_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chroma_http, "STORE_TIMEOUT_S", LIMIT_S)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def stalling_chroma() -> Iterator[str]:
    """An HTTP server that answers what Chroma's client asks when it connects, then stalls on everything else."""
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: object) -> None:
            pass

        def _answer(self) -> None:
            if self.path.endswith("/tenants/default_tenant"):
                body = {"name": "default_tenant"}
            elif self.path.endswith("/databases/default_database"):
                body = {"id": "00000000-0000-0000-0000-000000000001", "name": "default_database",
                        "tenant": "default_tenant"}
            else:
                release.wait(30)  # bounded, so the server thread ends even if a test fails
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    release.set()
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("which", ["silent_server", "stalling_chroma"])
def test_a_store_server_that_never_answers_is_an_error_naming_it_within_the_limit(
    short_limit: None, which: str, request: pytest.FixtureRequest
) -> None:
    import chromadb.api.fastapi  # noqa: F401 - imported before the clock starts: the limit is on the server

    url = request.getfixturevalue(which)
    index = ChromaIndex(url, "styles-stalled", "model@0", 4)
    start = time.monotonic()
    with pytest.raises(StoreUnavailableError) as caught:
        index.open()
    assert time.monotonic() - start < LIMIT_S * 4
    assert url in str(caught.value) and "did not answer" in str(caught.value)


def test_a_refresh_by_one_thread_never_fails_another_threads_calls(tmp_path: Path) -> None:
    index = ChromaIndex(tmp_path / "chroma", "styles-gate", "model@0", 8).open()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    index.put([f"s{i}" for i in range(50)], vectors, [{"n": i} for i in range(50)])
    errors: list[BaseException] = []
    deadline = time.monotonic() + 4

    def query() -> None:
        while time.monotonic() < deadline:
            try:
                assert index.query(vectors[3], 1)[0].item_id == "s3"
                assert index.count() == 50
            except BaseException as exc:  # noqa: BLE001 - collected and reported by the test
                errors.append(exc)
                return

    def refresh() -> None:
        while time.monotonic() < deadline:
            try:
                index.refresh()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                return

    threads = [threading.Thread(target=query) for _ in range(3)] + [threading.Thread(target=refresh)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors[:3]


def test_a_file_moved_between_listing_and_stat_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "styles"
    for name in ("keep", "gone"):
        solid(root / f"{name}.png", (0.1, 0.2, 0.3))
    real_scandir = os.scandir

    def scandir_then_move(path: str) -> list[os.DirEntry[str]]:
        entries = list(real_scandir(path))
        (root / "gone.png").unlink(missing_ok=True)  # a trash running between the listing and the stat
        return entries

    monkeypatch.setattr(folder.os, "scandir", scandir_then_move)
    assert [i.relpath for i in iter_image_files(LibraryRoot(root, ""))] == ["keep.png"]


@pytest.fixture
def library(colour_folder: Path, tmp_path: Path) -> StyleLibrary:
    library, _ = open_library([LibraryRoot(colour_folder, "")], GeometryEmbedder(), tmp_path / "store")
    return library


def test_sync_if_changed_rescans_only_after_a_folder_change(library: StyleLibrary, colour_folder: Path) -> None:
    assert library.sync_if_changed() is None, "nothing changed since the open's sync"
    solid(colour_folder / "sub" / "teal.png", (0.0, 0.5, 0.5))
    report = library.sync_if_changed()
    assert report is not None and report.added == ["sub/teal.png"]
    assert library.sync_if_changed() is None
    shutil.move(colour_folder / "sub" / "teal.png", colour_folder / "moved.png")
    report = library.sync_if_changed()
    assert report is not None and report.renamed == [("sub/teal.png", "moved.png")]
    assert library.sync_if_changed(max_age_s=0.0) is not None, "an old check rescans anyway (in-place rewrites)"


def test_adds_answer_with_what_they_added_while_other_threads_read(library: StyleLibrary) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            try:
                library.entries()
                matches = library.query(StyleQuery(text="red", k=3))
                assert all(m.record is not None and m.record.item_id == m.item_id for m in matches)
            except BaseException as exc:  # noqa: BLE001 - collected and reported by the test
                errors.append(exc)
                return

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        for n in range(8):
            colour = np.full((16, 16, 3), (n + 1) / 10, dtype=np.float32)
            added = library.add(colour, f"grey {n}", ["grey"])
            assert added.record is not None and added.record.meta.name == f"grey {n}"
    finally:
        stop.set()
        for reader in readers:
            reader.join(30)
    assert not errors, errors[:3]
    assert len(library.entries()) == len(COLOURS) + 8


def test_clip_used_from_many_threads_gives_the_vectors_it_gives_alone(tiny_clip: ClipEmbedder) -> None:
    images = [Image.fromarray(np.full((32, 32, 3), 40 * n, dtype=np.uint8)) for n in range(4)]
    texts = [f"style number {n}" for n in range(4)]
    alone_images, alone_texts = tiny_clip.embed_images(images), tiny_clip.embed_texts(texts)
    results: list[tuple[np.ndarray, np.ndarray]] = []
    errors: list[BaseException] = []

    def use() -> None:
        try:
            for n in range(3):
                results.append((tiny_clip.embed_images(images), tiny_clip.embed_texts(texts)))
                if n == 0:
                    tiny_clip.release()  # ComfyUI's "free memory" meanwhile: the next call loads the weights again
        except BaseException as exc:  # noqa: BLE001 - collected and reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=use) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[:3]
    assert len(results) == 9
    for got_images, got_texts in results:
        np.testing.assert_allclose(got_images, alone_images, atol=1e-5)
        np.testing.assert_allclose(got_texts, alone_texts, atol=1e-5)


def test_style_files_are_read_without_following_any_link(library: StyleLibrary, colour_folder: Path,
                                                         tmp_path: Path) -> None:
    solid(colour_folder / "sub" / "deep.png", (0.2, 0.4, 0.6))
    library.sync()
    records = library.synced_records()
    assert read_style(library, records["sub/deep.png"]).data == (colour_folder / "sub" / "deep.png").read_bytes()
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(colour_folder / "sub", elsewhere)
    # Swapped after the sync (and after any check a caller made): a file link, a folder link, a FIFO.
    (colour_folder / "red.png").unlink()
    (colour_folder / "red.png").symlink_to(colour_folder / "green.png")  # even a link inside the folder
    shutil.rmtree(colour_folder / "sub")
    (colour_folder / "sub").symlink_to(elsewhere, target_is_directory=True)
    (colour_folder / "blue.png").unlink()
    os.mkfifo(colour_folder / "blue.png")
    for item_id in ("red.png", "sub/deep.png", "blue.png"):
        with pytest.raises(AccessDeniedError):
            read_style(library, records[item_id])
    (colour_folder / "green.png").unlink()
    with pytest.raises(StyleNotFoundError):
        read_style(library, records["green.png"])
