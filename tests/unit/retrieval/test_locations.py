"""Library/store/model resolution (one rule for the nodes and the CLI) and safe names for new styles."""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sketch_rag.access import AccessPolicy
from sketch_rag.cli.library_cmd import cli_location
from sketch_rag.errors import AccessDeniedError, LibraryError
from sketch_rag.model_folders import STYLE_CLIP
from sketch_rag.retrieval.embedder import DEFAULT_HUB_MODEL
from sketch_rag.retrieval.file_names import MAX_STEM_BYTES, style_file_stem
from sketch_rag.retrieval.folder import LibraryRoot
from sketch_rag.retrieval.library import SHIPPED_LIBRARY, open_library
from sketch_rag.retrieval.locations import LibraryHome, library_roots, resolve_location
from sketch_rag.retrieval.style_labels import MAX_NAME_CHARS
from tests.helpers.geometry import GeometryEmbedder


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A ComfyUI base folder (user, input, output, models) and a folder ``outside`` beside it."""
    base = tmp_path.resolve() / "comfy"
    for name in ("user", "input", "output", "models", "../outside"):
        (base / name).mkdir(parents=True)
    return base


def node_policy(base: Path) -> AccessPolicy:
    return AccessPolicy.for_comfyui(writable=[base / n for n in ("user", "input", "output", "models")],
                                    read_only=[SHIPPED_LIBRARY], user_dir=base / "user")


def node_home(base: Path, model_dirs: tuple[Path, ...] = ()) -> LibraryHome:
    return LibraryHome(base / "user" / "sketch_rag", model_dirs)


def allow(base: Path, **config: object) -> None:
    path = base / "user" / "sketch_rag" / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config), encoding="utf-8")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))


def test_node_defaults_are_the_shipped_styles_the_user_folder_and_the_user_store(base: Path) -> None:
    home = node_home(base)
    location = resolve_location("", "", "", policy=node_policy(base), home=home)
    assert [(r.path, r.label, r.writable) for r in location.roots] == [
        (SHIPPED_LIBRARY, "builtin", False), (home.folder / "styles", "user", True)]
    assert location.store_dir == home.folder / "store" and location.chroma_url is None
    assert location.model == DEFAULT_HUB_MODEL  # no CLIP folder installed


def test_relative_names_are_libraries_and_stores_in_the_users_folder(base: Path) -> None:
    home = node_home(base)
    location = resolve_location("watercolours", "team", "", policy=node_policy(base), home=home)
    assert location.roots == (LibraryRoot(home.folder / "libraries" / "watercolours", "", writable=True),)
    assert location.store_dir == home.folder / "stores" / "team"


@pytest.mark.parametrize("folder", ["{outside}", "{input}/../../outside", "../../../../outside", "/", "~"])
def test_library_folders_outside_comfyuis_folders_are_refused(base: Path, folder: str) -> None:
    value = folder.format(outside=base.parent / "outside", input=base / "input")
    with pytest.raises(AccessDeniedError, match="library_folder"):
        library_roots(value, node_policy(base), node_home(base))


@pytest.mark.parametrize("folder", ["user", "user/sketch_rag"])
def test_a_library_folder_holding_the_packs_own_data_is_refused(base: Path, folder: str) -> None:
    """The store, thumbnail cache and trash under user/sketch_rag would otherwise be indexed as styles."""
    home = node_home(base)
    home.folder.mkdir(parents=True, exist_ok=True)
    with pytest.raises(LibraryError, match="where Sketch RAG keeps its store, thumbnails and trash"):
        library_roots(str(base / folder), node_policy(base), home)
    assert library_roots(str(home.folder / "styles"), node_policy(base), home)[0].path == home.folder / "styles"


def test_a_symlinked_library_folder_is_checked_where_it_leads(base: Path) -> None:
    (base / "input" / "linked").symlink_to(base.parent / "outside", target_is_directory=True)
    with pytest.raises(AccessDeniedError, match=str(base.parent / "outside")):
        library_roots(str(base / "input" / "linked"), node_policy(base), node_home(base))


def test_a_store_outside_is_refused_and_one_in_a_listed_folder_is_used(base: Path) -> None:
    outside = base.parent / "outside" / "store"
    with pytest.raises(AccessDeniedError, match="store"):
        resolve_location("", str(outside), "", policy=node_policy(base), home=node_home(base))
    allow(base, allowed_folders=[{"path": str(base.parent / "outside"), "writable": True}])
    assert resolve_location("", str(outside), "", policy=node_policy(base), home=node_home(base)).store_dir == outside


def test_a_listed_read_only_folder_is_a_library_that_refuses_additions(base: Path) -> None:
    allow(base, allowed_folders=[str(base.parent / "outside")])
    roots = library_roots(str(base.parent / "outside"), node_policy(base), node_home(base))
    assert roots == [LibraryRoot(base.parent / "outside", "", writable=False)]
    with pytest.raises(AccessDeniedError, match="read-only"):
        resolve_location("", str(base.parent / "outside" / "store"), "", policy=node_policy(base),
                         home=node_home(base))


def test_the_shipped_library_given_by_path_is_read_only(base: Path) -> None:
    assert library_roots(str(SHIPPED_LIBRARY), node_policy(base), node_home(base))[0].writable is False


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def answering_server() -> Iterator[str]:
    """An HTTP server that answers every GET (stands in for a Chroma server's heartbeat)."""

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"nanosecond heartbeat": 1}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_store_urls_must_be_listed_and_a_listed_server_that_is_down_fails_fast(
    base: Path, answering_server: str
) -> None:
    closed = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(AccessDeniedError, match="allowed_store_urls"):
        resolve_location("", answering_server, "", policy=node_policy(base), home=node_home(base))
    allow(base, allowed_store_urls=[answering_server, closed.replace("127.0.0.1", "127.0.0.1.")])
    location = resolve_location("", answering_server + "/", "", policy=node_policy(base), home=node_home(base))
    assert location.chroma_url == answering_server
    assert location.store_dir == node_home(base).folder / "store"  # local caches stay in the user's folder
    start = time.monotonic()
    with pytest.raises(LibraryError, match="does not answer"):
        resolve_location("", closed, "", policy=node_policy(base), home=node_home(base))
    assert time.monotonic() - start < 5


