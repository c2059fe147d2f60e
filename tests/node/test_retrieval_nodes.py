"""The Style Library, CLIP Style Retriever and Add to Style Library nodes in-process, on the tiny CLIP.

What a ``POST /prompt`` caller can make them read and write is checked here too: the folders and store
servers the access policy refuses, and the file names an added style gets.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sketch_rag.errors import (
    AccessDeniedError,
    InvalidImageError,
    InvalidParameterError,
    LibraryError,
    ModelNotFoundError,
    SketchRagError,
)
from sketch_rag.nodes.add_style_node import AddToStyleLibrary
from sketch_rag.nodes.retriever_node import ClipStyleRetriever
from sketch_rag.nodes.style_library_node import StyleLibraryLoader
from sketch_rag.retrieval.embedder import DEFAULT_HUB_MODEL
from sketch_rag.retrieval.library import StyleLibrary
from sketch_rag.retrieval.query import MAX_K
from sketch_rag.retrieval.style_labels import MAX_NAME_CHARS
from sketch_rag.tiny_models.clip import TINY_CLIP_NAME
from tests.helpers.configs import access_config, write_config
from tests.helpers.folders import outside_folder, paint, snapshot

Batch = Callable[..., torch.Tensor]
COLOURS = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (20, 20, 220), "yellow": (230, 220, 30)}


def load(library_folder: str, store: str = "", **inputs: Any) -> StyleLibrary:
    [library] = StyleLibraryLoader.execute(library_folder, TINY_CLIP_NAME, store, **inputs).result
    return library


def retrieve(library: Any, prompt: str = "a red poster", **inputs: Any) -> tuple[Any, ...]:
    output = ClipStyleRetriever.execute(library, prompt, **{"resolution": 64, **inputs})
    return (*output.result, output.ui)


@pytest.fixture(scope="module")
def colours(comfy_base: Path) -> Path:
    """Four solid colours in ComfyUI's input folder, two tagged ``warm``."""
    folder = paint(comfy_base / "input" / "node_colours", COLOURS)
    for name in ("red", "yellow"):
        (folder / f"{name}.json").write_text(json.dumps({"name": f"{name.title()} sun", "tags": ["warm"]}))
    return folder


@pytest.fixture(scope="module")
def library(colours: Path) -> StyleLibrary:
    return load(str(colours), store="node_colours")


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return outside_folder(tmp_path_factory)


@pytest.fixture
def config(comfy_base: Path) -> Iterator[Path]:
    """The access config file (``user/sketch_rag/config.json``); removed after the test."""
    with access_config(comfy_base / "user") as path:
        yield path


def refused(error: type[Exception], *fragments: str, **inputs: Any) -> str:
    """Run the loader on ``inputs`` (folder and store) and return its error, which must name every fragment."""
    inputs = {"library_folder": "", "store": "", **inputs}
    with pytest.raises(error) as caught:
        load(inputs["library_folder"], inputs["store"])
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# -- schemas -------------------------------------------------------------------------------------------------


def test_the_loader_lists_the_tiny_clip_and_the_hub_model_and_outputs_a_library() -> None:
    info = StyleLibraryLoader.GET_NODE_INFO_V1()
    required = info["input"]["required"]
    assert list(required) == ["library_folder", "embedding_model", "store", "allow_download", "rebuild_index"]
    options = required["embedding_model"][1]["options"]
    assert options[0] == TINY_CLIP_NAME and options[-1] == DEFAULT_HUB_MODEL
    assert required["embedding_model"][1]["default"] == TINY_CLIP_NAME  # the local model first
    assert info["output"] == ["SKETCHRAG_STYLE_LIBRARY"]


def test_the_retriever_and_add_nodes_declare_their_outputs_with_tooltips() -> None:
    retriever, add = ClipStyleRetriever.GET_NODE_INFO_V1(), AddToStyleLibrary.GET_NODE_INFO_V1()
    assert retriever["output"] == ["IMAGE", "STRING", "STRING", "STRING", "FLOAT", "FLOAT", "STRING"]
    assert retriever["output_name"] == ["style_images", "names", "scores", "weights", "top_score", "top_z_score",
                                        "z_scores"]
    assert list(retriever["input"]["optional"]) == ["query_image", "text_weight"]
    assert retriever["input"]["required"]["k"][1]["max"] == MAX_K
    assert add["output"] == ["SKETCHRAG_STYLE_LIBRARY", "STRING"] and add["output_node"] is True
    for info in (retriever, add, StyleLibraryLoader.GET_NODE_INFO_V1()):
        inputs = {**info["input"]["required"], **info["input"].get("optional", {})}
        assert all("tooltip" in spec[1] for spec in inputs.values()), info["name"]


