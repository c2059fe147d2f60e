"""Library sync by content hash: add, modify, rename, delete, bad files, lost index, path escapes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sketch_rag.errors import InvalidImageError, LibraryError, LibraryModelMismatchError
from sketch_rag.retrieval.folder import LibraryRoot
from sketch_rag.retrieval.library import StyleLibrary, open_library
from sketch_rag.retrieval.query import StyleQuery
from sketch_rag.retrieval.sync import LibraryStores
from tests.helpers.geometry import COLOURS, GeometryEmbedder, solid


def reopen(folder: Path, store: Path, embedder: GeometryEmbedder | None = None, **kw: object):
    return open_library([LibraryRoot(folder, "")], embedder or GeometryEmbedder(), store, **kw)


def test_unchanged_library_embeds_nothing(colour_folder: Path, tmp_path: Path) -> None:
    _, first = reopen(colour_folder, tmp_path / "store")
    assert first.embedded == len(COLOURS) and first.total == len(COLOURS)
    embedder = GeometryEmbedder()
    library, second = reopen(colour_folder, tmp_path / "store", embedder)
    assert second.embedded == 0 and embedder.images_embedded == 0
    assert not (second.added or second.changed or second.removed) and second.generation == first.generation
    assert library.query(StyleQuery(text="green"))[0].item_id == "green.png"


def test_touched_file_updates_its_state_row_without_touching_the_index(
    colour_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library, _ = reopen(colour_folder, tmp_path / "store")
    os.utime(colour_folder / "red.png", ns=(1_000_000_000, 1_000_000_000))
    puts: list[object] = []
    monkeypatch.setattr(type(library.index), "put", lambda self, ids, *a: puts.append(ids))
    report = library.sync()
    assert report.embedded == 0 and not (report.added or report.changed or report.metadata_updated) and not puts
    assert library.synced_records()["red.png"].mtime_ns == 1_000_000_000
    assert library.query(StyleQuery(text="red"))[0].item_id == "red.png"


def test_add_modify_rename_delete(colour_folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    reopen(colour_folder, store)
    solid(colour_folder / "sub" / "blue2.png", COLOURS["blue"], marker=7)  # added
    solid(colour_folder / "red.png", COLOURS["green"], marker=3)  # modified: now green
    (colour_folder / "teal.png").rename(colour_folder / "cyan.png")  # renamed
    (colour_folder / "orange.png").unlink()  # deleted
    embedder = GeometryEmbedder()
    library, report = reopen(colour_folder, store, embedder)
    assert report.added == ["sub/blue2.png"] and report.changed == ["red.png"]
    assert report.renamed == [("teal.png", "cyan.png")] and report.removed == ["orange.png"]
    assert embedder.images_embedded == 2  # the rename reused its cached embedding
    assert report.total == 5 and library.index.count() == 5
    assert sorted(m.item_id for m in library.query(StyleQuery(text="green", k=2))) == ["green.png", "red.png"]
    assert [m.item_id for m in library.query(StyleQuery(text="blue", k=2))] == ["blue.png", "sub/blue2.png"]


def test_rebuild_forgets_styles_deleted_since_the_last_sync(colour_folder: Path, tmp_path: Path) -> None:
    reopen(colour_folder, tmp_path / "store")
    (colour_folder / "orange.png").unlink()
    library, report = reopen(colour_folder, tmp_path / "store", rebuild=True)
    assert report.total == len(COLOURS) - 1 and library.index.count() == len(COLOURS) - 1
    assert "orange.png" not in {m.item_id for m in library.query(StyleQuery(text="orange", k=len(COLOURS)))}


def test_metadata_change_updates_names_and_tags_without_embedding(colour_folder: Path, tmp_path: Path) -> None:
    reopen(colour_folder, tmp_path / "store")
    (colour_folder / "blue.json").write_text(json.dumps({"name": "Deep sea", "tags": ["cold"]}), encoding="utf-8")
    embedder = GeometryEmbedder()
    library, report = reopen(colour_folder, tmp_path / "store", embedder)
    assert report.metadata_updated == ["blue.png"] and embedder.images_embedded == 0
    match = library.query(StyleQuery(text="red", tags=("cold",)))[0]
    assert (match.item_id, match.name) == ("blue.png", "Deep sea")


def test_metadata_comes_from_manifest_and_sidecars_in_any_folder(colour_folder: Path, tmp_path: Path) -> None:
    solid(colour_folder / "sub" / "library.png", COLOURS["blue"])
    (colour_folder / "sub" / "library.json").write_text('{"name": "not a sidecar"}', encoding="utf-8")
    solid(colour_folder / "sub" / "deep.png", COLOURS["green"])
    (colour_folder / "sub" / "deep.JSON").write_text('{"name": "Deep green", "tags": ["Cold"]}', encoding="utf-8")
    (colour_folder / "library.json").write_text(
        json.dumps([{"file": "red.png", "name": "Manifest red", "tags": ["hot"]}]), encoding="utf-8"
    )
    library, _ = reopen(colour_folder, tmp_path / "store")
    meta = {r.item_id: r.meta for r in library.entries()}
    assert meta["sub/deep.png"].name == "Deep green" and meta["sub/deep.png"].tags == ("cold",)
    assert meta["sub/library.png"].name == "library"  # a folder's library.json is a manifest name, not a sidecar
    assert meta["red.png"].name == "Manifest red" and meta["red.png"].tags == ("warm",)  # the sidecar wins
    assert meta["orange.png"].name == "Orange glow"


def test_unreadable_and_huge_images_are_skipped_and_reported(colour_folder: Path, tmp_path: Path) -> None:
    (colour_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (colour_folder / "empty.jpg").write_bytes(b"")
    Image.new("1", (10_001, 10_001)).save(colour_folder / "huge.png")
    library, report = reopen(colour_folder, tmp_path / "store")
    skipped = {Path(f).name: reason for f, reason in report.skipped}
    assert set(skipped) == {"broken.png", "empty.jpg", "huge.png"}
    assert "MP" in skipped["huge.png"] and report.total == len(COLOURS)
    assert library.query(StyleQuery(text="red"))[0].item_id == "red.png"
    # Still reported on the next sync, without decoding them again.
    _, again = reopen(colour_folder, tmp_path / "store")
    assert {Path(f).name for f, _ in again.skipped} == set(skipped) and again.embedded == 0
    listed = {r.item_id: r.error for r in library.entries()}
    assert listed["broken.png"] and listed["red.png"] is None


def test_deleted_index_folder_is_rebuilt_from_cached_embeddings(
    colour_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sketch_rag.retrieval import index as index_module

    # Flush to the HNSW files after 2 items, so the vectors live only there (as in any real-sized library).
    monkeypatch.setattr(index_module, "HNSW_BATCH_SIZE", 2)
    monkeypatch.setattr(index_module, "HNSW_SYNC_THRESHOLD", 2)
    store = tmp_path / "store"
    library, _ = reopen(colour_folder, store)
    library.close()

    index_module._client(store / "chroma", fresh=True)  # let go of the files, as a new process would
    segment_dirs = [p for p in (store / "chroma").iterdir() if p.is_dir()]
    assert segment_dirs, "expected Chroma's HNSW segment folder"
    for folder in segment_dirs:
        shutil.rmtree(folder)
    index_module._client(store / "chroma", fresh=True)
    embedder = GeometryEmbedder()
    library, report = reopen(colour_folder, store, embedder)
    assert report.rebuilt and embedder.images_embedded == 0
    assert [m.item_id for m in library.query(StyleQuery(text="blue", k=5))][0] == "blue.png"
    assert len(library.query(StyleQuery(text="blue", k=5))) == 5


def test_deleted_store_is_rebuilt_from_the_folder(colour_folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    reopen(colour_folder, store)
    from sketch_rag.retrieval import index as index_module

    index_module._clients.pop(str(store / "chroma")).close()  # as a new process would find it
    shutil.rmtree(store)
    library, report = reopen(colour_folder, store)
    assert report.total == len(COLOURS) and len(report.added) == len(COLOURS)


def test_other_model_is_refused_then_rebuilt_on_request(colour_folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    reopen(colour_folder, store)
    other = GeometryEmbedder(model_key="geometry@0000", dim=6)  # same name, other dimension
    with pytest.raises(LibraryModelMismatchError, match=r"built with embedding model 'geometry@0000' \(8-d\)"):
        reopen(colour_folder, store, other)
    library, report = reopen(colour_folder, store, other, rebuild=True)
    assert report.total == len(COLOURS) and library.index.dim == 6


def test_add_writes_image_and_sidecar_and_refuses_escapes(colour_folder: Path, tmp_path: Path) -> None:
    library, _ = reopen(colour_folder, tmp_path / "store")
    pixels = np.zeros((12, 12, 3), dtype=np.float32)
    pixels[..., 0] = 1.0
    match = library.add(pixels, "Rouge pur", "warm, Pure")
    assert match.item_id == "rouge_pur.png" and (colour_folder / "rouge_pur.png").is_file()
    assert json.loads((colour_folder / "rouge_pur.json").read_text())["tags"] == ["warm", "pure"]
    assert {m.item_id for m in library.query(StyleQuery(text="red", k=2))} == {"red.png", "rouge_pur.png"}
    assert library.add(pixels, "Rouge pur", "").item_id == "rouge_pur_2.png"
    for bad in ("../outside.png", "/etc/x.png", "a/../../b.png"):
        with pytest.raises(LibraryError, match="inside"):
            library.add(pixels, "x", "", filename=bad)
    assert not (tmp_path / "outside.png").exists()


def test_add_many_checks_everything_first_and_syncs_once(
    colour_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library, _ = reopen(colour_folder, tmp_path / "store")
    syncs: list[LibraryStores] = []
    real_sync = LibraryStores.sync

    def counted_sync(stores: LibraryStores, *args: Any, **kw: Any) -> Any:
        syncs.append(stores)
        return real_sync(stores, *args, **kw)

    monkeypatch.setattr(LibraryStores, "sync", counted_sync)
    red, blue = np.zeros((8, 8, 3), dtype=np.float32), np.zeros((8, 8, 3), dtype=np.float32)
    red[..., 0], blue[..., 2] = 1.0, 1.0
    with pytest.raises(InvalidImageError):
        library.add_many([red, np.full((8, 8, 3), np.nan, dtype=np.float32)], ["a", "b"])
    assert sorted(p.name for p in colour_folder.glob("a*")) == []  # nothing written when one image is bad
    added = library.add_many([red, blue, red], ["Batch", "Batch", "Batch"], ["batch"])
    assert [m.item_id for m in added] == ["batch.png", "batch_2.png", "batch_3.png"]
    assert len(syncs) == 1
    assert [m.item_id for m in library.query(StyleQuery(text="blue", k=1, tags=("batch",)))] == ["batch_2.png"]


def test_empty_library_gives_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    library, report = reopen(tmp_path / "empty", tmp_path / "store")
    assert report.total == 0
    with pytest.raises(LibraryError, match="0 indexed images; add images to"):
        library.query(StyleQuery(text="red"))


def test_read_only_library_refuses_add(colour_folder: Path, tmp_path: Path) -> None:
    library = StyleLibrary([LibraryRoot(colour_folder, "builtin", writable=False)], GeometryEmbedder(),
                           tmp_path / "store")
    with pytest.raises(LibraryError, match="no writable folder"):
        library.add(np.zeros((4, 4, 3), dtype=np.float32), "x")
