"""Retrieval that reads the styles' words (text_weight), scores relative to the library, one index per library.

The geometry embedder makes every expected order and score a hand calculation: images embed as
their colour, texts as the colours they name. The colour library below gives each image words
that point elsewhere (the red image is called "blue dream"), so images and words disagree and
text_weight decides which one wins.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sketch_rag.errors import InvalidParameterError, LibraryModelMismatchError
from sketch_rag.retrieval.embedder import ClipEmbedder
from sketch_rag.retrieval.folder import LibraryRoot
from sketch_rag.retrieval.library import SHIPPED_LIBRARY, StyleLibrary, open_library
from sketch_rag.retrieval.query import DEFAULT_TEMPERATURE, StyleQuery, blend_weights, relative_standing
from sketch_rag.retrieval.sync import style_text
from tests.helpers.geometry import COLOURS, GeometryEmbedder, solid
from tests.helpers.paths import REPO

RETRIEVAL = REPO / "retrieval"


@pytest.fixture
def crossed_folder(tmp_path: Path) -> Path:
    """Red, green and blue images; the red one's words say blue, the blue one's say red, green's agree."""
    folder = tmp_path / "crossed"
    for name in ("red", "green", "blue"):
        solid(folder / f"{name}.png", COLOURS[name])
    words = {"red": {"name": "Blue dream", "tags": ["calm"]},
             "blue": {"name": "Fire", "tags": ["hot"], "description": "A red glow."},
             "green": {"name": "Meadow", "tags": ["green"]}}
    for name, meta in words.items():
        (folder / f"{name}.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


def open_crossed(folder: Path, store: Path, embedder: GeometryEmbedder | None = None) -> StyleLibrary:
    library, _ = open_library([LibraryRoot(folder, "")], embedder or GeometryEmbedder(), store)
    return library


def ranked(library: StyleLibrary, **query: object) -> list[tuple[str, float]]:
    return [(m.item_id, round(m.score, 3)) for m in library.query(StyleQuery(**query))]


def test_style_text_is_name_tags_and_description() -> None:
    from sketch_rag.retrieval.folder import StyleMeta

    meta = StyleMeta("Fire", ("hot", "red"), {"description": "A red glow.", "artist": "not read"})
    assert style_text(meta) == "Fire. hot, red. A red glow."
    assert style_text(StyleMeta("x", (), {"description": "y" * 5000})) == ("x. " + "y" * 5000)[:1000]


def independent_ranking(folder: Path, vector: np.ndarray, tags: tuple[str, ...] = ()) -> list[str]:
    """The image-only ranking computed here from the files themselves: each image embedded afresh, plain cosines,
    the sidecars' tags read by hand. Shares nothing with the library's index, cache or matrices."""
    embedder = GeometryEmbedder()
    names = sorted(p.name for p in folder.glob("*.png"))
    tagged = {n for n in names if (folder / f"{Path(n).stem}.json").is_file()
              and set(tags) <= {t.lower() for t in json.loads((folder / f"{Path(n).stem}.json").read_text())["tags"]}}
    kept = [n for n in names if not tags or n in tagged]
    with_pil = [Image.open(folder / n) for n in kept]
    cosines = embedder.embed_images(with_pil) @ (vector / np.linalg.norm(vector))
    return [n for _, n in sorted(zip(-cosines, kept, strict=True))]


def test_text_weight_zero_is_the_image_ranking_bit_for_bit(colour_library: StyleLibrary, colour_folder: Path) -> None:
    embedder = colour_library.embedder
    for text, tags in (("red", ()), ("blue", ("warm",)), ("teal", ())):
        vector = embedder.embed_texts([text])[0]
        matches = colour_library.query(StyleQuery(text=text, k=5, tags=tags))
        assert [m.item_id for m in matches] == independent_ranking(colour_folder, vector, tags)[:5]
        if not tags:  # the nearest-neighbour index itself, as the retriever read it before words counted
            before = colour_library.index.query(vector, 5)
            assert [(m.item_id, m.score) for m in matches] == [(h.item_id, h.score) for h in before]
            assert [m.weight for m in matches] == blend_weights([h.score for h in before], DEFAULT_TEMPERATURE)
            # The smallest weight on the words takes the mixed path and already moves the scores.
            mixed = colour_library.query(StyleQuery(text=text, k=5, text_weight=1e-3))
            assert [m.score for m in mixed] != [m.score for m in matches]


def test_text_weight_moves_the_ranking_from_the_images_to_their_words(crossed_folder: Path, tmp_path: Path) -> None:
    library = open_crossed(crossed_folder, tmp_path / "store")
    # "red": the red image (cos 1) but its words say blue (cos 0); the blue image (0) is called "Fire ... red" (1).
    assert ranked(library, text="red", k=2, text_weight=0.0)[0] == ("red.png", 1.0)
    assert ranked(library, text="red", k=2, text_weight=0.4) == [("red.png", 0.6), ("blue.png", 0.4)]
    assert ranked(library, text="red", k=2, text_weight=0.6) == [("blue.png", 0.6), ("red.png", 0.4)]
    assert ranked(library, text="red", k=1, text_weight=1.0) == [("blue.png", 1.0)]
    # Green's image and words agree: it scores 1 whatever the mix.
    assert all(ranked(library, text="green", k=1, text_weight=w) == [("green.png", 1.0)] for w in (0, 0.3, 1))
    # A tag filter keeps the mix: among "calm" styles only the red image is left.
    assert ranked(library, text="red", k=3, tags=("calm",), text_weight=0.6) == [("red.png", 0.4)]


def test_an_image_only_query_ignores_text_weight(crossed_folder: Path, tmp_path: Path) -> None:
    library = open_crossed(crossed_folder, tmp_path / "store")
    red = np.zeros((8, 8, 3), dtype=np.float32)
    red[..., 0] = 1.0
    images_only = library.query(StyleQuery(image=red, k=3))
    assert images_only[0].item_id == "red.png"
    assert library.query(StyleQuery(image=red, k=3, text_weight=1.0)) == images_only
    assert StyleQuery(image=red, text_weight=0.7).applied_text_weight == 0.0
    assert StyleQuery(text="red", image=red, image_weight=0.25).prompt_share == 0.75


def test_text_weight_out_of_range_is_refused() -> None:
    with pytest.raises(InvalidParameterError, match=r"text_weight is 1.5; use 0 \(style images only\) to 1"):
        StyleQuery(text="red", text_weight=1.5)


def test_words_are_embedded_once_and_an_edit_re_embeds_only_that_style(crossed_folder: Path, tmp_path: Path) -> None:
    first = GeometryEmbedder()
    open_crossed(crossed_folder, tmp_path / "store", first)
    assert first.texts_embedded == 3  # one per style, by the sync

    again = GeometryEmbedder()
    library = open_crossed(crossed_folder, tmp_path / "store", again)
    assert again.texts_embedded == 0 and again.images_embedded == 0
    assert ranked(library, text="red", k=1, text_weight=1.0) == [("blue.png", 1.0)]
    assert again.texts_embedded == 1  # the prompt

    (crossed_folder / "green.json").write_text('{"name": "Red meadow"}', encoding="utf-8")
    report = library.sync()
    assert report.metadata_updated == ["green.png"] and report.embedded == 0
    assert again.texts_embedded == 2  # the edited style's words, nothing else
    assert [m.item_id for m in library.query(StyleQuery(text="red", k=2, text_weight=1.0))] == ["blue.png", "green.png"]

    # A renamed file keeps its sidecar's words: found under its new name, nothing embedded.
    for ext in (".png", ".json"):
        (crossed_folder / f"blue{ext}").rename(crossed_folder / f"fire{ext}")
    embedded_before = again.texts_embedded
    report = library.sync()
    assert report.renamed == [("blue.png", "fire.png")] and again.texts_embedded == embedded_before
    assert [m.item_id for m in library.query(StyleQuery(text="red", k=1, text_weight=1.0))] == ["fire.png"]


def test_a_library_synced_before_words_were_read_embeds_them_on_the_first_mixed_query(
    crossed_folder: Path, tmp_path: Path
) -> None:
    library = open_crossed(crossed_folder, tmp_path / "store")
    with library.cache._db:  # as a store written by the version before words were embedded
        library.cache._db.execute("DELETE FROM embeddings WHERE model_key LIKE '%:text'")
    embedder = GeometryEmbedder()
    reopened = open_crossed(crossed_folder, tmp_path / "store", embedder)
    assert embedder.texts_embedded == 0  # an unchanged library's sync embeds nothing
    assert ranked(reopened, text="red", k=1, text_weight=1.0) == [("blue.png", 1.0)]
    assert embedder.texts_embedded == 1 + 3  # the prompt, then every style's words once
    reopened.query(StyleQuery(text="red", k=1, text_weight=0.5))
    assert embedder.texts_embedded == 1 + 3 + 1


def test_relative_standing_is_z_score_and_rank_percentile() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.4])
    mean, std = scores.mean(), scores.std()
    (z_top, p_top), (z_low, p_low), (z_mid, p_mid) = relative_standing(scores, [3, 0, 2])
    assert z_top == pytest.approx((0.4 - mean) / std) and p_top == 87.5  # 3 of the 4 others below, 1 tied (1/2)
    assert z_low == pytest.approx((0.1 - mean) / std) and p_low == 0.0
    assert p_mid == 50.0
    assert relative_standing(np.array([0.3, 0.3]), [0]) == [(0.0, 50.0)]  # all alike: nothing stands out
    assert relative_standing(np.array([0.3]), [0, -1]) == [(0.0, 100.0), (0.0, 100.0)]