# -- Style Library loader ------------------------------------------------------------------------------------


def test_the_loader_opens_and_indexes_the_folder(library: StyleLibrary, colours: Path) -> None:
    assert isinstance(library, StyleLibrary)
    assert [root.path for root in library.roots] == [colours]
    assert len(library.synced_records()) == len(COLOURS)


def test_the_default_library_is_the_shipped_styles_plus_the_users_folder(comfy_base: Path) -> None:
    library = load("")
    paths = [root.path for root in library.roots]
    assert paths[-1] == comfy_base / "user" / "sketch_rag" / "styles"
    assert len(library.synced_records()) >= 10  # the shipped public-domain styles
    assert (comfy_base / "user" / "sketch_rag" / "store").is_dir()  # the index lives in ComfyUI's user folder


def test_the_fingerprint_changes_when_a_style_is_added_to_the_folder(tmp_path: Path, comfy_base: Path) -> None:
    folder = paint(comfy_base / "input" / "fingerprinted", {"red": (220, 20, 20)})
    before = StyleLibraryLoader.fingerprint_inputs(str(folder))
    assert StyleLibraryLoader.fingerprint_inputs(str(folder)) == before
    paint(folder, {"blue": (20, 20, 220)})
    assert StyleLibraryLoader.fingerprint_inputs(str(folder)) != before


def test_an_unknown_embedding_model_names_the_folder_and_what_to_download(colours: Path, comfy_base: Path) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        StyleLibraryLoader.execute(str(colours), "no-such-clip", "")
    message = str(caught.value)
    assert "no-such-clip'" in message and str(comfy_base / "models" / "style_clip") in message
    assert f"found: {TINY_CLIP_NAME}" in message and DEFAULT_HUB_MODEL in message
    assert "allow downloading" in message


def test_library_folders_outside_comfyui_are_refused_and_nothing_is_written(
    comfy_base: Path, outside: Path, config: Path
) -> None:
    linked = comfy_base / "input" / "linked-outside"
    linked.symlink_to(outside / "styles", target_is_directory=True)
    libraries = comfy_base / "user" / "sketch_rag" / "libraries"
    dot_dot = os.path.relpath(outside / "styles", libraries)  # a relative name climbing out of the libraries
    before = snapshot(outside)
    try:
        for folder in (str(outside / "styles"), dot_dot, f"{comfy_base}/input/../../{outside.name}/styles",
                       str(linked)):
            assert StyleLibraryLoader.fingerprint_inputs(folder).startswith("refused: ")  # nothing walked
            message = refused(AccessDeniedError, "library_folder", f"resolves to {outside / 'styles'}",
                              "allowed_folders", str(config), library_folder=folder)
            assert "outside the folders" in message
    finally:
        linked.unlink()
    assert snapshot(outside) == before
    assert load("").synced_records()  # the default library still opens


def test_a_library_at_the_filesystem_root_and_malformed_names_are_refused_before_any_walk(config: Path) -> None:
    start = time.monotonic()
    assert StyleLibraryLoader.fingerprint_inputs("/").startswith("refused: ")
    refused(AccessDeniedError, "resolves to /,", "allowed_folders", library_folder="/")
    assert time.monotonic() - start < 5, "the root was walked before being refused"
    refused(SketchRagError, "library_folder", "NUL", library_folder="styles\x00/etc")
    refused(SketchRagError, "library_folder", "longer than file systems allow", library_folder="x" * 300)
    refused(InvalidParameterError, "store", "only scheme://host:port", store="http://user:pw@127.0.0.1:8000/api")


def test_a_store_outside_and_unlisted_store_servers_are_refused(outside: Path, config: Path) -> None:
    before = snapshot(outside)
    refused(AccessDeniedError, "store", str(outside / "store"), '"writable": true', store=str(outside / "store"))
    start = time.monotonic()
    refused(AccessDeniedError, "http://10.255.255.1:8000", "allowed_store_urls", store="http://10.255.255.1:8000")
    assert time.monotonic() - start < 5, "an unlisted host was contacted"
    assert snapshot(outside) == before
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    write_config(config, {"allowed_store_urls": [closed]})  # read at the next execution, no restart
    start = time.monotonic()
    refused(LibraryError, "does not answer", closed, store=closed)
    assert time.monotonic() - start < 30
    assert load("").synced_records()


def test_a_damaged_config_file_is_an_error_that_names_the_file(config: Path) -> None:
    write_config(config, {"allowed_folders": "not a list"})
    refused(SketchRagError, str(config))


