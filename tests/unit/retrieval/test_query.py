"""Query order, k, filters, hybrid weighting and blending weights on embeddings of known geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sketch_rag.errors import InvalidParameterError, LibraryError
from sketch_rag.model_folders import STYLE_CLIP
from sketch_rag.retrieval.embedder import ClipEmbedder, auto_precision
from sketch_rag.retrieval.library import StyleLibrary
from sketch_rag.retrieval.query import StyleQuery, blend_weights, exact_top_k
from tests.helpers.geometry import COLOURS


def names(library: StyleLibrary, **query: object) -> list[str]:
    return [m.item_id for m in library.query(StyleQuery(**query))]


def test_text_query_ranks_by_cosine(colour_library: StyleLibrary) -> None:
    matches = colour_library.query(StyleQuery(text="red", k=3))
    assert [m.item_id for m in matches][:2] == ["red.png", "orange.png"]
    assert matches[0].score == pytest.approx(1.0, abs=1e-3)
    assert matches[1].score == pytest.approx(1 / np.sqrt(1.25), abs=1e-3)
    assert matches[0].name == "red" and matches[1].name == "Orange glow"


def test_image_query_finds_the_nearest_colour(colour_library: StyleLibrary) -> None:
    blue = np.zeros((20, 30, 3), dtype=np.float32)
    blue[..., 2] = 1.0
    assert names(colour_library, image=blue, image_weight=1.0, k=2) == ["blue.png", "teal.png"]


def test_hybrid_weight_moves_the_result_from_text_to_image(colour_library: StyleLibrary) -> None:
    green = np.zeros((8, 8, 3), dtype=np.float32)
    green[..., 1] = 1.0
    assert names(colour_library, text="red", image=green, image_weight=0.1, k=1) == ["red.png"]
    assert names(colour_library, text="red", image=green, image_weight=0.9, k=1) == ["green.png"]
    # Halfway between red and green the orange (1, .5, 0) is the closest style.
    assert names(colour_library, text="red", image=green, image_weight=0.5, k=1) == ["orange.png"]


def test_k_larger_than_library_returns_everything_once(colour_library: StyleLibrary) -> None:
    found = names(colour_library, text="blue", k=50)
    assert sorted(found) == sorted(f"{c}.png" for c in COLOURS)


@pytest.mark.parametrize("k", [0, -1, 65])
def test_k_out_of_range_is_refused(k: int) -> None:
    with pytest.raises(InvalidParameterError, match="k is"):
        StyleQuery(text="red", k=k)


def test_empty_query_is_refused() -> None:
    with pytest.raises(InvalidParameterError, match="empty"):
        StyleQuery(text="   ")


def test_tag_filter_is_exact_and_case_insensitive(colour_library: StyleLibrary) -> None:
    assert names(colour_library, text="blue", k=5, tags=("WARM",)) == ["orange.png", "red.png"]
    assert names(colour_library, text="blue", k=5, tags=("warm", "bright")) == ["orange.png"]
    with pytest.raises(LibraryError, match="tags in the library: bright, warm"):
        colour_library.query(StyleQuery(text="red", tags=("cold",)))


def test_tag_filter_sees_styles_added_after_it_was_first_used(colour_library: StyleLibrary) -> None:
    assert names(colour_library, text="blue", k=1, tags=("warm",)) == ["orange.png"]
    blue = np.zeros((8, 8, 3), dtype=np.float32)
    blue[..., 2] = 1.0
    colour_library.add(blue, "Warm blue", ["warm"])
    assert names(colour_library, text="blue", k=1, tags=("warm",)) == ["warm_blue.png"]


def test_blending_weights_sum_to_one_and_follow_scores(colour_library: StyleLibrary) -> None:
    matches = colour_library.query(StyleQuery(text="red", k=3, temperature=0.5))
    weights = [m.weight for m in matches]
    assert sum(weights) == pytest.approx(1.0)
    assert weights == sorted(weights, reverse=True) and weights[0] > weights[1] > 0
    assert colour_library.query(StyleQuery(text="red", k=1))[0].weight == 1.0
    # At CLIP's temperature a 0.1 lead takes nearly all the weight; a tie splits it.
    assert blend_weights([0.3, 0.2], 0.01)[0] > 0.99
    assert blend_weights([0.25, 0.25], 0.01) == pytest.approx([0.5, 0.5])


def test_exact_top_k_breaks_ties_by_id() -> None:
    matrix = np.eye(3, dtype=np.float32)[[0, 0, 1]]
    hits = exact_top_k(matrix, ["b", "a", "c"], np.array([1, 0, 0], dtype=np.float32), 2)
    assert [h.item_id for h in hits] == ["a", "b"]


def test_precision_follows_the_device_and_barely_moves_embeddings(
    tiny_clip, tiny_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tiny_models_dir / STYLE_CLIP
    exact = ClipEmbedder.load("tiny-random-clip", device="cpu", precision="fp32", search_dirs=[folder])
    half = ClipEmbedder.load("tiny-random-clip", device="cpu", precision="bf16", search_dirs=[folder])
    assert (exact.precision, half.precision) == ("fp32", "bf16") and exact.model_key == half.model_key
    texts = ["a watercolour harbour", "brutalist concrete house"]
    assert np.all(np.sum(exact.embed_texts(texts) * half.embed_texts(texts), axis=1) > 0.99)
    assert auto_precision("cuda:0") == "fp16" and auto_precision("mps") == "fp32"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    assert auto_precision("cpu") == "bf16"
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_bf16": False})
    assert auto_precision("cpu") == "fp32"
    with pytest.raises(InvalidParameterError, match="Unknown precision 'int4'"):
        ClipEmbedder.load("tiny-random-clip", precision="int4", search_dirs=[folder])


def test_tiny_clip_embeds_any_prompt_to_unit_vectors(tiny_clip) -> None:
    texts = ["a watercolour harbour", "日本の木版画", "عمارة حديثة", "x" * 10_000]
    vectors = tiny_clip.embed_texts(texts)
    assert vectors.shape == (4, tiny_clip.dim) == (4, 32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[1], vectors[2])  # non-Latin text is tokenised, not mapped to <unk>
    assert len(tiny_clip.processor.tokenizer) == 514
    with pytest.raises(InvalidParameterError, match="10001 characters"):
        tiny_clip.embed_texts(["x" * 10_001])