def test_matches_carry_their_standing_among_all_the_library_styles(colour_library: StyleLibrary) -> None:
    # "blue": blue 1, teal 0.707, red = green = orange 0 (the geometry's tiny marker component aside).
    every = np.array([1.0, 1 / np.sqrt(2), 0.0, 0.0, 0.0])
    top, second = colour_library.query(StyleQuery(text="blue", k=2))
    assert top.item_id == "blue.png" and top.percentile == 100.0
    assert top.z_score == pytest.approx((1.0 - every.mean()) / every.std(), abs=5e-3)
    assert second.item_id == "teal.png" and second.percentile == 75.0
    # Filtered to the warm styles, the best of them still stands at the bottom of the whole library.
    warm = colour_library.query(StyleQuery(text="blue", k=1, tags=("warm",)))[0]
    assert warm.z_score == pytest.approx((0.0 - every.mean()) / every.std(), abs=5e-3) and warm.z_score < 0
    assert warm.percentile <= 25.0


def test_the_same_score_reads_differently_in_libraries_of_different_spread(tmp_path: Path) -> None:
    """A raw cosine says nothing on its own: 0.89 is the top of one library and middling in another."""
    close, far = tmp_path / "close", tmp_path / "far"
    solid(close / "orange.png", COLOURS["orange"])
    solid(far / "orange.png", COLOURS["orange"])
    for n, colour in enumerate([(1.0, 0.4, 0.0), (1.0, 0.45, 0.05), (1.0, 0.6, 0.0)]):
        solid(close / f"near_{n}.png", colour)
    for n, colour in enumerate([(0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.0, 0.6, 0.6)]):
        solid(far / f"other_{n}.png", colour)
    scores = {}
    for folder in (close, far):
        library, _ = open_library([LibraryRoot(folder, "")], GeometryEmbedder(), tmp_path / f"store_{folder.name}")
        scores[folder.name] = {m.item_id: m for m in library.query(StyleQuery(text="red", k=4))}["orange.png"]
    assert scores["close"].score == pytest.approx(scores["far"].score)
    assert scores["far"].z_score > 1.5 > scores["close"].z_score


