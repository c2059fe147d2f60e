"""The Style Library tab's routes through a real ComfyUI: what the tab sees, and what it does to the folder.

Each test that writes uses a library of its own (a relative ``library`` name is a folder under
``user/sketch_rag/libraries``, as for the node), so the default library the other server tests
use stays as shipped. Bad input (traversal, uploads, names, races) lives in
``test_library_routes_refusals.py``.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import requests
from PIL import Image

from sketch_rag.cli.comfyui_server import ComfyServer
from sketch_rag.model_folders import STYLE_CLIP
from sketch_rag.retrieval.embedder import ClipEmbedder
from sketch_rag.retrieval.folder import LibraryRoot
from sketch_rag.retrieval.library import SHIPPED_LIBRARY, open_library
from sketch_rag.retrieval.query import StyleQuery
from sketch_rag.tiny_models.clip import TINY_CLIP_NAME
from tests.helpers.client import RecordingClient
from tests.helpers.graphs import Schemas, retrieval_graph
from tests.helpers.images import png
from tests.helpers.library_tab import PREFIX, Tab, own_library

SHIPPED = json.loads((SHIPPED_LIBRARY / "library.json").read_text(encoding="utf-8"))


@pytest.fixture
def tab(comfy_server: ComfyServer) -> Tab:
    return Tab(comfy_server.url)


def test_the_routes_are_served_with_and_without_the_api_prefix(comfy_server: ComfyServer, tab: Tab) -> None:
    direct = tab.get("styles")
    prefixed = requests.get(f"{comfy_server.url}/api{PREFIX}/styles", params=tab.params, timeout=120)
    assert direct.status_code == prefixed.status_code == 200
    assert direct.json()["count"] == prefixed.json()["count"]


def test_the_list_shows_every_shipped_style_with_metadata_thumbnail_and_image(tab: Tab) -> None:
    listing = tab.styles()
    by_id = {s["id"]: s for s in listing["styles"]}
    for entry in SHIPPED:
        style = by_id[f"builtin/{entry['file']}"]
        assert style["name"] == entry["name"] and style["tags"] == [t.lower() for t in entry["tags"]]
        assert style["text"]["artist"] == entry["artist"] and style["text"]["license"] == entry["license"]
        assert style["writable"] is False
    assert listing["writable"] is True, "the default library takes additions (in the user's styles folder)"
    assert listing["tags"] == sorted({t for s in listing["styles"] for t in s["tags"]})
    assert listing["count"] == len(listing["styles"]) >= len(SHIPPED)

    wave = by_id["builtin/hokusai_great_wave.jpg"]
    thumb = tab.fetch(wave["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["Content-Type"] == "image/jpeg"
    assert "immutable" in thumb.headers["Cache-Control"], "a versioned thumbnail URL may be cached for good"
    with Image.open(io.BytesIO(thumb.content)) as opened:
        assert max(opened.size) == 256
    image = tab.fetch(wave["image"])
    assert image.status_code == 200 and image.headers["Content-Type"] == "image/jpeg"
    assert image.content == (SHIPPED_LIBRARY / "hokusai_great_wave.jpg").read_bytes()


def test_thumbnails_are_made_once_into_the_user_folder_never_the_pack(tab: Tab, comfy_base_dir: Path) -> None:
    cache = comfy_base_dir / "user" / "sketch_rag" / "thumbnails"
    first = tab.styles()["styles"][0]
    assert tab.fetch(first["thumbnail"]).status_code == 200
    made = {p: p.stat().st_mtime_ns for p in cache.rglob("*.jpg")}
    assert made, f"no thumbnail in {cache}"
    again = tab.fetch(first["thumbnail"])
    assert again.status_code == 200
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.jpg")} == made
    assert not list(SHIPPED_LIBRARY.parent.rglob("*-256.jpg"))


def test_search_ranks_exactly_as_the_engine_does_for_the_same_query(
    comfy_server: ComfyServer, comfy_base_dir: Path, tmp_path: Path
) -> None:
    # A library of the shipped images that no other test writes to, searched by the server and here.
    folder = comfy_base_dir / "user" / "sketch_rag" / "libraries" / "ranking"
    if not folder.exists():
        shutil.copytree(SHIPPED_LIBRARY, folder)
    tab = Tab(comfy_server.url, library="ranking")
    embedder = ClipEmbedder.load(TINY_CLIP_NAME, device="cpu",
                                 search_dirs=[comfy_base_dir / "models" / STYLE_CLIP])
    engine, _ = open_library([LibraryRoot(folder.resolve(), "")], embedder, tmp_path / "store")
    for query, k, tags in (("an ink wash landscape with mountains", 5, []), ("woodblock print", 15, []),
                           ("a portrait", 3, ["oil painting"])):
        response = tab.search(query=query, k=k, tags=tags)
        assert response.status_code == 200, response.text
        body = response.json()
        expected = engine.query(StyleQuery(text=query, k=k, tags=tuple(tags)))
        assert [r["id"] for r in body["results"]] == [m.item_id for m in expected]
        assert [r["score"] for r in body["results"]] == pytest.approx([m.score for m in expected], abs=1e-5)
        assert body["ms"] >= 0 and all(r["thumbnail"].startswith(f"{PREFIX}/thumbnail?") for r in body["results"])
    tagged = tab.search(query="waves", k=4, tags=["ukiyo-e"]).json()
    assert [r["id"] for r in tagged["results"]] == ["hokusai_great_wave.jpg"]
    for text_weight in (0.5, 1.0):  # the styles' words too, as the retriever's text_weight input
        query = StyleQuery(text="woodblock print of waves", k=5, text_weight=text_weight)
        body = tab.search(query=query.text, k=5, text_weight=text_weight).json()
        expected = engine.query(query)
        assert [r["id"] for r in body["results"]] == [m.item_id for m in expected]
        assert [r["relative"]["z_score"] for r in body["results"]] == pytest.approx([m.z_score for m in expected],
                                                                                    abs=1e-4)
        assert [r["relative"]["percentile"] for r in body["results"]] == pytest.approx(
            [m.percentile for m in expected], abs=1e-4)


def test_an_added_image_is_listed_retrievable_editable_and_removable_to_the_trash(
    comfy_server: ComfyServer, comfy: RecordingClient, schemas: Schemas, comfy_base_dir: Path
) -> None:
    folder = own_library(comfy_base_dir, "tab", {"blue": (20, 20, 220)})
    tab = Tab(comfy_server.url, library="tab")
    assert tab.styles()["count"] == 1

    added = tab.add([("Crimson Poster.png", png((220, 20, 20)))], name="Crimson poster", tags="Red, poster")
    assert added.status_code == 200, added.text
    style = added.json()["added"][0]
    assert style["id"] == "crimson_poster.png" and style["name"] == "Crimson poster"
    assert style["tags"] == ["red", "poster"] and style["writable"] is True
    assert (folder / "crimson_poster.png").read_bytes() == png((220, 20, 20))
    assert {s["id"] for s in tab.styles()["styles"]} == {"blue.png", "crimson_poster.png"}
    found = tab.search(query="poster", k=1, tags=["poster"]).json()["results"]
    assert [r["id"] for r in found] == ["crimson_poster.png"]
    assert tab.fetch(style["thumbnail"]).status_code == 200

    edited = tab.edit(id=style["id"], name="Scarlet poster", tags=["scarlet", "poster"])
    assert edited.status_code == 200, edited.text
    assert edited.json()["style"]["name"] == "Scarlet poster"
    assert json.loads((folder / "crimson_poster.json").read_text(encoding="utf-8"))["tags"] == ["scarlet", "poster"]
    listed = {s["id"]: s for s in tab.styles()["styles"]}
    assert listed["crimson_poster.png"]["tags"] == ["scarlet", "poster"]
    scarlet = retrieval_graph(schemas, "tab", prompt="a poster", tag_filter="scarlet")
    assert comfy.run_recorded(scarlet.graph, timeout=240).outputs(scarlet.retriever)["text"][0].startswith(
        "Scarlet poster")

    removed = tab.remove(style["id"])
    assert removed.status_code == 200, removed.text
    trashed = comfy_base_dir / "user" / removed.json()["trashed"]
    assert removed.json()["trashed"].startswith("sketch_rag/trash/")
    assert (trashed / "library" / "crimson_poster.png").read_bytes() == png((220, 20, 20))
    assert (trashed / "library" / "crimson_poster.json").is_file()
    assert not (folder / "crimson_poster.png").exists() and not (folder / "crimson_poster.json").exists()
    assert {s["id"] for s in tab.styles()["styles"]} == {"blue.png"}
    assert tab.get("thumbnail", id=style["id"]).status_code == 404


def test_the_library_and_retriever_nodes_re_run_after_each_change_from_the_tab(
    comfy_server: ComfyServer, comfy: RecordingClient, schemas: Schemas, comfy_base_dir: Path
) -> None:
    own_library(comfy_base_dir, "rerun", {"red": (220, 20, 20), "blue": (20, 20, 220)})
    tab = Tab(comfy_server.url, library="rerun")
    found = retrieval_graph(schemas, "rerun", prompt="a poster")
    comfy.run_recorded(found.graph, timeout=240)
    unchanged = comfy.run_recorded(found.graph, timeout=240)
    assert unchanged.was_cached(found.library) and unchanged.was_cached(found.retriever), (
        "an unchanged library must stay cached")

    def after(change: requests.Response) -> None:
        assert change.status_code == 200, change.text
        run = comfy.run_recorded(found.graph, timeout=240)
        assert run.did_run(found.library) and run.did_run(found.retriever), (
            "the tab changed the folder, so both nodes must run again")

    after(tab.edit(id="red.png", name="Vermilion", tags="first"))
    tagged = retrieval_graph(schemas, "rerun", prompt="a poster", tag_filter="first")
    assert comfy.run_recorded(tagged.graph, timeout=240).outputs(tagged.retriever)["text"][0].startswith("Vermilion")
    after(tab.edit(id="red.png", tags="other"))  # same size sidecar: still a change
    after(tab.add([("green.png", png((20, 220, 20)))]))
    after(tab.remove("blue.png"))
