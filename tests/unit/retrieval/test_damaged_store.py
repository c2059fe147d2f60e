"""A damaged store heals from the folder: moved aside (never deleted), rebuilt from the cache, said in one line."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sketch_rag.cli import library_cmd
from sketch_rag.cli.main import main
from sketch_rag.errors import LibraryError
from sketch_rag.retrieval import index as index_module
from sketch_rag.retrieval import sqlite_files
from sketch_rag.retrieval.folder import LibraryRoot
from sketch_rag.retrieval.library import SHIPPED_LIBRARY, StyleLibrary, open_library
from sketch_rag.retrieval.query import StyleQuery
from sketch_rag.retrieval.sqlite_files import damage
from tests.helpers import geometry
from tests.helpers.geometry import COLOURS, GeometryEmbedder
from tests.helpers.stores import DAMAGES, garbage, moved_aside, zero_bytes

HELPER = Path(geometry.__file__)


def open_colours(folder: Path, store: Path, embedder: GeometryEmbedder | None = None, **kw: object):
    return open_library([LibraryRoot(folder, "")], embedder or GeometryEmbedder(), store, **kw)


def let_go(library: StyleLibrary, store: Path) -> None:
    """Close every file of the library, as if its process had ended (the next open starts from disk)."""
    library.close()
    with index_module._clients_lock:
        index_module._close_client(str(store / "chroma"))


def answers(library: StyleLibrary) -> dict[str, list[tuple[str, float]]]:
    """Every colour's full ranking with scores: two libraries answer alike only if their indexes hold the same."""
    return {
        colour: [(m.item_id, round(m.score, 5)) for m in library.query(StyleQuery(text=colour, k=len(COLOURS)))]
        for colour in COLOURS
    }


@pytest.fixture
def fresh_answers(colour_folder: Path, tmp_path: Path) -> dict[str, list[tuple[str, float]]]:
    library, _ = open_colours(colour_folder, tmp_path / "fresh_store")
    try:
        return answers(library)
    finally:
        let_go(library, tmp_path / "fresh_store")