def test_one_index_per_library_refuses_another_model_until_rebuilt(colour_folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    open_library([LibraryRoot(colour_folder, "")], GeometryEmbedder("geometry@0000"), store)
    other = GeometryEmbedder("geometry@1111")  # another model, same dimension: only the recorded key tells
    with pytest.raises(LibraryModelMismatchError, match=r"'geometry@0000'.*'geometry@1111'.*rebuild_index"):
        open_library([LibraryRoot(colour_folder, "")], other, store)
    library, report = open_library([LibraryRoot(colour_folder, "")], other, store, rebuild=True)
    assert report.total == len(COLOURS) and other.images_embedded == len(COLOURS)
    assert [c.name for c in library.index._get_client().list_collections()] == [library.collection]
    # Back to the first model: refused again, and its rebuild embeds nothing (its vectors are cached).
    first_again = GeometryEmbedder("geometry@0000")
    with pytest.raises(LibraryModelMismatchError):
        open_library([LibraryRoot(colour_folder, "")], first_again, store)
    open_library([LibraryRoot(colour_folder, "")], first_again, store, rebuild=True)
    assert first_again.images_embedded == 0


def test_collections_older_versions_kept_per_model_are_dropped(colour_folder: Path, tmp_path: Path) -> None:
    library = StyleLibrary([LibraryRoot(colour_folder, "")], GeometryEmbedder(), tmp_path / "store")
    client = library.index._get_client()
    legacy = [f"{library.collection}-geometry-0000", f"{library.collection}-clip-vit-base-patch32-1a2b"]
    for name in legacy:
        client.get_or_create_collection(name, embedding_function=None)
    client.get_or_create_collection("styles-another-library-0123456789", embedding_function=None)
    library.sync()
    names = sorted(c.name for c in library.index._get_client().list_collections())  # the sync reopened the client
    assert names == sorted([library.collection, "styles-another-library-0123456789"])


def test_tiny_clip_reads_the_styles_words_end_to_end(tiny_clip: ClipEmbedder, tmp_path: Path) -> None:
    """The shipped styles with the real (tiny, random) CLIP: a prompt equal to a style's words finds that style."""
    library, report = open_library([LibraryRoot(SHIPPED_LIBRARY, "builtin", writable=False)], tiny_clip,
                                   tmp_path / "store")
    records = [r for r in library.entries() if r.error is None]
    assert report.total == len(records) > 5
    target = records[3]
    prompt = style_text(target.meta)
    images_only = library.query(StyleQuery(text=prompt, k=3))
    vector = tiny_clip.embed_texts([prompt])[0]
    assert [(m.item_id, m.score) for m in images_only] == [(h.item_id, h.score) for h in library.search(vector, 3)]
    words_only = library.query(StyleQuery(text=prompt, k=3, text_weight=1.0))
    assert words_only[0].item_id == target.item_id and words_only[0].score == pytest.approx(1.0, abs=1e-3)
    assert words_only[0].percentile == 100.0 and words_only[0].z_score > 1.0
    mixed = library.query(StyleQuery(text=prompt, k=len(records), text_weight=0.5))
    by_id = {m.item_id: m.score for m in mixed}
    image_scores = {m.item_id: m.score for m in library.query(StyleQuery(text=prompt, k=len(records)))}
    word_scores = {m.item_id: m.score for m in library.query(StyleQuery(text=prompt, k=len(records), text_weight=1))}
    for item_id, score in by_id.items():
        assert score == pytest.approx(0.5 * image_scores[item_id] + 0.5 * word_scores[item_id], abs=1e-4)
