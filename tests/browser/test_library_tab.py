"""The Style Library sidebar tab in a real browser: Debian's chromium, headless, driven by Playwright.

A user's whole round trip through the tab, against a real ComfyUI with the pack COPIED into custom_nodes (as a
clone installs it): open the tab and see every shipped thumbnail, search and get the engine's own ranking, drop
an image file onto the tab (a real ``drop`` event carrying a File) and find it again through search, edit its
tags, move it to the trash and find its bytes in the trash folder. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import base64
import io
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image
from playwright import sync_api

from sketch_rag.cli.comfyui_server import ComfyServer
from sketch_rag.model_folders import STYLE_CLIP
from sketch_rag.retrieval.embedder import ClipEmbedder
from sketch_rag.retrieval.library import SHIPPED_LIBRARY, default_roots, open_library
from sketch_rag.retrieval.query import StyleQuery
from tests.helpers.browser import ARTIFACTS, launch_chromium, start_copied_pack_server

TAB_BUTTON = ".sketch-rag-style-library-tab-button"
QUERY = "ink wash mountains"
SEARCH_K = 16
"""The tab asks for this many results (style_library_tab.js): the whole shipped library is ranked."""

DROP_FILES = """async ([files, target]) => {
    const transfer = new DataTransfer();
    for (const [name, type, b64] of files) {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        transfer.items.add(new File([bytes], name, {type}));
    }
    const where = document.querySelector(target);
    for (const kind of ['dragenter', 'dragover', 'drop'])
        where.dispatchEvent(new DragEvent(kind, {bubbles: true, cancelable: true, dataTransfer: transfer}));
}"""
"""Drop files onto the tab as the browser does for a drag from the desktop: DragEvents carrying a DataTransfer."""
ALL_THUMBNAILS_SHOWN = """(n) => {
    const images = [...document.querySelectorAll('.srl-tab .srl-grid .srl-card img')];
    return images.length === n && images.every(i => i.complete && i.naturalWidth > 0);
}"""


def see_every_thumbnail(page: sync_api.Page, n: int) -> None:
    """Wait for ``n`` cards, then scroll to each in turn as a user would (the grid loads thumbnails lazily, only
    those that come into view) and wait until every image has its pixels."""
    cards = page.locator(".srl-tab .srl-grid .srl-card")
    page.wait_for_function("(n) => document.querySelectorAll('.srl-tab .srl-grid .srl-card').length === n", arg=n,
                           timeout=120_000)
    for i in range(n):
        cards.nth(i).scroll_into_view_if_needed()
        cards.nth(i).locator("img").evaluate("i => i.complete && i.naturalWidth > 0 || new Promise("
                                             "(ok, fail) => { i.onload = ok; i.onerror = fail; })")
    page.wait_for_function(ALL_THUMBNAILS_SHOWN, arg=n, timeout=120_000)
    cards.first.scroll_into_view_if_needed()


def shipped_count() -> int:
    return len(json.loads((SHIPPED_LIBRARY / "library.json").read_text(encoding="utf-8")))


def png_bytes(seed: int, side: int = 96) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def post_json(url: str, body: Any) -> bytes:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def engine_ranking(base: Path, store: Path, query: StyleQuery) -> list[tuple[str, float, float]]:
    """(id, cosine, z-score) of each match the engine gives over the server's default library, from this process."""
    models = base / "models" / STYLE_CLIP
    model = next(p for p in sorted(models.iterdir()) if p.is_dir())
    embedder = ClipEmbedder.load(str(model), search_dirs=[models])
    library, _ = open_library(default_roots(base / "user" / "sketch_rag" / "styles"), embedder, store)
    try:
        return [(m.item_id, m.score, m.z_score) for m in library.query(query)]
    finally:
        library.close()


@pytest.fixture(scope="module")
def pack_server(tmp_path_factory: pytest.TempPathFactory, comfy_base_dir: Path) -> Iterator[tuple[ComfyServer, Path]]:
    base = tmp_path_factory.mktemp("library_tab_base")
    server = start_copied_pack_server(base, comfy_base_dir / "models")
    post_json(f"{server.url}/settings", {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False})
    yield server, base
    server.stop()


