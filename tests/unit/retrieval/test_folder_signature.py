"""``folder_signature``: what the Style Library node's fingerprint sees change, from retrieval's own folder walk."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from sketch_rag.retrieval.folder import LibraryRoot, folder_signature


def image(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def touch_later(path: Path) -> None:
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_the_signature_moves_with_every_file_a_sync_reads_and_nothing_else(tmp_path: Path) -> None:
    root = LibraryRoot(tmp_path / "styles", "user")
    image(root.path / "red.png")
    image(root.path / "sub" / "blue.png", (30, 30, 200))
    (root.path / "sub" / "blue.json").write_text('{"name": "blue"}')
    (root.path / "library.json").write_text("[]")
    seen = {folder_signature([root])}
    assert folder_signature([root]) in seen  # nothing changed, nothing moves

    for change in (
        lambda: touch_later(root.path / "sub" / "blue.json"),  # a sidecar edited
        lambda: touch_later(root.path / "library.json"),  # the manifest edited
        lambda: image(root.path / "sub" / "deep" / "green.png", (30, 200, 30)),  # an image added in a subfolder
        lambda: (root.path / "red.png").rename(root.path / "crimson.png"),  # an image renamed
        lambda: (root.path / "sub" / "blue.png").unlink(),  # an image removed
    ):
        change()
        signature = folder_signature([root])
        assert signature not in seen
        seen.add(signature)

    before = folder_signature([root])
    image(root.path / ".hidden" / "grey.png", (90, 90, 90))  # hidden folders are not part of a library
    (root.path / "notes.txt").write_text("not a style")
    image(root.path / ".trash.png")
    assert folder_signature([root]) == before
    assert folder_signature([root, LibraryRoot(tmp_path / "missing", "other")]) == before