# -- CLIP Style Retriever ------------------------------------------------------------------------------------


def test_the_retriever_returns_k_square_images_with_names_scores_and_weights(library: StyleLibrary) -> None:
    images, names, scores, weights, top_score, top_z, z_scores, ui = retrieve(library, k=3, resolution=48)
    assert images.shape == (3, 48, 48, 3) and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert len(names.split("\n")) == 3 and set(names.split("\n")) <= {"Red sun", "green", "blue", "Yellow sun"}
    parsed = [float(s) for s in scores.split(", ")]
    assert parsed == sorted(parsed, reverse=True) and top_score == pytest.approx(parsed[0], abs=1e-4)
    assert isinstance(top_score, float)
    assert sum(float(w) for w in weights.split(", ")) == pytest.approx(1.0, abs=1e-3)
    parsed_z = [float(z) for z in z_scores.split(", ")]
    assert len(parsed_z) == 3 and isinstance(top_z, float) and top_z == pytest.approx(parsed_z[0], abs=1e-3)
    # The preview: each reference captioned with its name and score, saved to ComfyUI's temp folder.
    assert len(ui["images"]) == 3 and all(entry["type"] == "temp" for entry in ui["images"])
    assert [text.split("  score")[0] for text in ui["text"]] == names.split("\n")


def test_the_style_images_are_the_library_files_as_image_tensors(library: StyleLibrary) -> None:
    images, names, *_ = retrieve(library, k=len(COLOURS), resolution=16)
    for image, name in zip(images, names.split("\n"), strict=True):
        colour = COLOURS[name.split()[0].lower()]
        assert np.allclose(image.numpy(), np.array(colour, np.float32) / 255.0, atol=1 / 255)


def test_the_tag_filter_keeps_only_styles_with_every_tag(library: StyleLibrary) -> None:
    _, names, *_ = retrieve(library, k=4, tag_filter=" WARM ")
    assert sorted(names.split("\n")) == ["Red sun", "Yellow sun"]


def test_an_unknown_tag_is_a_clear_error(library: StyleLibrary) -> None:
    with pytest.raises(LibraryError, match="No style in library"):
        retrieve(library, k=1, tag_filter="no-such-tag")


def test_one_query_image_is_matched_and_a_batch_is_refused_with_the_fix(
    library: StyleLibrary, to_image_batch: Batch
) -> None:
    blue = np.full((32, 32, 3), COLOURS["blue"], np.uint8)
    _, names, *_ = retrieve(library, "", k=1, image_weight=1.0, query_image=to_image_batch(blue))
    assert names == "blue"  # image only: the same pixels are the nearest style, whatever the CLIP weights
    with pytest.raises(InvalidImageError, match="query_image is a batch of 2 images.*ImageFromBatch"):
        retrieve(library, k=1, query_image=to_image_batch(blue, blue))
    with pytest.raises(InvalidImageError, match="query_image input must be an IMAGE tensor, got str"):
        retrieve(library, k=1, query_image="blue.png")


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_an_empty_prompt_without_a_query_image_is_refused(library: StyleLibrary, prompt: str) -> None:
    with pytest.raises(InvalidParameterError, match="The style query is empty"):
        retrieve(library, prompt)


def test_a_long_prompt_is_cut_to_what_clip_reads_and_an_absurd_one_is_refused(library: StyleLibrary) -> None:
    long = "an oil painting with swirling brushstrokes, " * 200  # 8,800 characters; CLIP reads ~77 tokens
    _, names, *_ = retrieve(library, long, k=2)
    assert len(names.split("\n")) == 2
    with pytest.raises(InvalidParameterError, match="has 88000 characters.*the limit is 10000.*shorten it"):
        retrieve(library, long * 10)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"image_weight": 1.5}, "image_weight is 1.5; use 0"),
        ({"text_weight": -0.5}, "text_weight is -0.5; use 0"),
        ({"blend_temperature": 0.0}, "temperature is 0.0; use a positive value"),
        ({"k": 0}, "k is 0; ask for between 1 and"),
    ],
)
def test_out_of_range_settings_are_refused_naming_the_input(library: StyleLibrary, inputs: dict[str, Any],
                                                            message: str) -> None:
    # ComfyUI holds widgets to their min/max before the run; execute still refuses them for other callers.
    with pytest.raises(InvalidParameterError, match=message):
        retrieve(library, **inputs)


def test_the_retriever_refuses_what_is_not_a_library() -> None:
    with pytest.raises(LibraryError, match="The library input is a str; connect a Style Library node"):
        retrieve("my_styles")


