"""Every bad input the Style Library routes can get, through a real ComfyUI: refused, named, and harmless.

Traversal in ids and in the library parameter, links out of a library, the read-only shipped
styles, uploads that are empty, not images, damaged, or 200 MB, names with ``/`` and ``..``,
malformed JSON, and two clients adding at once. After each, nothing outside the library changed
and the server still answers.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from sketch_rag.cli.comfyui_server import ComfyServer
from sketch_rag.retrieval.library import SHIPPED_LIBRARY
from tests.helpers.folders import outside_folder, snapshot
from tests.helpers.images import png
from tests.helpers.library_tab import PREFIX, Tab, own_library

MB = 1024 * 1024


def digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            sha.update(path.name.encode() + path.read_bytes())
    return sha.hexdigest()


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return outside_folder(tmp_path_factory, {"secret": (1, 2, 3)})


@pytest.fixture
def library(comfy_base_dir: Path) -> Path:
    return own_library(comfy_base_dir, "refusals", {"red": (220, 20, 20), "blue": (20, 20, 220)})


@pytest.fixture
def tab(comfy_server: ComfyServer, library: Path) -> Iterator[Tab]:
    tab = Tab(comfy_server.url, library="refusals")
    assert tab.styles()["count"] == 2
    yield tab
    assert tab.get("styles").status_code == 200, "the server must keep answering after a refused request"


def error_of(response: requests.Response, status: int, *fragments: str) -> str:
    assert response.status_code == status, (response.status_code, response.text[:500])
    message = response.json()["error"]
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("item_id", [
    "../../../../../../etc/passwd", "/etc/passwd", "red.png/../../../../etc/passwd", "..\\..\\red.png",
    "blue.png\x00.png", "./red.png", "red.png/", "RED.PNG",
])
def test_ids_that_are_not_styles_are_404_on_every_route(tab: Tab, library: Path, item_id: str) -> None:
    before = snapshot(library)
    for response in (tab.get("thumbnail", id=item_id), tab.get("image", id=item_id), tab.remove(item_id),
                     tab.edit(id=item_id, name="x")):
        error_of(response, 404, "names no style")
    assert snapshot(library) == before


def test_url_encoded_traversal_in_the_id_is_just_another_unknown_id(tab: Tab) -> None:
    for route in ("thumbnail", "image"):
        for raw in ("%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd", "%252e%252e%252fetc%252fpasswd",
                    "..%2f..%2f..%2fcomfyui.log", "%2fetc%2fpasswd"):
            response = requests.get(f"{tab.url}{PREFIX}/{route}?model={tab.params['model']}&library=refusals"
                                    f"&id={raw}", timeout=60)
            error_of(response, 404, "names no style")
            assert b"root:" not in response.content


def test_library_folders_outside_comfyui_are_refused_on_every_route(
    comfy_server: ComfyServer, comfy_base_dir: Path, outside: Path
) -> None:
    base = comfy_base_dir.resolve()
    linked = base / "input" / "linked-outside-routes"
    linked.symlink_to(outside / "styles", target_is_directory=True)
    libraries = base / "user" / "sketch_rag" / "libraries"
    before = snapshot(outside)
    try:
        for folder in (str(outside / "styles"), os.path.relpath(outside / "styles", libraries),
                       f"{base}/input/../../{outside.name}/styles", str(linked), "/"):
            tab = Tab(comfy_server.url, library=folder)
            for response in (tab.get("styles"), tab.get("thumbnail", id="secret.png"),
                             tab.get("image", id="secret.png"), tab.search(query="secret"),
                             tab.add([("x.png", png((9, 9, 9)))]), tab.edit(id="secret.png", name="mine"),
                             tab.remove("secret.png")):
                error_of(response, 403, "library_folder", "outside the folders", "allowed_folders")
        climb = "%2e%2e%2f" * 8
        encoded = requests.get(f"{comfy_server.url}{PREFIX}/styles?model=tiny-random-clip&library={climb}etc",
                               timeout=60)
        error_of(encoded, 403, "outside the folders")
    finally:
        linked.unlink()
    assert snapshot(outside) == before


def test_a_store_outside_comfyui_is_refused(comfy_server: ComfyServer, outside: Path) -> None:
    tab = Tab(comfy_server.url, store=str(outside / "store"))
    error_of(tab.get("styles"), 403, "store", "outside the folders")
    assert not (outside / "store").exists()


def test_links_out_of_a_library_are_never_served(tab: Tab, library: Path, outside: Path) -> None:
    (library / "linked.png").symlink_to(outside / "styles" / "secret.png")
    assert "linked.png" not in {s["id"] for s in tab.styles()["styles"]}, "a link out of the folder is skipped"
    error_of(tab.get("image", id="linked.png"), 404)
    # A style swapped for a link after it was indexed: the route refuses to follow it.
    (library / "blue.png").unlink()
    (library / "blue.png").symlink_to(outside / "styles" / "secret.png")
    for response in (tab.get("image", id="blue.png"), tab.get("thumbnail", id="blue.png"), tab.remove("blue.png")):
        error_of(response, 403, "link")
    assert (outside / "styles" / "secret.png").read_bytes() == png((1, 2, 3))


def test_shipped_styles_cannot_be_edited_or_removed(comfy_server: ComfyServer) -> None:
    tab = Tab(comfy_server.url)
    before = digest(SHIPPED_LIBRARY)
    error_of(tab.edit(id="builtin/hokusai_great_wave.jpg", name="mine"), 403, "read-only")
    error_of(tab.remove("builtin/hokusai_great_wave.jpg"), 403, "read-only")
    assert digest(SHIPPED_LIBRARY) == before
    shipped_only = Tab(comfy_server.url, library=str(SHIPPED_LIBRARY))
    assert shipped_only.styles()["writable"] is False
    error_of(shipped_only.add([("new.png", png((5, 5, 5)))]), 403, "no writable folder")
    assert digest(SHIPPED_LIBRARY) == before


def bad_images() -> dict[str, tuple[bytes, str]]:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(buffer, format="ICO")
    ico = buffer.getvalue()
    wide = io.BytesIO()
    Image.new("L", (16_500, 1)).save(wide, format="PNG")
    return {
        "empty.png": (b"", "empty (0 bytes)"),
        "notes.png": (b"these are my notes, not a picture\n" * 10, "not an image format"),
        "truncated.png": (png((200, 10, 10), (64, 64))[:120], "damaged or truncated"),
        "icon.ico": (ico, "a style library takes"),
        "wide.png": (wide.getvalue(), "the limit is 16384 pixels a side"),
    }


@pytest.mark.parametrize("name", list(bad_images()))
def test_bad_uploads_are_refused_by_name_and_nothing_is_written(tab: Tab, library: Path, name: str) -> None:
    data, why = bad_images()[name]
    before = snapshot(library)
    message = error_of(tab.add([(name, data)]), 400, name, why)
    assert "upload_" not in message  # the staged copy's name means nothing to the user
    # One bad file in a batch refuses the batch: the good one is not added either.
    error_of(tab.add([("good.png", png((1, 200, 1))), (name, data)]), 400, name)
    assert snapshot(library) == before


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_200_mb_upload_is_refused_early_without_the_server_holding_it(
    comfy_server: ComfyServer, tab: Tab, library: Path, comfy_base_dir: Path
) -> None:
    before, rss = snapshot(library), rss_mb(comfy_server.process.pid)
    body = b"\0" * (200 * MB)
    start = time.perf_counter()
    sized = tab.add([("huge.png", body)])
    error_of(sized, 413, "at most", "--max-upload-size")
    assert time.perf_counter() - start < 60

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server must count as it reads
        boundary = b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"huge.png\"\r\n\r\n"
        yield boundary
        for _ in range(200):
            yield b"\0" * MB
        yield b"\r\n--x--\r\n"

    streamed = requests.post(f"{tab.url}{PREFIX}/styles", params=tab.params, data=chunks(), timeout=120,
                             headers={"Content-Type": "multipart/form-data; boundary=x"})
    error_of(streamed, 413, "over")
    assert rss_mb(comfy_server.process.pid) - rss < 100, "the server kept the refused upload in memory"
    assert snapshot(library) == before
    temp = comfy_base_dir / "temp"
    assert not [p for p in temp.rglob("*") if p.is_file() and "sketch_rag_upload" in str(p)], "staged upload left"


@pytest.fixture(scope="module")
def asking_tab(comfy_server: ComfyServer, comfy_base_dir: Path) -> Tab:
    """A tab on a library of its own that the refused requests below leave as it is (so it is made once)."""
    own_library(comfy_base_dir, "refusals-asked", {"red": (220, 20, 20), "blue": (20, 20, 220)})
    tab = Tab(comfy_server.url, library="refusals-asked")
    assert tab.styles()["count"] == 2
    return tab


Ask = Callable[[Tab], requests.Response]


def raw_search(**request: Any) -> Ask:
    return lambda tab: requests.post(f"{tab.url}{PREFIX}/search", params=tab.params, timeout=60, **request)


def search(**body: Any) -> Ask:
    return lambda tab: tab.search(**body)


def edit(**body: Any) -> Ask:
    return lambda tab: tab.edit(**body)


def get(route: str, **query: str) -> Ask:
    return lambda tab: tab.get(route, **query)


@pytest.mark.parametrize(("ask", "status", "why"), [
    pytest.param(raw_search(data=b"{not json"), 400, "not JSON", id="body-not-json"),
    pytest.param(raw_search(json=["a list"]), 400, "JSON object", id="body-a-list"),
    pytest.param(raw_search(data=b" " * (70 * 1024)), 413, "at most", id="body-70-kb"),
    pytest.param(search(query=""), 400, "search query", id="query-empty"),
    pytest.param(search(query=3), 400, "search query", id="query-a-number"),
    pytest.param(search(query="x" * 2001), 400, "2001 characters", id="query-2001-characters"),
    pytest.param(search(query="red", k=0), 400, "k is 0", id="k-0"),
    pytest.param(search(query="red", k=65), 400, "k is 65", id="k-65"),
    pytest.param(search(query="red", k="3"), 400, "k is '3'", id="k-a-string"),
    pytest.param(search(query="red", k=True), 400, "k is True", id="k-a-bool"),
    pytest.param(search(query="red", tags=[1]), 400, "must all be text", id="tags-not-text"),
    pytest.param(search(query="red", text_weight=2), 400, "text_weight is 2", id="text-weight-2"),
    pytest.param(search(query="red", tags=["nobody-has-this"]), 400, "tags in the library", id="tag-unknown"),
    pytest.param(edit(name="x"), 400, "The id is None", id="edit-without-id"),
    pytest.param(edit(id="red.png"), 400, "changes nothing", id="edit-without-change"),
    pytest.param(edit(id="red.png", name="two\nlines"), 400, "control characters", id="edit-name-two-lines"),
    pytest.param(get("thumbnail"), 400, "id parameter is missing", id="thumbnail-without-id"),
    pytest.param(get("styles", library="x" * 5000), 400, "shorter path", id="library-5000-characters"),
])
def test_json_routes_refuse_bad_bodies_and_parameters(asking_tab: Tab, ask: Ask, status: int, why: str) -> None:
    error_of(ask(asking_tab), status, why)
    assert asking_tab.get("styles").status_code == 200, "the server must keep answering after a refused request"


def test_multipart_uploads_refuse_missing_files_unknown_fields_and_other_content_types(tab: Tab) -> None:
    url = f"{tab.url}{PREFIX}/styles"
    error_of(requests.post(url, params=tab.params, data={"name": "x"}, timeout=60), 400, "multipart/form-data")
    error_of(requests.post(url, params=tab.params, files=[("name", (None, "x"))], timeout=60), 400, "no 'file'")
    error_of(requests.post(url, params=tab.params, files=[("file", ("a.png", png((1, 1, 1)))),
                                                           ("path", (None, "/etc"))], timeout=60), 400, "'path'")
    error_of(tab.add([("a.png", png((1, 1, 1)))], name="bad\x07name"), 400, "control characters")


def test_names_with_slashes_and_dots_become_safe_file_names_inside_the_library(
    tab: Tab, library: Path, comfy_base_dir: Path
) -> None:
    added = []
    for files, form in (([("a.png", png((10, 200, 10)))], {"name": "../../escape/evil"}),
                        ([("../../../evil_file.png", png((10, 10, 200)))], {}),
                        ([("C:\\Windows\\evil_win.png", png((200, 200, 10)))], {}),
                        ([("b.png", png((90, 90, 90)))], {"name": "/etc/passwd"}),
                        ([("c.png", png((30, 60, 90)))], {"name": ".."})):
        response = tab.add(files, **form)
        assert response.status_code == 200, response.text
        added += response.json()["added"]
    ids = [s["id"] for s in added]
    # (aiohttp reads a backslash in a quoted file name as an escape, so the Windows path arrives without them)
    assert [ids[0], ids[1], ids[3], ids[4]] == ["escape_evil.png", "evil_file.png", "etc_passwd.png", "style.png"]
    assert ids[2].endswith("evil_win.png") and "/" not in ids[2] and "\\" not in ids[2]
    assert [s["name"] for s in added][:2] == ["../../escape/evil", "evil file"]
    for item_id in ids:
        assert (library / item_id).is_file()
    strays = [p for p in comfy_base_dir.rglob("*evil*") if not p.resolve().is_relative_to(library.resolve())]
    assert strays == []


def test_two_clients_adding_at_once_lose_nothing(tab: Tab, library: Path) -> None:
    results: dict[int, requests.Response] = {}
    start = threading.Barrier(2)

    def client(n: int) -> None:
        files = [(f"c{n}_{i}.png", png((40 * i + 10, 100 + n * 50, 7))) for i in range(4)]
        start.wait()
        results[n] = tab.add(files, name="same name", tags=f"client{n}")

    threads = [threading.Thread(target=client, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    for response in results.values():
        assert response.status_code == 200, response.text
    ids = [s["id"] for r in results.values() for s in r.json()["added"]]
    assert len(ids) == len(set(ids)) == 8
    listed = {s["id"]: s for s in tab.styles()["styles"]}
    assert set(ids) <= set(listed) and len(listed) == 10
    on_disk = {p.name for p in library.glob("same_name*.png")}
    assert on_disk == set(ids)
    assert sorted(t for s in listed.values() for t in s["tags"]) == ["client0"] * 4 + ["client1"] * 4
