"""The Style Library routes on a ComfyUI shared by a team: write scope, concurrent uploads, cut-off clients.

Writes go only to library folders (never input/ or output/), all uploads together stage at most a
fixed number of bytes (the one over is told to come back: 503 + Retry-After), a client that hangs up
mid-upload leaves nothing staged and no error in the log, and answers carry no server paths.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

from sketch_rag.cli.comfyui_server import ComfyServer
from tests.helpers.images import png
from tests.helpers.library_tab import PREFIX, Tab, own_library

MB = 1024 * 1024
UPLOAD_LIMIT = 100 * MB
"""ComfyUI's default --max-upload-size, which the test server runs with."""


def staged(base: Path) -> list[Path]:
    return [p for p in (base / "temp").glob("sketch_rag_upload_*")]


def wait_until_unstaged(base: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while staged(base) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not staged(base), "a staged upload was left in the temp folder"


def open_upload(url: str, tab: Tab, size: int, filename: str = "big.png") -> socket.socket:
    """A raw multipart POST announcing ``size`` file bytes, of which nothing is sent yet."""
    parts = urlsplit(url)
    head = (b'--x\r\nContent-Disposition: form-data; name="file"; filename="' + filename.encode() +
            b'"\r\n\r\n')
    tail = b"\r\n--x--\r\n"
    query = "&".join(f"{k}={v}" for k, v in tab.params.items())
    conn = socket.create_connection((parts.hostname, parts.port), timeout=60)
    conn.sendall(
        f"POST {PREFIX}/styles?{query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {len(head) + size + len(tail)}\r\n"
        "Connection: close\r\n\r\n".encode() + head
    )
    return conn


def answer_of(conn: socket.socket) -> bytes:
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


def test_writes_go_only_to_library_folders_but_other_comfyui_folders_stay_readable(
    comfy_server: ComfyServer, comfy_base_dir: Path
) -> None:
    inputs = comfy_base_dir / "input" / "team_refs"
    inputs.mkdir(parents=True, exist_ok=True)
    (inputs / "ref.png").write_bytes(png((200, 100, 50)))
    tab = Tab(comfy_server.url, library=str(inputs))
    listing = tab.styles()
    assert [s["id"] for s in listing["styles"]] == ["ref.png"] and listing["writable"] is False
    assert tab.fetch(listing["styles"][0]["image"]).content == png((200, 100, 50))
    for refused in (tab.add([("new.png", png((1, 2, 3)))]), tab.edit(id="ref.png", tags=["x"]),
                    tab.remove("ref.png")):
        assert refused.status_code == 403, refused.text
        assert "style library folder" in refused.json()["error"]
        assert str(comfy_base_dir) not in refused.text, "an answer names a server path"
    assert sorted(p.name for p in inputs.iterdir()) == ["ref.png"]
    assert (inputs / "ref.png").read_bytes() == png((200, 100, 50))


def test_uploads_over_the_shared_staging_cap_are_told_to_retry_and_nothing_stays_staged(
    comfy_server: ComfyServer, comfy_base_dir: Path
) -> None:
    own_library(comfy_base_dir, "staging", {"red": (220, 20, 20)})
    tab = Tab(comfy_server.url, library="staging")
    chunk = b"\0" * MB
    # Two uploads of 95 MB fill most of the 200 MB cap (each within the 100 MB per-upload limit).
    holders = [open_upload(comfy_server.url, tab, 95 * MB) for _ in range(2)]
    for conn in holders:
        for _ in range(95):
            conn.sendall(chunk)
    third = open_upload(comfy_server.url, tab, 50 * MB)
    try:
        for _ in range(50):
            third.sendall(chunk)
    except OSError:
        pass  # the server may answer and close before the whole body is sent
    answer = answer_of(third)
    assert answer.startswith(b"HTTP/1.1 503"), answer[:300]
    assert b"Retry-After: 5" in answer and b"try again" in answer
    for conn in holders:
        conn.close()  # the two hang up before their end: both are removed too
    third.close()
    wait_until_unstaged(comfy_base_dir)
    later = tab.add([("after.png", png((5, 200, 5)))])
    assert later.status_code == 200, later.text


def test_a_client_hanging_up_mid_upload_leaves_nothing_staged_and_no_error_in_the_log(
    comfy_server: ComfyServer, comfy_base_dir: Path
) -> None:
    folder = own_library(comfy_base_dir, "hangup", {"red": (220, 20, 20)})
    tab = Tab(comfy_server.url, library="hangup")
    log = comfy_base_dir / "comfyui.log"
    logged = log.stat().st_size
    conn = open_upload(comfy_server.url, tab, 4 * MB, filename="cut.png")
    conn.sendall(png((9, 9, 9)) + b"\0" * MB)
    time.sleep(0.5)
    conn.close()
    wait_until_unstaged(comfy_base_dir)
    time.sleep(0.5)
    with log.open("rb") as handle:
        handle.seek(logged)
        new = handle.read().decode("utf-8", "replace")
    assert "Traceback" not in new and "this is a bug" not in new, new[-2000:]
    assert sorted(p.name for p in folder.iterdir()) == ["red.png"]
    assert tab.styles()["count"] == 1


def test_an_edit_answers_with_the_tags_it_wrote_while_others_list(
    comfy_server: ComfyServer, comfy_base_dir: Path
) -> None:
    import threading

    own_library(comfy_base_dir, "edits", {"red": (220, 20, 20), "blue": (20, 20, 220)})
    tab = Tab(comfy_server.url, library="edits")
    stop = threading.Event()
    statuses: list[int] = []

    def list_and_search() -> None:
        while not stop.is_set():
            statuses.append(tab.get("styles").status_code)
            statuses.append(tab.search(query="red", k=2).status_code)

    readers = [threading.Thread(target=list_and_search) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        for n in range(6):
            tags = [f"round{n}", "edit"]
            edited = tab.edit(id="red.png", tags=tags)
            assert edited.status_code == 200, edited.text
            assert edited.json()["style"]["tags"] == tags
    finally:
        stop.set()
        for reader in readers:
            reader.join(60)
    assert statuses and set(statuses) == {200}