@pytest.fixture
def synced_store(colour_folder: Path, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    library, _ = open_colours(colour_folder, store)
    let_go(library, store)
    return store


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("rebuild", [False, True], ids=["sync", "rebuild"])
def test_damaged_chroma_database_is_moved_aside_and_rebuilt_without_embedding(
    how: str, rebuild: bool, colour_folder: Path, synced_store: Path, fresh_answers: dict
) -> None:
    database = synced_store / "chroma" / "chroma.sqlite3"
    DAMAGES[how](database)
    damaged_bytes = database.read_bytes()
    embedder = GeometryEmbedder()
    library, report = open_colours(colour_folder, synced_store, embedder, rebuild=rebuild)

    assert embedder.images_embedded == 0 and report.embedded == 0
    assert answers(library) == fresh_answers
    [old] = moved_aside(synced_store, "chroma")
    assert (old / "chroma.sqlite3").read_bytes() == damaged_bytes  # kept as it was, never deleted
    [line] = report.healed
    assert "style index store" in line and f"moved it to {old} " in line and "\n" not in line
    # Healed once: the next open finds a healthy store and says nothing.
    let_go(library, synced_store)
    _, again = open_colours(colour_folder, synced_store)
    assert again.healed == [] and not again.rebuilt and moved_aside(synced_store, "chroma") == [old]


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_sync_state_is_rebuilt_from_the_folder_without_embedding(
    how: str, colour_folder: Path, synced_store: Path, fresh_answers: dict
) -> None:
    DAMAGES[how](synced_store / "state.sqlite3")
    damaged_bytes = (synced_store / "state.sqlite3").read_bytes()
    embedder = GeometryEmbedder()
    library, report = open_colours(colour_folder, synced_store, embedder)

    assert embedder.images_embedded == 0 and report.total == len(COLOURS)
    assert answers(library) == fresh_answers
    assert {r.item_id: r.meta.name for r in library.entries()}["orange.png"] == "Orange glow"  # re-read
    [old] = moved_aside(synced_store, "state.sqlite3")
    assert old.read_bytes() == damaged_bytes
    [line] = report.healed
    assert line.startswith(f"The sync state {synced_store / 'state.sqlite3'} was damaged")
    assert f"moved it to {old} " in line and "rebuilt it from the library folder" in line


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_embedding_cache_is_moved_aside_and_the_images_embedded_again(
    how: str, colour_folder: Path, synced_store: Path, fresh_answers: dict
) -> None:
    DAMAGES[how](synced_store / "embeddings.sqlite3")
    damaged_bytes = (synced_store / "embeddings.sqlite3").read_bytes()
    embedder = GeometryEmbedder()
    library, report = open_colours(colour_folder, synced_store, embedder)

    assert embedder.images_embedded == len(COLOURS) == report.embedded
    assert answers(library) == fresh_answers
    [old] = moved_aside(synced_store, "embeddings.sqlite3")
    assert old.read_bytes() == damaged_bytes
    [line] = report.healed
    assert "embedding cache" in line and f"moved it to {old} " in line and "embedded again" in line
    # The new cache holds every vector again: a rebuild embeds nothing.
    let_go(library, synced_store)
    embedder = GeometryEmbedder()
    _, rebuilt = open_colours(colour_folder, synced_store, embedder, rebuild=True)
    assert embedder.images_embedded == 0 and rebuilt.total == len(COLOURS)


def test_store_damaged_while_open_heals_on_the_next_sync_and_query(
    colour_folder: Path, tmp_path: Path, fresh_answers: dict
) -> None:
    store = tmp_path / "store"
    library, _ = open_colours(colour_folder, store)
    garbage(store / "chroma" / "chroma.sqlite3")  # in place, under the open client
    report = library.sync()
    assert len(report.healed) == 1 and library.embedder.images_embedded == len(COLOURS)  # only the first sync's
    assert answers(library) == fresh_answers

    garbage(store / "chroma" / "chroma.sqlite3")
    assert answers(library) == fresh_answers  # a query heals too
    assert len(moved_aside(store, "chroma")) == 2


def test_unreadable_hnsw_files_are_moved_aside_with_their_store(
    colour_folder: Path, tmp_path: Path, fresh_answers: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Flush to the HNSW files after 2 items, so the vectors live only there (as in any real-sized library).
    monkeypatch.setattr(index_module, "HNSW_BATCH_SIZE", 2)
    monkeypatch.setattr(index_module, "HNSW_SYNC_THRESHOLD", 2)
    store = tmp_path / "store"
    library, _ = open_colours(colour_folder, store)
    let_go(library, store)
    [segment] = [p for p in (store / "chroma").iterdir() if p.is_dir()]
    for file in segment.iterdir():
        garbage(file)
    embedder = GeometryEmbedder()
    library, report = open_colours(colour_folder, store, embedder)
    assert embedder.images_embedded == 0 and answers(library) == fresh_answers
    [old] = moved_aside(store, "chroma")
    assert "HNSW files" in report.healed[0] and (old / segment.name).is_dir()


def test_store_that_is_a_file_is_a_clear_error_and_the_file_stays(colour_folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "notes.txt"
    store.write_text("my notes", encoding="utf-8")
    with pytest.raises(LibraryError, match=rf"store {store} is a file, not a folder; give a folder"):
        open_colours(colour_folder, store)
    assert store.read_text(encoding="utf-8") == "my notes"

    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "chroma").write_text("not a store", encoding="utf-8")
    with pytest.raises(LibraryError, match=rf"index folder {tmp_path / 'store' / 'chroma'} is a file"):
        open_colours(colour_folder, tmp_path / "store")
    assert (tmp_path / "store" / "chroma").read_text(encoding="utf-8") == "not a store"


def test_sqlite_file_that_is_a_folder_is_a_clear_error(colour_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "store" / "state.sqlite3").mkdir(parents=True)
    with pytest.raises(LibraryError, match=r"sync state .*state.sqlite3 is a folder"):
        open_colours(colour_folder, tmp_path / "store")


def test_a_locked_database_is_busy_not_damaged(synced_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_files, "CHECK_TIMEOUT_S", 0.2)
    database = synced_store / "chroma" / "chroma.sqlite3"
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process in the middle of a write
    try:
        assert damage(database, deep=True) is None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert damage(database, deep=True) is None
    assert damage(synced_store / "missing.sqlite3") is None


def test_a_store_locked_while_opening_is_waited_for_not_moved(
    colour_folder: Path, synced_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_files, "CHECK_TIMEOUT_S", 0.2)
    holder = sqlite3.connect(synced_store / "chroma" / "chroma.sqlite3", isolation_level=None,
                             check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(1.5, lambda: holder.execute("ROLLBACK"))
    release.start()
    try:
        embedder = GeometryEmbedder()
        library, report = open_colours(colour_folder, synced_store, embedder)
    finally:
        release.join()
        holder.close()
    assert report.healed == [] and not report.rebuilt and embedder.images_embedded == 0
    assert list(synced_store.glob("*.damaged-*")) == []
    assert [m.item_id for m in library.query(StyleQuery(text="red", k=1))] == ["red.png"]


def test_damage_is_told_by_sqlite_itself(synced_store: Path) -> None:
    for how, make in DAMAGES.items():
        copy = synced_store / f"{how}.sqlite3"
        shutil.copyfile(synced_store / "chroma" / "chroma.sqlite3", copy)
        assert damage(copy) is None, how
        make(copy)
        assert damage(copy) is not None, how


def _openers(store: Path, folder: Path, n: int) -> list[subprocess.Popen[str]]:
    start_at = str(time.time() + 5)  # after every process has imported everything: all open at once
    return [
        subprocess.Popen([sys.executable, str(HELPER), str(store), str(folder), f"p{i}", "0", start_at],
                         stderr=subprocess.PIPE, text=True)
        for i in range(n)
    ]


def test_processes_finding_one_damaged_store_move_it_aside_once(colour_folder: Path, synced_store: Path) -> None:
    garbage(synced_store / "chroma" / "chroma.sqlite3")
    openers = _openers(synced_store, colour_folder, 2)
    errors = [p.communicate(timeout=240)[1] for p in openers]
    assert [p.returncode for p in openers] == [0, 0], [e[-2000:] for e in errors]
    assert len(moved_aside(synced_store, "chroma")) == 1
    assert sum("was damaged" in e for e in errors) == 1  # one process healed; the other opened its new store
    library, report = open_colours(colour_folder, synced_store)
    assert report.healed == [] and [m.item_id for m in library.query(StyleQuery(text="red", k=1))] == ["red.png"]


def test_a_store_in_use_by_another_process_is_never_moved_aside(colour_folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    writer = subprocess.Popen([sys.executable, str(HELPER), str(store), str(colour_folder), "busy", "25"],
                              stderr=subprocess.PIPE, text=True)
    try:
        while writer.poll() is None:  # open, sync and query again and again while the other process writes
            if (store / "chroma" / "chroma.sqlite3").exists():
                library, report = open_colours(colour_folder, store)
                assert report.healed == []
                library.query(StyleQuery(text="red", k=1))
                let_go(library, store)
            time.sleep(0.05)
    finally:
        _, err = writer.communicate(timeout=240)
    assert writer.returncode == 0, err[-2000:]
    assert list(store.glob("*.damaged-*")) == []


def test_cli_sync_prints_the_one_line_and_rebuild_recovers_too(
    tmp_path: Path, tiny_models_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(library_cmd, "HOME", tmp_path / "home")
    folder, store = tmp_path / "lib", tmp_path / "store"
    shutil.copytree(SHIPPED_LIBRARY, folder)
    common = ["--folder", str(folder), "--models-dir", str(tiny_models_dir), "--store", str(store)]
    assert main(["library", "sync", *common]) == 0
    fresh = capsys.readouterr().out
    query = ["library", "query", "a great wave", "-k", "5", "--json", *common]
    assert main(query) == 0
    fresh_results = json.loads(capsys.readouterr().out)["results"]
    with index_module._clients_lock:
        index_module._close_client(str(store / "chroma"))  # as the next CLI process would find it

    garbage(store / "chroma" / "chroma.sqlite3")
    assert main(["library", "sync", *common]) == 0
    out, err = capsys.readouterr()
    [old] = moved_aside(store, "chroma")
    first, summary = out.strip().splitlines()
    assert first.startswith(f"The style index store {store / 'chroma'} was damaged") and str(old) in first
    assert summary == fresh.strip().replace("added 15", "added 0").replace("embedded 15", "embedded 0")
    assert "Traceback" not in err

    with index_module._clients_lock:
        index_module._close_client(str(store / "chroma"))
    zero_bytes(store / "chroma" / "chroma.sqlite3")
    assert main(["library", "sync", "--rebuild", "--json", *common]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["total"] == 15 and report["embedded"] == 0 and len(report["healed"]) == 1
    assert len(moved_aside(store, "chroma")) == 2
    assert main(query) == 0
    assert json.loads(capsys.readouterr().out)["results"] == fresh_results


def test_the_moved_aside_name_is_new_each_time(tmp_path: Path) -> None:
    names = []
    for _ in range(3):
        (tmp_path / "state.sqlite3").write_bytes(b"x")
        (tmp_path / "state.sqlite3-wal").write_bytes(b"w")
        names.append(sqlite_files.move_aside(tmp_path / "state.sqlite3"))
    assert len(set(names)) == 3 and all(p.read_bytes() == b"x" for p in names)
    assert all(p.with_name(p.name + "-wal").read_bytes() == b"w" for p in names)
    assert not (tmp_path / "state.sqlite3-wal").exists()
