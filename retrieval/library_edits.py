"""Editing a library from outside a workflow: rename and retag a style, move a style to the trash.

The folder stays the source of truth, so every edit is a file operation in the folder format
:mod:`.folder` already reads, followed by an incremental sync:

- a style's name and tags live in its sidecar ``<image stem>.json`` (which wins over a manifest
  entry); an edit rewrites only those two keys and keeps every other key of an existing sidecar;
- removing a style never deletes anything: its image (and its sidecar) move to
  ``<trash>/<UTC stamp>/<root label>/<relative path>``, beside a ``trashed.json`` that says where
  they came from, so a mis-click is undone by moving the files back.

Only styles in writable folders can be changed (the shipped library is read-only). With an
:class:`~..access.AccessPolicy`, every file written or moved is checked against it first, as the
Add node does, because a library opened earlier may have lost its permission since.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from ..access import AccessPolicy
from ..errors import AccessDeniedError, LibraryError, StyleNotFoundError
from .folder import IMAGE_EXTENSIONS, MANIFEST_NAME, LibraryRoot
from .library import StyleLibrary
from .state import FileRecord
from .style_labels import checked_name, checked_tags

logger = logging.getLogger(__name__)

TRASH_RECORD = "trashed.json"
"""Written into each trash folder: the style's id and where each file was, so it can be put back."""


@dataclass(frozen=True)
class Trashed:
    """Where a removed style's files went: the trash folder of this removal and each file moved or copied."""

    folder: Path
    files: tuple[Path, ...]


def find_style(library: StyleLibrary, item_id: str) -> FileRecord:
    """The synced record of ``item_id``: ids are looked up among the library's records, never opened as paths.

    Raises:
        StyleNotFoundError: no style of the library has this id.
    """
    library.refresh_if_changed()
    records = library.synced_records()
    record = records.get(item_id) if isinstance(item_id, str) else None
    if record is None:
        shown = item_id[:200] if isinstance(item_id, str) else item_id
        raise StyleNotFoundError(
            f"The style id {shown!r} names no style of the library {library.name!r}; list the styles again "
            "(it may have been removed or renamed) and use one of their ids."
        )
    return record


def root_of(library: StyleLibrary, record: FileRecord) -> LibraryRoot:
    """The library folder holding ``record``.

    Raises:
        LibraryError: the record belongs to no folder of the library (a stale record).
    """
    root = next((r for r in library.roots if r.label == record.root), None)
    if root is None:
        raise LibraryError(f"The style {record.item_id!r} belongs to no folder of library {library.name!r}.")
    return root


def style_file(library: StyleLibrary, record: FileRecord) -> Path:
    """The resolved image file of ``record``, refusing one that (now) leads outside its library folder.

    A file swapped for a symlink after the last sync would otherwise be read or moved wherever it points.

    Raises:
        AccessDeniedError: the file resolves outside its library folder.
        StyleNotFoundError: the file is gone since the last sync.
    """
    root = root_of(library, record)
    path = Path(os.path.realpath(root.path / record.relpath))
    if not path.is_relative_to(Path(os.path.realpath(root.path))):
        raise AccessDeniedError(
            f"The style {record.item_id!r} is a link to a file outside its library folder {root.path}; "
            "styles are only read from inside their folder. Replace the link by a copy of the image."
        )
    if not path.is_file():
        raise StyleNotFoundError(
            f"The image of style {record.item_id!r} ({path}) is gone; list the styles again to see the library "
            "as it is now."
        )
    return path


MAX_STYLE_BYTES = 512 * 1024 * 1024
"""Largest style image :func:`read_style` reads into memory (a 30,000 px scan is far below)."""
_NO_LINK_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NO_LINK_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""No link is followed at any step, and a FIFO planted under a style's name cannot block the open."""


@dataclass(frozen=True)
class StyleBytes:
    """A style image as read through :func:`read_style`: its bytes and the ``fstat`` of the handle they came from."""

    data: bytes
    size: int
    mtime_ns: int


def read_style(library: StyleLibrary, record: FileRecord) -> StyleBytes:
    """The image of ``record``, read through :func:`open_style` (no link followed on the way)."""
    with open_style(library, record) as opened:
        info = os.fstat(opened.fileno())
        return StyleBytes(opened.read(MAX_STYLE_BYTES + 1), info.st_size, info.st_mtime_ns)


