"""The retrieval nodes inside a real ComfyUI (tiny CLIP in models/style_clip): wiring, previews and caching."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sketch_rag.cli.comfyui_server import ComfyServer
from tests.helpers.client import RecordingClient, log_mark, wait_for_log
from tests.helpers.graphs import ADD, LIBRARY_LOADER, RETRIEVER, RetrievalGraph, Schemas, retrieval_graph

WAVE = "a great wave, woodblock print"


def shipped(schemas: Schemas, **retriever: Any) -> RetrievalGraph:
    """The default library (shipped styles + the user's folder), searched for the great wave, saved at 64 px."""
    return retrieval_graph(schemas, save=True, **{"prompt": WAVE, "k": 3, **retriever})


def names(texts: list[str]) -> list[str]:
    return [text.split("  score")[0] for text in texts]


def test_nodes_are_listed_with_tooltips_and_the_tiny_model(comfy: RecordingClient) -> None:
    info = comfy.object_info()
    loader = info[LIBRARY_LOADER]["input"]["required"]
    assert "tiny-random-clip" in loader["embedding_model"][0] or "tiny-random-clip" in str(loader["embedding_model"])
    assert info[LIBRARY_LOADER]["output"] == ["SKETCHRAG_STYLE_LIBRARY"]
    # New outputs only ever go at the end, so saved workflows keep their links.
    assert info[RETRIEVER]["output"] == ["IMAGE", "STRING", "STRING", "STRING", "FLOAT", "FLOAT", "STRING"]
    assert info[RETRIEVER]["output_name"][4:] == ["top_score", "top_z_score", "z_scores"]
    assert list(info[RETRIEVER]["input"]["optional"]) == ["query_image", "text_weight"]
    for node in (LIBRARY_LOADER, RETRIEVER, ADD):
        inputs = {**info[node]["input"]["required"], **info[node]["input"].get("optional", {})}
        assert all("tooltip" in spec[1] for spec in inputs.values()), node


def test_retrieve_filter_cache_and_add(
    comfy: RecordingClient, schemas: Schemas, comfy_base_dir: Path, example_sketches: list[Path]
) -> None:
    found = shipped(schemas)
    run = comfy.run_recorded(found.graph, timeout=240)
    texts = run.outputs(found.retriever)["text"]
    assert len(texts) == 3 and len(run.outputs(found.retriever)["images"]) == 3  # preview with name and score
    # The preview is a gallery of every result: small thumbnails, each with a caption band below.
    thumbnails = [Image.open(io.BytesIO(data)) for data in comfy.images(run, found.retriever)]
    assert {im.size for im in thumbnails} == {(192, 192 + 3 * 13 + 4)}
    first, second = (np.asarray(im.convert("RGB")) for im in thumbnails[:2])
    assert not np.array_equal(first, second)
    assert all(re.search(r"  score \d\.\d{3}  z [+-]\d+\.\d\d  p \d+\.\d  w ", t) for t in texts), texts
    saved = [Image.open(io.BytesIO(data)) for data in comfy.images(run, found.output)]
    assert [im.size for im in saved] == [(64, 64)] * 3

    japanese = shipped(schemas, tag_filter="Japanese")
    filtered = comfy.run_recorded(japanese.graph, timeout=120)
    assert names(filtered.outputs(japanese.retriever)["text"]) == ["Ukiyo-e woodblock print"]

    again = comfy.run_recorded(japanese.graph, timeout=120)
    assert again.was_cached(japanese.library) and again.was_cached(japanese.retriever), (
        "an unchanged library must not re-run the retriever")

    # A new style in the user's folder: the loader re-syncs and the retriever runs again.
    styles = comfy_base_dir / "user" / "sketch_rag" / "styles"
    styles.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), 200, dtype=np.uint8)).save(styles / "pale.png")
    (styles / "pale.json").write_text('{"name": "Pale", "tags": ["japanese", "pale"]}', encoding="utf-8")
    lower = shipped(schemas, tag_filter="japanese")
    changed = comfy.run_recorded(lower.graph, timeout=120)
    assert changed.did_run(lower.library) and changed.did_run(lower.retriever)
    assert sorted(names(changed.outputs(lower.retriever)["text"])) == ["Pale", "Ukiyo-e woodblock print"]

    name = comfy.upload_image(example_sketches[0].read_bytes(), example_sketches[0].name)
    adding = shipped(schemas, k=1, tag_filter="from-workflow")
    added_to = adding.graph.node(ADD, library=adding.library, image=adding.graph.node("LoadImage", image=name),
                                 name="Workflow sketch", tags="from-workflow")
    adding.graph.set(adding.retriever, library=added_to)
    added = comfy.run_recorded(adding.graph, timeout=120)
    assert added.ran.index(added_to.id) < added.ran.index(adding.retriever.id)  # the retriever sees the new style
    assert added.outputs(adding.retriever)["text"][0].startswith("Workflow sketch")
    assert (styles / "workflow_sketch.png").is_file() and (styles / "workflow_sketch.json").is_file()


def test_unload_models_frees_the_clip_and_the_next_queue_loads_it_again(
    comfy: RecordingClient, schemas: Schemas, comfy_server: ComfyServer
) -> None:
    def styles(texts: list[str]) -> list[str]:  # "name  score s" per style (the weights depend on k)
        return [text.rsplit("  w ", 1)[0] for text in texts]

    two = shipped(schemas, k=2)
    before = styles(comfy.run_recorded(two.graph, timeout=240).outputs(two.retriever)["text"])
    mark = log_mark(comfy_server)
    comfy.free(unload_models=True)
    wait_for_log(comfy_server, "Sketch RAG: released the CLIP model", mark)
    # k=3 re-runs the retriever while ComfyUI serves the library node from its cache: the retriever's CLIP, released
    # by the unload, loads again transparently and gives the same styles and scores.
    three = shipped(schemas, k=3)
    run = comfy.run_recorded(three.graph, timeout=240)
    assert run.was_cached(three.library) and run.did_run(three.retriever)
    assert styles(run.outputs(three.retriever)["text"])[:2] == before
    assert "Sketch RAG: loaded CLIP model" in comfy_server.log_text()[mark:]


def test_text_weight_finds_a_style_by_its_words(comfy: RecordingClient, schemas: Schemas) -> None:
    from sketch_rag.retrieval.folder import MANIFEST_NAME, meta_from_entry
    from sketch_rag.retrieval.library import SHIPPED_LIBRARY
    from sketch_rag.retrieval.sync import style_text

    manifest = json.loads((SHIPPED_LIBRARY / MANIFEST_NAME).read_text(encoding="utf-8"))
    entries = manifest["styles"] if isinstance(manifest, dict) else manifest
    entry = next(e for e in entries if e.get("name") == "Ukiyo-e woodblock print")
    words = style_text(meta_from_entry(entry["file"], entry))
    by_words = shipped(schemas, k=2, prompt=words, text_weight=1.0)
    texts = comfy.run_recorded(by_words.graph, timeout=120).outputs(by_words.retriever)["text"]
    name, score, z = re.match(r"(.*)  score (\S+)  z (\S+)  ", texts[0]).groups()  # type: ignore[union-attr]
    assert name == "Ukiyo-e woodblock print" and float(score) > 0.999 and float(z) > 1.0