def test_the_retriever_leaves_comfyuis_range_checks_on_and_the_loader_checks_its_model_option() -> None:
    # A validate_inputs (with **kwargs above all) would switch ComfyUI's min/max checks off for the node's
    # inputs; tests/server/test_node_input_ranges.py proves the checks through the real server for every node.
    assert "validate_inputs" not in ClipStyleRetriever.__dict__
    verdict = StyleLibraryLoader.validate_inputs(embedding_model="no-such-model")
    assert isinstance(verdict, str) and "embedding_model" in verdict and "'no-such-model'" in verdict
    assert StyleLibraryLoader.validate_inputs(embedding_model=DEFAULT_HUB_MODEL) is True


# -- Add to Style Library ------------------------------------------------------------------------------------


def test_adding_a_batch_writes_each_image_with_a_sidecar_and_indexes_it(comfy_base: Path,
                                                                        to_image_batch: Batch) -> None:
    folder = paint(comfy_base / "input" / "node_add", {"red": (220, 20, 20)})
    library = load(str(folder), store="node_add")
    grey, white = np.full((16, 16, 3), 128, np.uint8), np.full((16, 16, 3), 250, np.uint8)
    same, ids = AddToStyleLibrary.execute(library, to_image_batch(grey, white), "Paper", "ink, Line Art").result
    assert same is library and len(ids.split("\n")) == 2
    for stem, pixels in (("paper_1", grey), ("paper_2", white)):
        assert np.array_equal(np.asarray(Image.open(folder / f"{stem}.png").convert("RGB")), pixels)
        meta = json.loads((folder / f"{stem}.json").read_text())
        assert meta["tags"] == ["ink", "line art"] and meta["name"] in ("Paper 1", "Paper 2")
    _, names, *_ = retrieve(library, k=4, tag_filter="ink")
    assert sorted(names.split("\n")) == ["Paper 1", "Paper 2"]


def test_bad_style_names_become_safe_files_inside_the_library(
    comfy_base: Path, outside: Path, to_image_batch: Batch
) -> None:
    library = load("access-names")  # a relative name: user/sketch_rag/libraries/access-names
    folder = comfy_base / "user" / "sketch_rag" / "libraries" / "access-names"
    image = to_image_batch(np.full((16, 16, 3), 90, np.uint8))
    before_outside, before_base = snapshot(outside), set(snapshot(comfy_base.parent))
    names = {"../../../../escape": "escape.png", "/etc/passwd": "etc_passwd.png", "CON": "con_style.png",
             "NUL": "nul_style.png", "COM1": "com1_style.png", "..": "style.png", " .hidden": "hidden.png",
             "library": "library_style.png", "x" * MAX_NAME_CHARS: "x" * 96 + ".png"}
    for name, file_name in names.items():
        AddToStyleLibrary.execute(library, image, name, "access-test")
        assert (folder / file_name).is_file() and (folder / file_name).with_suffix(".json").is_file(), name
    with pytest.raises(LibraryError, match="control characters"):
        AddToStyleLibrary.execute(library, image, "evil\x00name", "")
    with pytest.raises(LibraryError, match=f"use at most {MAX_NAME_CHARS}"):  # the tab's rule, too
        AddToStyleLibrary.execute(library, image, "x" * (MAX_NAME_CHARS + 1), "")
    assert not (folder / "library.json").exists()  # the style named "library" did not write a manifest
    written = sorted(set(snapshot(comfy_base.parent)) - before_base)
    assert written and all(Path(p).is_relative_to(comfy_base) for p in written), written
    assert snapshot(outside) == before_outside


def test_adding_refuses_what_is_not_a_library_or_an_image(library: StyleLibrary) -> None:
    with pytest.raises(LibraryError, match="The library input is a dict"):
        AddToStyleLibrary.execute({}, torch.zeros(1, 8, 8, 3), "x", "")
    with pytest.raises(InvalidImageError, match=r"image input has shape \(0, 8, 8, 3\)"):
        AddToStyleLibrary.execute(library, torch.zeros(0, 8, 8, 3), "x", "")


def test_comfyuis_interrupt_stops_a_library_sync_and_the_next_run_completes_it(
    comfy_base: Path, interrupted: Any
) -> None:
    folder = paint(comfy_base / "input" / "node_interrupted", COLOURS)
    interrupted.interrupt_current_processing(True)  # what POST /interrupt sets
    with pytest.raises(interrupted.InterruptProcessingException):
        load(str(folder), store="node_interrupted")
    interrupted.interrupt_current_processing(False)
    assert len(load(str(folder), store="node_interrupted").synced_records()) == len(COLOURS)