def open_style(library: StyleLibrary, record: FileRecord) -> BinaryIO:
    """The image file of ``record``, opened without following any link from its library folder down to it.

    Each folder on the way is opened relative to the one before with ``O_NOFOLLOW`` and the file's own
    handle is checked (``fstat``) to be a regular file, so a link or other file swapped in after any
    earlier check is refused, not read: nothing outside the library is ever served. The caller closes it.

    Raises:
        AccessDeniedError: a link (or a folder that became a link) on the way, not a regular file, or too large.
        StyleNotFoundError: the file is gone since the last sync.
    """
    root = root_of(library, record)
    parts = PurePosixPath(record.relpath).parts
    try:
        folder = os.open(os.path.realpath(root.path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StyleNotFoundError(f"The library folder of style {record.item_id!r} cannot be opened ({exc.strerror}); "
                                 "list the styles again.") from exc
    try:
        for part in parts[:-1]:
            inner = os.open(part, _NO_LINK_DIR, dir_fd=folder)
            os.close(folder)
            folder = inner
        handle = os.open(parts[-1], _NO_LINK_FILE, dir_fd=folder)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            raise AccessDeniedError(
                f"The style {record.item_id!r} is reached through a link; styles are only read from files inside "
                "their folder. Replace the link by a copy of the image."
            ) from exc
        raise StyleNotFoundError(
            f"The image of style {record.item_id!r} is gone ({exc.strerror}); list the styles again to see the "
            "library as it is now."
        ) from exc
    finally:
        os.close(folder)
    opened = os.fdopen(handle, "rb")
    info = os.fstat(handle)
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_STYLE_BYTES:
        opened.close()
        what = "is not a regular file" if not stat.S_ISREG(info.st_mode) else f"is over {MAX_STYLE_BYTES} bytes"
        raise AccessDeniedError(f"The style {record.item_id!r} {what}; only image files are served.")
    return opened


def _writable_root(library: StyleLibrary, record: FileRecord, action: str) -> LibraryRoot:
    root = root_of(library, record)
    if not root.writable:
        raise AccessDeniedError(
            f"The style {record.item_id!r} is in {root.path}, a read-only library folder (the shipped styles are "
            f"replaced by pack updates), so it cannot be {action}; add a copy of it to your own styles instead."
        )
    return root


def _sidecar_of(image: Path) -> Path:
    return image.with_suffix(".json")


def _read_sidecar(path: Path) -> dict[str, Any]:
    """An existing sidecar's content, refusing a broken one rather than replacing what the user wrote."""
    try:  # not through a link: the sidecar's content is copied into the new one
        handle = os.open(path, _NO_LINK_FILE)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise LibraryError(
            f"The sidecar {path} cannot be opened ({exc.strerror}; a link is never followed); replace it by a "
            "plain file or remove it, then edit the style again."
        ) from exc
    try:
        with os.fdopen(handle, "rb") as opened:
            if not stat.S_ISREG(os.fstat(opened.fileno()).st_mode):
                raise LibraryError(f"The sidecar {path} is not a regular file; remove it, then edit the style again.")
            data = json.loads(opened.read(1 << 20).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LibraryError(
            f"The sidecar {path} cannot be read as JSON ({exc}); fix or remove it by hand, then edit the style "
            "again (it is not overwritten, so nothing in it is lost)."
        ) from exc
    if not isinstance(data, dict):
        raise LibraryError(
            f"The sidecar {path} holds a JSON {type(data).__name__}, not an object; fix or remove it by hand, then "
            "edit the style again."
        )
    return data


def edit_style(
    library: StyleLibrary,
    item_id: str,
    *,
    name: str | None = None,
    tags: Sequence[str] | str | None = None,
    access: AccessPolicy | None = None,
) -> FileRecord:
    """Set a style's name and/or tags in its sidecar, sync, and return its record as now indexed.

    Keys of an existing sidecar other than ``name`` and ``tags`` are kept; a style whose metadata
    comes from a manifest gets a sidecar with only the edited keys (the manifest's other fields
    still apply). The sidecar is written beside its final name and renamed into place.

    Raises:
        StyleNotFoundError: no such style.
        AccessDeniedError: the style is in a read-only folder, or ``access`` does not let its sidecar be written.
        LibraryError: nothing to change, a bad name or tags, an unreadable existing sidecar, or a style whose
            sidecar would be the manifest.
    """
    if name is None and tags is None:
        raise LibraryError(f"The edit of style {item_id!r} changes nothing; give a new name, new tags or both.")
    new_name = checked_name(name) if name is not None else None
    new_tags = checked_tags(tags) if tags is not None else None
    record = find_style(library, item_id)
    root = _writable_root(library, record, "edited")
    image = style_file(library, record)
    sidecar = _sidecar_of(image)
    if PurePosixPath(record.relpath).with_suffix(".json").as_posix() == MANIFEST_NAME:
        raise LibraryError(
            f"The style {item_id!r} would keep its name and tags in {sidecar}, which is the library manifest; "
            f"rename the image (any name but 'library'), or edit its entry in {MANIFEST_NAME} by hand."
        )
    if access is not None:
        access.writable(sidecar, input_name=f"sidecar of the style {item_id!r}", base=root.path)
    content = _read_sidecar(sidecar)
    if new_name is not None:
        content["name"] = new_name
    if new_tags is not None:
        content["tags"] = list(new_tags)
    _write_json(sidecar, content)
    logger.info("Style library %s: edited %s (%s).", library.name, item_id, sidecar)
    library.sync()
    return find_style(library, item_id)


def _write_json(path: Path, content: dict[str, Any]) -> None:
    """Write ``content`` beside ``path`` and rename it into place, with an mtime the old file never had.

    The nodes' cache fingerprint is path, size and mtime: a same-size rewrite inside one clock tick
    would look unchanged, so the new file's mtime is moved past the old one's when they collide.
    """
    before = path.stat() if path.exists() else None
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    partial = Path(name)  # created exclusively: never a link someone planted, never another writer's file
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(json.dumps(content, ensure_ascii=False, indent=2))
    if before is not None:
        after = partial.stat()
        if after.st_mtime_ns <= before.st_mtime_ns:
            bumped = before.st_mtime_ns + 1_000_000
            os.utime(partial, ns=(bumped, bumped))
    os.replace(partial, path)


def trash_style(
    library: StyleLibrary,
    item_id: str,
    trash_dir: Path,
    *,
    access: AccessPolicy | None = None,
    now: datetime | None = None,
) -> Trashed:
    """Move a style's image and sidecar into a new ``<trash_dir>/<UTC stamp>/`` folder, then sync.

    A sidecar that another image of the same stem also reads (``a.png`` and ``a.jpg`` share
    ``a.json``) is copied, not moved, so the other style keeps its metadata.

    Raises:
        StyleNotFoundError: no such style.
        AccessDeniedError: the style is in a read-only folder, or ``access`` does not let its files be moved.
        LibraryError: the trash folder is inside one of the library's folders (trashed files would come back).
    """
    record = find_style(library, item_id)
    root = _writable_root(library, record, "removed")
    image = style_file(library, record)
    trash = Path(os.path.realpath(trash_dir))
    inside = next((r for r in library.roots if trash.is_relative_to(Path(os.path.realpath(r.path)))), None)
    if inside is not None:
        raise LibraryError(
            f"The trash folder {trash} is inside the library folder {inside.path}, so a removed style would be "
            "indexed again; use a library folder that does not hold ComfyUI's whole user folder."
        )
    sidecar = _sidecar_of(image)
    has_sidecar = sidecar.is_file() and sidecar.name != MANIFEST_NAME
    if access is not None:
        for path in (image, sidecar) if has_sidecar else (image,):
            access.writable(path, input_name=f"file of the style {item_id!r}", base=root.path)
        access.writable(trash, input_name="trash folder", base=trash)
    folder = _new_trash_folder(trash, now or datetime.now(UTC))
    target = folder / (root.label or "library") / record.relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    side_target = target.with_suffix(".json")
    shared = has_sidecar and _stem_shared(image)
    files: list[dict[str, Any]] = [{"from": str(image), "to": str(target)}]
    if has_sidecar:
        files.append({"from": str(sidecar), "to": str(side_target), "copied": shared})
    # The record first, the image last: a crash part-way leaves the style in the library (at worst without its
    # sidecar, which the record says where to find), never a moved file nobody can trace back.
    (folder / TRASH_RECORD).write_text(
        json.dumps({"id": item_id, "library": library.name, "name": record.meta.name, "files": files},
                   ensure_ascii=False, indent=2),
        encoding="utf-8",
    )
    moved: list[Path] = []
    if has_sidecar:
        (shutil.copy2 if shared else shutil.move)(sidecar, side_target)
        moved.append(side_target)
    shutil.move(image, target)
    moved.insert(0, target)
    logger.info("Style library %s: moved %s to the trash folder %s.", library.name, item_id, folder)
    library.sync()
    return Trashed(folder, tuple(moved))


def _new_trash_folder(trash: Path, now: datetime) -> Path:
    """A fresh folder named for the UTC time; two removals in one microsecond get ``-2``, ``-3``..."""
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    trash.mkdir(parents=True, exist_ok=True)
    candidate, n = trash / stamp, 2
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            candidate, n = trash / f"{stamp}-{n}", n + 1


def _stem_shared(image: Path) -> bool:
    """Whether another image beside ``image`` has the same stem, and so reads the same sidecar."""
    return any(
        other != image and other.stem == image.stem and other.suffix.lower() in IMAGE_EXTENSIONS
        for other in image.parent.iterdir()
    )
