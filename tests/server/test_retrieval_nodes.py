"""The retrieval nodes inside a real ComfyUI (tiny CLIP in models/style_clip), through the HTTP API."""

from __future__ import annotations

import io
import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sketch_rag.cli.comfyui_client import ComfyClient
from sketch_rag.cli.comfyui_server import ComfyServer

LOADER, RETRIEVER, ADD = "SketchRAGStyleLibraryLoader", "SketchRAGClipStyleRetriever", "SketchRAGAddToStyleLibrary"


def graph(k: int = 3, tag_filter: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "1": {"class_type": LOADER, "inputs": {"library_folder": "", "embedding_model": "tiny-random-clip",
                                               "store": "", "allow_download": False, "rebuild_index": False}},
        "2": {"class_type": RETRIEVER, "inputs": {"library": ["1", 0], "prompt": "a great wave, woodblock print",
                                                  "k": k, "tag_filter": tag_filter, "image_weight": 0.5,
                                                  "resolution": 64, "blend_temperature": 0.01}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "tests/styles"}},
        **extra,
    }


def cached_nodes(entry: dict[str, Any]) -> set[str]:
    return {n for kind, data in entry["status"]["messages"] if kind == "execution_cached" for n in data["nodes"]}


def test_nodes_are_listed_with_tooltips_and_the_tiny_model(comfy: ComfyClient) -> None:
    info = comfy.object_info()
    loader = info[LOADER]["input"]["required"]
    assert "tiny-random-clip" in loader["embedding_model"][0] or "tiny-random-clip" in str(loader["embedding_model"])
    assert info[LOADER]["output"] == ["SKETCHRAG_STYLE_LIBRARY"]
    # New outputs only ever go at the end, so saved workflows keep their links.
    assert info[RETRIEVER]["output"] == ["IMAGE", "STRING", "STRING", "STRING", "FLOAT", "FLOAT", "STRING"]
    assert info[RETRIEVER]["output_name"][4:] == ["top_score", "top_z_score", "z_scores"]
    assert list(info[RETRIEVER]["input"]["optional"]) == ["query_image", "text_weight"]
    for node in (LOADER, RETRIEVER, ADD):
        inputs = {**info[node]["input"]["required"], **info[node]["input"].get("optional", {})}
        assert all("tooltip" in spec[1] for spec in inputs.values()), node


def test_retrieve_filter_cache_and_add(comfy: ComfyClient, comfy_base_dir: Path, example_sketches: list[Path]) -> None:
    entry = comfy.wait(comfy.queue_prompt(graph(k=3)), timeout=240)
    texts = entry["outputs"]["2"]["text"]
    assert len(texts) == 3 and len(entry["outputs"]["2"]["images"]) == 3  # preview with name and score
    # The preview is a gallery of every result: small thumbnails, each with a caption band below.
    thumbnails = [Image.open(io.BytesIO(comfy.view(i))) for i in comfy.output_images(entry, "2")]
    assert {im.size for im in thumbnails} == {(192, 192 + 3 * 13 + 4)}
    first, second = (np.asarray(im.convert("RGB")) for im in thumbnails[:2])
    assert not np.array_equal(first, second)
    assert all(re.search(r"  score \d\.\d{3}  z [+-]\d+\.\d\d  p \d+\.\d  w ", t) for t in texts), texts
    saved = [Image.open(io.BytesIO(comfy.view(i))) for i in comfy.output_images(entry, "3")]
    assert [im.size for im in saved] == [(64, 64)] * 3

    filtered = comfy.wait(comfy.queue_prompt(graph(k=3, tag_filter="Japanese")), timeout=120)
    assert [t.split("  score")[0] for t in filtered["outputs"]["2"]["text"]] == ["Ukiyo-e woodblock print"]

    again = comfy.wait(comfy.queue_prompt(graph(k=3, tag_filter="Japanese")), timeout=120)
    assert {"1", "2"} <= cached_nodes(again), "an unchanged library must not re-run the retriever"

    # A new style in the user's folder: the loader re-syncs and the retriever runs again.
    styles = comfy_base_dir / "user" / "sketch_rag" / "styles"
    styles.mkdir(parents=True, exist_ok=True)
    pixels = np.full((32, 32, 3), 200, dtype=np.uint8)
    Image.fromarray(pixels).save(styles / "pale.png")
    (styles / "pale.json").write_text('{"name": "Pale", "tags": ["japanese", "pale"]}', encoding="utf-8")
    changed = comfy.wait(comfy.queue_prompt(graph(k=3, tag_filter="japanese")), timeout=120)
    assert "2" not in cached_nodes(changed)
    assert sorted(t.split("  score")[0] for t in changed["outputs"]["2"]["text"]) == ["Pale", "Ukiyo-e woodblock print"]

    name = comfy.upload_image(example_sketches[0].read_bytes(), example_sketches[0].name)
    add = graph(k=1, tag_filter="from-workflow", **{
        "4": {"class_type": "LoadImage", "inputs": {"image": name}},
        "5": {"class_type": ADD, "inputs": {"library": ["1", 0], "image": ["4", 0], "name": "Workflow sketch",
                                            "tags": "from-workflow"}},
    })
    add["2"]["inputs"]["library"] = ["5", 0]
    added = comfy.wait(comfy.queue_prompt(add), timeout=120)
    assert added["outputs"]["2"]["text"][0].startswith("Workflow sketch")
    assert (styles / "workflow_sketch.png").is_file() and (styles / "workflow_sketch.json").is_file()