def test_a_model_path_outside_is_refused_for_the_nodes(base: Path, tiny_models_dir: Path) -> None:
    home = node_home(base, (tiny_models_dir / STYLE_CLIP,))
    assert resolve_location("", "", "", policy=node_policy(base), home=home).model == "tiny-random-clip"
    for outside in (str(tiny_models_dir / STYLE_CLIP / "tiny-random-clip"), "../../../etc"):
        with pytest.raises(AccessDeniedError, match="embedding_model"):
            resolve_location("", "", outside, policy=node_policy(base), home=home)
    assert resolve_location("", "", "openai/clip-vit-large-patch14", policy=node_policy(base),
                            home=home).model == "openai/clip-vit-large-patch14"


def test_the_cli_uses_the_same_rule_with_every_path_allowed(
    tmp_path: Path, tiny_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sketch_rag.cli import library_cmd

    monkeypatch.setattr(library_cmd, "HOME", tmp_path / "home")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    location, home = cli_location(Path("mine"), "store", None, tiny_models_dir)
    assert location.roots == (LibraryRoot(tmp_path.resolve() / "mine", "", writable=True),)
    assert location.store_dir == tmp_path.resolve() / "store"  # relative to the working directory
    assert location.model == "tiny-random-clip"  # the same default as the node's dropdown
    node_home_ = LibraryHome(tmp_path / "user" / "sketch_rag", home.model_dirs)
    node = resolve_location("", "", "", policy=node_policy(tmp_path), home=node_home_)
    assert node.model == location.model
    default, _ = cli_location(None, str(tmp_path / "home" / "store"), None, tmp_path / "no-models")
    assert default.roots[0].path == SHIPPED_LIBRARY and not default.roots[0].writable
    assert default.model == DEFAULT_HUB_MODEL
    with pytest.raises(LibraryError, match="does not exist"):
        cli_location(Path("missing"), "store", None, tiny_models_dir)


# -- names of new styles ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("Rouge pur", "rouge_pur"),
        ("../../etc/passwd", "etc_passwd"),
        ("a/b\\c", "a_b_c"),
        ("..", "style"),
        ("  .hidden style ", "hidden_style"),
        ("CON", "con_style"),
        ("nul", "nul_style"),
        ("COM1", "com1_style"),
        ("lpt9", "lpt9_style"),
        ("library", "library_style"),
        ("Ukiyo-e / 浮世絵", "ukiyo_e_浮世絵"),
        ("!!!", "style"),
    ],
)
def test_style_names_become_safe_file_stems(name: str, stem: str) -> None:
    assert style_file_stem(name) == stem