@pytest.fixture
def page(tmp_path: Path, pack_server: tuple[ComfyServer, Path]) -> Iterator[sync_api.Page]:
    server, _ = pack_server
    with sync_api.sync_playwright() as playwright:
        context = launch_chromium(playwright, tmp_path / "profile")
        try:
            page = context.pages[0] if context.pages else context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.url, wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_function("() => window.app && window.app.graph", timeout=120_000)
            page.locator(TAB_BUTTON).wait_for(timeout=60_000)
            yield page
            assert [e for e in errors if "srl" in e or "sketch_rag" in e or "style_library" in e] == []
        finally:
            context.close()


def shown_ids(page: sync_api.Page) -> list[str]:
    return page.locator(".srl-tab .srl-grid .srl-card").evaluate_all("cards => cards.map(c => c.dataset.id)")


def test_the_tab_shows_searches_adds_edits_and_trashes_styles(
        page: sync_api.Page, pack_server: tuple[ComfyServer, Path], tmp_path: Path) -> None:
    server, base = pack_server
    api = f"{server.url}/sketch_rag/library"
    shipped = shipped_count()

    user_styles = base / "user" / "sketch_rag" / "styles"
    user_styles.mkdir(parents=True, exist_ok=True)
    (user_styles / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # copied in by hand, damaged

    # Open the tab: every shipped style appears with its thumbnail, name and tags; the damaged file is named.
    page.locator(TAB_BUTTON).click()
    tab = page.locator(".srl-tab")
    see_every_thumbnail(page, shipped)
    warning = tab.locator('.srl-status[data-severity="warn"]')
    assert "broken.png" in warning.inner_text() and "could not be read" in warning.inner_text()
    listing = get_json(f"{api}/styles")
    assert shown_ids(page) == [s["id"] for s in listing["styles"]] and listing["count"] == shipped
    first = listing["styles"][0]
    card = page.locator(f'.srl-card[data-id="{first["id"]}"]')
    assert card.locator("img").get_attribute("alt") == first["name"]
    assert card.locator(".srl-tags").inner_text() == ", ".join(first["tags"])
    page.screenshot(path=str(ARTIFACTS / "library_tab_open.png"))

    # A shipped style seen large: its metadata, and no way to edit or remove it.
    card.click()
    detail = page.locator(".srl-detail")
    assert detail.locator('dd[data-field="artist"]').inner_text() == first["text"]["artist"]
    assert detail.locator('dd[data-field="license"]').inner_text() == first["text"]["license"]
    assert detail.locator(".srl-readonly").is_visible()
    assert detail.get_by_role("button", name="Move to trash").count() == 0
    page.screenshot(path=str(ARTIFACTS / "library_tab_detail.png"))
    detail.get_by_role("button", name="All styles").click()

    # Search: the tab shows the engine's ranking for the same query, with its cosine scores and z-scores, by the
    # style images alone (the default) and with the styles' words weighted in.
    for text_weight in (0.0, 0.5):
        tab.get_by_role("slider", name="Weight of the styles' words (name, tags, description)").fill(str(text_weight))
        tab.get_by_role("searchbox", name="Search styles by text").fill(QUERY)
        tab.get_by_role("button", name="Search", exact=True).click()
        page.locator(".srl-grid.srl-ranked .srl-card").first.wait_for()
        shown = page.locator(".srl-grid.srl-ranked .srl-card").evaluate_all(
            "cards => cards.map(c => [c.dataset.id, Number(c.dataset.score), c.querySelector('.srl-relative')"
            "?.textContent])")
        expected = engine_ranking(base, tmp_path / f"store_{text_weight}",
                                  StyleQuery(text=QUERY, k=SEARCH_K, text_weight=text_weight))
        assert [i for i, _, _ in shown] == [i for i, _, _ in expected], f"text_weight {text_weight}"
        assert np.allclose([s for _, s, _ in shown], [s for _, s, _ in expected], atol=1e-4)
        assert [r.split(" · ")[1] for _, _, r in shown] == [f"z {z:.2f}" for _, _, z in expected]
        page.screenshot(path=str(ARTIFACTS / f"library_tab_search_words_{text_weight}.png"))
        tab.get_by_role("button", name="Clear").click()

    # A file that is not an image: the route's own message is shown to the user, in the tab and as a toast.
    not_image = b"not an image"
    refused = requests.post(f"{api}/styles", files={"file": ("notes.txt", not_image, "text/plain")}, timeout=30)
    assert refused.status_code == 400
    page.evaluate(DROP_FILES, [[["notes.txt", "text/plain", base64.b64encode(not_image).decode()]], ".srl-tab"])
    tab.get_by_role("button", name="Add to library").click()
    error = tab.locator('.srl-status[data-severity="error"]')
    error.wait_for()
    assert error.inner_text() == refused.json()["error"]
    assert page.locator(".p-toast-message").filter(has_text=refused.json()["error"]).count() == 1
    tab.get_by_role("button", name="Cancel").click()

    # Drop an image onto the tab, name and tag it, add it: it appears, and the search finds it.
    dropped = png_bytes(seed=11)
    page.evaluate(DROP_FILES, [[["my_drop.png", "image/png", base64.b64encode(dropped).decode()]], ".srl-tab"])
    assert page.locator(".srl-staged li").all_inner_texts() == ["my_drop.png"]
    tab.get_by_role("textbox", name="Name of the new style").fill("Dropped noise")
    tab.get_by_role("textbox", name="Tags of the new style, comma separated").fill("dropped, noise")
    tab.get_by_role("button", name="Add to library").click()
    new_card = tab.get_by_role("button", name="Show Dropped noise")
    new_card.wait_for()
    see_every_thumbnail(page, shipped + 1)
    written = [p for p in user_styles.rglob("*") if p.is_file() and p.read_bytes() == dropped]
    assert len(written) == 1, f"the dropped image is not in {user_styles}: {sorted(user_styles.rglob('*'))}"
    new_id = new_card.get_attribute("data-id")
    tab.get_by_role("combobox", name="Filter by tag").select_option("dropped")
    tab.get_by_role("searchbox", name="Search styles by text").fill(QUERY)
    tab.get_by_role("button", name="Search", exact=True).click()
    page.wait_for_function("(id) => [...document.querySelectorAll('.srl-ranked .srl-card')]"
                           ".map(c => c.dataset.id).join() === id", arg=new_id)
    as_query = np.asarray(Image.open(io.BytesIO(dropped)).convert("RGB"), dtype=np.float32) / 255.0
    assert engine_ranking(base, tmp_path / "store_image", StyleQuery(image=as_query, k=1))[0][0] == new_id
    page.screenshot(path=str(ARTIFACTS / "library_tab_added.png"))
    tab.get_by_role("button", name="Clear").click()
    tab.get_by_role("combobox", name="Filter by tag").select_option("")

    # Edit its tags in the detail view: the server keeps them.
    tab.get_by_role("button", name="Show Dropped noise").click()
    tab.get_by_role("textbox", name="Style tags, comma separated").fill("dropped, edited")
    tab.get_by_role("button", name="Save").click()
    page.wait_for_function("() => document.querySelector('.srl-detail dd[data-field=\"tags\"]')?.textContent"
                           " === 'dropped, edited'")
    kept = next(s for s in get_json(f"{api}/styles")["styles"] if s["id"] == new_id)
    assert kept["tags"] == ["dropped", "edited"] and kept["name"] == "Dropped noise"
    page.screenshot(path=str(ARTIFACTS / "library_tab_edited.png"))

    # Move it to the trash: it leaves the grid, and its bytes are in the trash folder, not lost.
    tab.get_by_role("button", name="Move to trash").click()
    see_every_thumbnail(page, shipped)
    assert new_id not in shown_ids(page)
    assert "trash" in page.locator(".srl-status").inner_text()
    trash = base / "user" / "sketch_rag" / "trash"
    assert [p for p in trash.rglob("*") if p.is_file() and p.read_bytes() == dropped], f"nothing in {trash}"
    assert not [p for p in user_styles.rglob("*") if p.is_file() and p.read_bytes() == dropped]
    page.screenshot(path=str(ARTIFACTS / "library_tab_trashed.png"))