def test_unload_models_frees_the_clip_and_the_next_queue_loads_it_again(
    comfy: ComfyClient, comfy_server: ComfyServer
) -> None:
    def styles(entry: dict[str, Any]) -> list[str]:  # "name  score s" per style (the weights depend on k)
        return [text.rsplit("  w ", 1)[0] for text in entry["outputs"]["2"]["text"]]

    before = styles(comfy.wait(comfy.queue_prompt(graph(k=2)), timeout=240))
    loads = comfy_server.log_text().count("Sketch RAG: loaded CLIP model")
    releases = comfy_server.log_text().count("Sketch RAG: released the CLIP model")
    request = urllib.request.Request(
        f"{comfy.url}/free", data=json.dumps({"unload_models": True}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    with urllib.request.urlopen(request, timeout=10):
        pass
    deadline = time.monotonic() + 30
    while comfy_server.log_text().count("Sketch RAG: released the CLIP model") == releases:
        assert time.monotonic() < deadline, "ComfyUI's unload did not release the Style Library's CLIP"
        time.sleep(0.2)
    # k=3 re-runs the retriever (the library node stays cached by ComfyUI): its CLIP loads again, transparently.
    after = styles(comfy.wait(comfy.queue_prompt(graph(k=3)), timeout=240))
    assert comfy_server.log_text().count("Sketch RAG: loaded CLIP model") == loads + 1
    assert after[:2] == before  # same weights again: same styles, same scores


def test_text_weight_finds_a_style_by_its_words(comfy: ComfyClient) -> None:
    from sketch_rag.retrieval.folder import MANIFEST_NAME, meta_from_entry
    from sketch_rag.retrieval.library import SHIPPED_LIBRARY
    from sketch_rag.retrieval.sync import style_text

    manifest = json.loads((SHIPPED_LIBRARY / MANIFEST_NAME).read_text(encoding="utf-8"))
    styles = manifest["styles"] if isinstance(manifest, dict) else manifest
    entry = next(e for e in styles if e.get("name") == "Ukiyo-e woodblock print")
    words = style_text(meta_from_entry(entry["file"], entry))
    by_words = graph(k=2)
    by_words["2"]["inputs"].update(prompt=words, text_weight=1.0)
    texts = comfy.wait(comfy.queue_prompt(by_words), timeout=120)["outputs"]["2"]["text"]
    name, score, z = re.match(r"(.*)  score (\S+)  z (\S+)  ", texts[0]).groups()  # type: ignore[union-attr]
    assert name == "Ukiyo-e woodblock print" and float(score) > 0.999 and float(z) > 1.0
