"""Editing a library outside a workflow: name/tag edits in sidecars, removal to a trash folder, thumbnails."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sketch_rag.access import AccessPolicy
from sketch_rag.errors import AccessDeniedError, InvalidImageError, LibraryError, StyleNotFoundError
from sketch_rag.retrieval import thumbnails as thumbnails_module
from sketch_rag.retrieval.folder import LibraryRoot
from sketch_rag.retrieval.library import StyleLibrary, open_library
from sketch_rag.retrieval.library_edits import TRASH_RECORD, edit_style, find_style, style_file, trash_style
from sketch_rag.retrieval.query import StyleQuery
from sketch_rag.retrieval.style_labels import MAX_NAME_CHARS, MAX_TAG_CHARS, MAX_TAGS
from sketch_rag.retrieval.thumbnails import THUMBNAIL_SIDE, content_hash, thumbnail, thumbnail_path
from tests.helpers.geometry import GeometryEmbedder, solid

NOON = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def read_only_library(colour_folder: Path, tmp_path: Path) -> StyleLibrary:
    library, _ = open_library([LibraryRoot(colour_folder, "builtin", writable=False)], GeometryEmbedder(),
                              tmp_path / "store")
    return library


# -- edits ---------------------------------------------------------------------------------------


def test_an_edit_rewrites_name_and_tags_in_the_sidecar_keeps_its_other_keys_and_reindexes_without_embedding(
    colour_folder: Path, tmp_path: Path
) -> None:
    (colour_folder / "orange.json").write_text(
        json.dumps({"name": "Orange glow", "tags": ["warm"], "artist": "Nobody", "custom": 1}), encoding="utf-8"
    )
    embedder = GeometryEmbedder()
    library, _ = open_library([LibraryRoot(colour_folder, "")], embedder, tmp_path / "store")
    embedded = embedder.images_embedded

    record = edit_style(library, "orange.png", name="  Sunset orange ", tags="Dusk, warm, dusk")

    assert json.loads((colour_folder / "orange.json").read_text(encoding="utf-8")) == {
        "name": "Sunset orange", "tags": ["dusk", "warm"], "artist": "Nobody", "custom": 1}
    assert record.meta.name == "Sunset orange" and record.meta.tags == ("dusk", "warm")
    assert record.meta.text["artist"] == "Nobody"
    assert embedder.images_embedded == embedded, "a metadata edit must not embed the image again"
    found = library.query(StyleQuery(text="red", tags=("dusk",)))
    assert [m.item_id for m in found] == ["orange.png"] and found[0].name == "Sunset orange"


def test_editing_a_style_without_sidecar_creates_one_with_only_the_edited_keys(colour_library: StyleLibrary,
                                                                                colour_folder: Path) -> None:
    record = edit_style(colour_library, "green.png", tags=["leafy"])
    assert json.loads((colour_folder / "green.json").read_text(encoding="utf-8")) == {"tags": ["leafy"]}
    assert record.meta.name == "green" and record.meta.tags == ("leafy",)


def test_a_same_size_rewrite_still_changes_the_sidecars_mtime(colour_library: StyleLibrary,
                                                              colour_folder: Path) -> None:
    edit_style(colour_library, "red.png", tags=["aaaa"])
    before = (colour_folder / "red.json").stat()
    edit_style(colour_library, "red.png", tags=["bbbb"])
    after = (colour_folder / "red.json").stat()
    assert after.st_size == before.st_size and after.st_mtime_ns > before.st_mtime_ns


def test_edits_of_read_only_styles_are_refused_and_write_nothing(read_only_library: StyleLibrary,
                                                                 colour_folder: Path) -> None:
    before = files_under(colour_folder)
    with pytest.raises(AccessDeniedError, match="read-only library folder"):
        edit_style(read_only_library, "builtin/red.png", name="mine now")
    assert files_under(colour_folder) == before


def test_an_unreadable_sidecar_is_refused_not_overwritten(colour_library: StyleLibrary, colour_folder: Path) -> None:
    (colour_folder / "blue.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(LibraryError, match="blue.json cannot be read as JSON"):
        edit_style(colour_library, "blue.png", name="Deep blue")
    assert (colour_folder / "blue.json").read_text(encoding="utf-8") == "{not json"


@pytest.mark.parametrize("item_id", ["nope.png", "../styles/red.png", "/etc/passwd", "..%2fred.png", "", "red"])
def test_ids_are_looked_up_never_opened(colour_library: StyleLibrary, item_id: str) -> None:
    with pytest.raises(StyleNotFoundError, match="names no style"):
        edit_style(colour_library, item_id, name="x")


@pytest.mark.parametrize(("name", "tags", "message"), [
    ("", None, "name is empty"),
    ("two\nlines", None, "control characters"),
    ("x" * 201, None, "at most 200"),
    (None, ["ok", 3], "must all be text"),
    (None, ["a\tb"], "control characters"),
    (None, None, "changes nothing"),
])
def test_bad_names_and_tags_are_refused_before_anything_is_written(
    colour_library: StyleLibrary, colour_folder: Path, name: str | None, tags: object, message: str
) -> None:
    before = files_under(colour_folder)
    with pytest.raises(LibraryError, match=message):
        edit_style(colour_library, "teal.png", name=name, tags=tags)
    assert files_under(colour_folder) == before


@pytest.mark.parametrize(("name", "tags", "message"), [
    (" ", "", "name is empty"),
    ("two\nlines", "", "control characters"),
    ("x" * (MAX_NAME_CHARS + 1), "", f"at most {MAX_NAME_CHARS}"),
    ("ok", ["ok", 3], "must all be text"),
    ("ok", ["a\tb"], "control characters"),
    ("ok", ["t" * (MAX_TAG_CHARS + 1)], f"longer than {MAX_TAG_CHARS}"),
    ("ok", [f"tag {n}" for n in range(MAX_TAGS + 1)], f"at most {MAX_TAGS}"),
])
def test_adding_refuses_what_an_edit_refuses(
    colour_library: StyleLibrary, colour_folder: Path, name: str, tags: object, message: str
) -> None:
    before = files_under(colour_folder)
    with pytest.raises(LibraryError, match=message):
        colour_library.add_many([np.full((8, 8, 3), 0.5, dtype=np.float32)], [name], tags)
    with pytest.raises(LibraryError, match=message):
        edit_style(colour_library, "teal.png", name=name, tags=tags)
    assert files_under(colour_folder) == before


def test_an_access_policy_that_does_not_allow_the_folder_refuses_the_edit(colour_library: StyleLibrary,
                                                                          colour_folder: Path,
                                                                          tmp_path: Path) -> None:
    policy = AccessPolicy.for_comfyui(writable=[tmp_path / "elsewhere"], read_only=[], user_dir=tmp_path / "user")
    with pytest.raises(AccessDeniedError, match="outside the folders"):
        edit_style(colour_library, "teal.png", name="teal", access=policy)
    assert not (colour_folder / "teal.json").exists()


def test_a_style_swapped_for_a_link_out_of_its_folder_is_refused(colour_library: StyleLibrary,
                                                                 colour_folder: Path, tmp_path: Path) -> None:
    secret = solid(tmp_path / "secret" / "secret.png", (1.0, 0.0, 0.0))
    record = find_style(colour_library, "red.png")
    (colour_folder / "red.png").unlink()
    (colour_folder / "red.png").symlink_to(secret)
    with pytest.raises(AccessDeniedError, match="outside its library folder"):
        style_file(colour_library, record)
    with pytest.raises(AccessDeniedError):
        trash_style(colour_library, "red.png", tmp_path / "trash")
    assert secret.is_file()


# -- trash ---------------------------------------------------------------------------------------


def test_removing_moves_image_and_sidecar_to_a_stamped_trash_folder_and_the_index_follows(
    colour_library: StyleLibrary, colour_folder: Path, tmp_path: Path
) -> None:
    image, sidecar = (colour_folder / "orange.png").read_bytes(), (colour_folder / "orange.json").read_bytes()
    trashed = trash_style(colour_library, "orange.png", tmp_path / "trash", now=NOON)

    assert trashed.folder == (tmp_path / "trash" / "20261202T120000.000000Z").resolve()
    assert not (colour_folder / "orange.png").exists() and not (colour_folder / "orange.json").exists()
    assert (trashed.folder / "library" / "orange.png").read_bytes() == image
    assert (trashed.folder / "library" / "orange.json").read_bytes() == sidecar
    record = json.loads((trashed.folder / TRASH_RECORD).read_text(encoding="utf-8"))
    assert record["id"] == "orange.png" and record["name"] == "Orange glow"
    assert record["files"][0]["from"] == str(colour_folder.resolve() / "orange.png")
    assert "orange.png" not in {r.item_id for r in colour_library.entries()}
    assert "orange.png" not in {m.item_id for m in colour_library.query(StyleQuery(text="red", k=5))}


def test_two_removals_in_the_same_instant_get_their_own_trash_folders(colour_library: StyleLibrary,
                                                                      tmp_path: Path) -> None:
    first = trash_style(colour_library, "red.png", tmp_path / "trash", now=NOON)
    second = trash_style(colour_library, "blue.png", tmp_path / "trash", now=NOON)
    assert first.folder != second.folder and second.folder.name.endswith("-2")
    assert (first.folder / "library" / "red.png").is_file() and (second.folder / "library" / "blue.png").is_file()


def test_a_sidecar_shared_with_another_image_is_copied_not_moved(tmp_path: Path) -> None:
    folder = tmp_path / "styles"
    solid(folder / "dawn.png", (1.0, 0.5, 0.0))
    Image.fromarray(np.full((16, 16, 3), (20, 20, 220), dtype=np.uint8)).save(folder / "dawn.jpg")
    (folder / "dawn.json").write_text('{"tags": ["shared"]}', encoding="utf-8")
    library, _ = open_library([LibraryRoot(folder, "")], GeometryEmbedder(), tmp_path / "store")

    trashed = trash_style(library, "dawn.png", tmp_path / "trash")

    assert (folder / "dawn.json").is_file() and (trashed.folder / "library" / "dawn.json").is_file()
    assert find_style(library, "dawn.jpg").meta.tags == ("shared",)


def test_removal_of_read_only_styles_is_refused_and_moves_nothing(read_only_library: StyleLibrary,
                                                                   colour_folder: Path) -> None:
    before = files_under(colour_folder)
    with pytest.raises(AccessDeniedError, match="read-only"):
        trash_style(read_only_library, "builtin/red.png", colour_folder.parent / "trash")
    assert files_under(colour_folder) == before and not (colour_folder.parent / "trash").exists()


def test_a_trash_folder_inside_the_library_is_refused(colour_library: StyleLibrary, colour_folder: Path) -> None:
    before = files_under(colour_folder)
    with pytest.raises(LibraryError, match="indexed again"):
        trash_style(colour_library, "red.png", colour_folder / "trash")
    assert files_under(colour_folder) == before


# -- thumbnails ----------------------------------------------------------------------------------


def test_a_thumbnail_is_made_once_at_256_px_and_reused_by_content(
    colour_library: StyleLibrary, colour_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = colour_folder / "wide.png"
    Image.fromarray(np.full((300, 900, 3), (250, 10, 10), dtype=np.uint8)).save(big)
    colour_library.sync()
    record = find_style(colour_library, "wide.png")
    cache = tmp_path / "thumbnails"

    made = thumbnail(big, content_hash(big, record), cache)
    with Image.open(made) as opened:
        assert opened.format == "JPEG" and max(opened.size) == THUMBNAIL_SIDE and opened.size == (256, 85)
    assert made == thumbnail_path(cache, record.sha256)

    decoded: list[Path] = []
    monkeypatch.setattr(thumbnails_module, "open_rgb", lambda path, side: decoded.append(path))
    shutil.copyfile(big, colour_folder / "copy_of_wide.png")
    assert thumbnail(colour_folder / "copy_of_wide.png", record.sha256, cache) == made
    assert decoded == [], "a cached thumbnail (same content, any file name) is never decoded again"
    assert not list(cache.rglob("*.partial"))


def test_a_file_changed_since_the_sync_gets_a_new_content_hash(colour_library: StyleLibrary,
                                                               colour_folder: Path) -> None:
    record = find_style(colour_library, "teal.png")
    assert content_hash(colour_folder / "teal.png", record) == record.sha256
    solid(colour_folder / "teal.png", (0.0, 0.2, 0.9), marker=7)
    os.utime(colour_folder / "teal.png", ns=(record.mtime_ns + 10**9, record.mtime_ns + 10**9))
    assert content_hash(colour_folder / "teal.png", record) != record.sha256


def test_an_unreadable_image_leaves_no_thumbnail_and_a_bad_hash_is_no_file_name(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(InvalidImageError):
        thumbnail(broken, "a" * 64, tmp_path / "thumbnails")
    assert not (tmp_path / "thumbnails").exists() or not list((tmp_path / "thumbnails").rglob("*.jpg"))
    with pytest.raises(ValueError, match="not a sha256"):
        thumbnail_path(tmp_path, "../../etc/passwd")