def test_long_names_are_cut_to_a_byte_length_every_file_system_accepts() -> None:
    for name in ("x" * 300, "浮" * 300, "a" * 95 + "é" * 10):
        stem = style_file_stem(name)
        assert 0 < len(stem.encode("utf-8")) <= MAX_STEM_BYTES
        assert stem.encode("utf-8").decode("utf-8") == stem  # no half character at the cut


@pytest.fixture
def writable_library(base: Path, tmp_path: Path) -> tuple[Path, object]:
    folder = base / "user" / "sketch_rag" / "styles"
    folder.mkdir(parents=True)
    library, _ = open_library([LibraryRoot(folder, "user")], GeometryEmbedder(), tmp_path / "store")
    return folder, library


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def test_bad_names_are_added_under_safe_file_names_inside_the_folder(
    base: Path, writable_library: tuple[Path, object]
) -> None:
    folder, library = writable_library
    outside_before = files_under(base.parent / "outside")
    pixels = np.full((8, 8, 3), 0.5, dtype=np.float32)
    names = ["../../outside/evil", "/abs/name", "CON", ".hidden", " spaced ", "x" * MAX_NAME_CHARS, "library", "nul"]
    added = library.add_many([pixels] * len(names), names, access=node_policy(base))  # type: ignore[attr-defined]
    written = files_under(folder)
    assert {m.item_id for m in added} == {f"user/{Path(p).with_suffix('.png').as_posix()}" for p in written
                                          if p.endswith(".png")}
    assert all("/" not in p and not p.startswith(".") and len(p.encode()) <= 255 for p in written)
    assert "outside_evil.png" in written and "con_style.png" in written and "library.json" not in written
    assert [m.name for m in added] == [n.strip() for n in names]  # the display names are kept as typed
    assert files_under(base.parent / "outside") == outside_before


def test_a_name_with_a_nul_byte_is_a_clear_error_and_writes_nothing(writable_library: tuple[Path, object]) -> None:
    folder, library = writable_library
    with pytest.raises(LibraryError, match="control characters"):
        library.add(np.full((8, 8, 3), 0.5, dtype=np.float32), "evil\x00name")  # type: ignore[attr-defined]
    assert files_under(folder) == set()


def test_an_existing_sidecar_or_a_dangling_link_is_never_overwritten(
    base: Path, writable_library: tuple[Path, object]
) -> None:
    folder, library = writable_library
    (folder / "library.json").write_text('[{"file": "kept.png", "name": "Kept"}]', encoding="utf-8")
    (folder / "taken.json").write_text('{"name": "Mine"}', encoding="utf-8")
    (folder / "linked.png").symlink_to(base.parent / "outside" / "target.png")  # dangling, points outside
    pixels = np.full((8, 8, 3), 0.5, dtype=np.float32)
    added = library.add_many([pixels] * 3, ["library", "taken", "linked"], access=node_policy(base))  # type: ignore[attr-defined]
    assert [m.item_id for m in added] == ["user/library_style.png", "user/taken_2.png", "user/linked_2.png"]
    assert json.loads((folder / "taken.json").read_text()) == {"name": "Mine"}
    assert "Kept" in (folder / "library.json").read_text()
    assert not (base.parent / "outside" / "target.png").exists()


def test_the_config_file_cannot_be_written_as_a_sidecar(base: Path, tmp_path: Path) -> None:
    home = base / "user" / "sketch_rag"
    home.mkdir(parents=True)
    library, _ = open_library([LibraryRoot(home, "")], GeometryEmbedder(), tmp_path / "store")
    with pytest.raises(AccessDeniedError, match="own config file"):
        library.add(np.full((8, 8, 3), 0.5, dtype=np.float32), "config", access=node_policy(base))
    assert not (home / "config.json").exists() and not (home / "config.png").exists()


def test_a_library_loaded_before_its_folder_was_unlisted_can_no_longer_be_written(base: Path, tmp_path: Path) -> None:
    outside = base.parent / "outside" / "styles"
    allow(base, allowed_folders=[{"path": str(base.parent / "outside"), "writable": True}])
    (root,) = library_roots(str(outside), node_policy(base), node_home(base))
    library, _ = open_library([root], GeometryEmbedder(), tmp_path / "store")
    allow(base)  # the admin removes the folder from the list
    with pytest.raises(AccessDeniedError, match="outside"):
        library.add(np.full((8, 8, 3), 0.5, dtype=np.float32), "late", access=node_policy(base))
    assert not outside.exists() or files_under(outside) == set()
