"""A style library on disk: image files under one or more roots, plus optional metadata.

The folder is the source of truth. Metadata comes from a ``library.json`` manifest in a root
(a list of objects with a ``file`` key, the format of the shipped library) and from sidecars
``<image stem>.json`` beside an image, which win over the manifest. Everything here is plain
file handling: hashing is skipped for files whose size and mtime match what the caller knew.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import LibraryError
from ..hashing import sha256_file

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
MANIFEST_NAME = "library.json"
TEXT_FIELDS = ("description", "source", "license", "artist", "title", "year")
"""Free-text metadata kept per style (``licence`` is accepted as a spelling of ``license``)."""


@dataclass(frozen=True)
class LibraryRoot:
    """One folder of a library. ``label`` prefixes item ids, so two roots never collide."""

    path: Path
    label: str
    writable: bool = True


@dataclass(frozen=True)
class StyleMeta:
    """What a user knows about a style: a display name, tags for filtering, provenance."""

    name: str
    tags: tuple[str, ...] = ()
    text: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "tags": list(self.tags), **dict(sorted(self.text.items()))}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StyleMeta:
        return cls(
            name=str(data["name"]),
            tags=tuple(data.get("tags", ())),
            text={k: str(data[k]) for k in TEXT_FIELDS if k in data},
        )


@dataclass(frozen=True)
class FileInfo:
    """One image file as found on disk."""

    item_id: str
    root: LibraryRoot
    relpath: str
    size: int
    mtime_ns: int

    @property
    def path(self) -> Path:
        return self.root.path / self.relpath


def item_id_for(root: LibraryRoot, relpath: str) -> str:
    return f"{root.label}/{relpath}" if root.label else relpath


def normalise_tags(tags: Any) -> tuple[str, ...]:
    """Tags as lower-case, stripped, de-duplicated strings; a comma-separated string is split."""
    if tags is None:
        return ()
    if isinstance(tags, str):
        tags = tags.split(",")
    if not isinstance(tags, list | tuple):
        raise LibraryError(f"Tags must be a list of strings or a comma-separated string, got {tags!r}.")
    cleaned = (str(t).strip().lower() for t in tags)
    return tuple(dict.fromkeys(t for t in cleaned if t))


def default_name(relpath: str) -> str:
    """A readable name from a file name: ``van_gogh-starry.jpg`` → ``van gogh starry``."""
    stem = posixpath.splitext(posixpath.basename(relpath))[0]
    return stem.replace("_", " ").replace("-", " ").strip() or relpath


def safe_relpath(root: Path, name: str) -> str:
    """``name`` as a POSIX path relative to ``root``, refusing anything that would leave it.

    Raises:
        LibraryError: an absolute path, ``..``, an empty name, or a symlink out of the root.
    """
    candidate = PurePosixPath(name.replace("\\", "/"))
    if not name.strip() or candidate.is_absolute() or ".." in candidate.parts or ":" in name:
        raise LibraryError(
            f"The library path {name!r} is not a plain relative file name inside {root}; use a name "
            "like 'my_style.png' or 'sub/folder/my_style.png'."
        )
    resolved = (root / candidate).resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise LibraryError(f"The library path {name!r} leads outside {root} (to {resolved}); use a file inside it.")
    return candidate.as_posix()


def iter_image_files(root: LibraryRoot) -> Iterator[FileInfo]:
    """Every image file under ``root`` (hidden files and folders skipped), with size and mtime.

    Symlinks that point outside the root are skipped with a warning: a library must not read
    files the user did not put in it. A file moved away between the listing and its ``stat``
    (a trash or rename running at the same time) is simply not part of the folder any more.
    Paths stay strings here: reopening an unchanged 10k library is mostly this walk, and pathlib
    objects per file cost more than the stat calls.
    """
    base = str(root.path.resolve())
    stack = [""]
    while stack:
        relfolder = stack.pop()
        folder = os.path.join(base, relfolder) if relfolder else base
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            logger.warning("Style library: cannot list %s (%s); skipped.", folder, exc)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            relpath = f"{relfolder}/{entry.name}" if relfolder else entry.name
            try:
                if entry.is_symlink() and not Path(entry.path).resolve().is_relative_to(base):
                    logger.warning("Style library: %s links outside %s; skipped.", entry.path, base)
                    continue
                if entry.is_dir():
                    stack.append(relpath)
                    continue
                if os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS or not entry.is_file():
                    continue
                stat = entry.stat()
            except FileNotFoundError:
                continue  # moved away since the listing
            yield FileInfo(item_id_for(root, relpath), root, relpath, stat.st_size, stat.st_mtime_ns)


def folder_signature(roots: Iterable[LibraryRoot]) -> str:
    """A cheap fingerprint of library folders: path, size and mtime of every image and every metadata file a sync
    reads (the manifest, and the ``.json`` files in each folder holding images), from :func:`iter_image_files`'s
    walk; no file is read.

    Only ever give it roots the access policy allowed (a library at ``/`` is refused before any walk).
    """
    digest = hashlib.sha256()
    for root in roots:
        if not root.path.is_dir():
            continue
        images = sorted(iter_image_files(root), key=lambda info: info.relpath)
        relfolders = {posixpath.dirname(info.relpath) for info in images} | {""}
        metadata = sorted(_json_files(root.path, relfolders).values())
        entries = [(info.relpath, info.size, info.mtime_ns) for info in images]
        for relpath in metadata:
            try:
                stat = os.stat(root.path / relpath)
            except OSError:
                continue  # moved away (trashed, renamed) since the listing: not part of the folder now
            entries.append((relpath, stat.st_size, stat.st_mtime_ns))
        for relpath, size, mtime_ns in entries:
            digest.update(f"{root.path}/{relpath}:{size}:{mtime_ns}\n".encode())
    return digest.hexdigest()


def folders_stamp(roots: Iterable[LibraryRoot]) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime_ns, inode) of every folder of the roots, hidden ones skipped as the scan skips them.

    One ``stat`` per folder: adding, removing, renaming or rewriting a file through a rename changes its folder's
    mtime, so an unchanged stamp means an unchanged listing.
    """
    stamp: list[tuple[str, int, int]] = []
    stack = [str(r.path) for r in roots]
    while stack:
        folder = stack.pop()
        try:
            info = os.stat(folder)
            entries = list(os.scandir(folder))
        except OSError:
            stamp.append((folder, -1, -1))
            continue
        stamp.append((folder, info.st_mtime_ns, info.st_ino))
        for entry in entries:
            try:
                if not entry.name.startswith(".") and entry.is_dir():
                    stack.append(entry.path)
            except OSError:
                continue
    return tuple(sorted(stamp))


def hash_if_changed(info: FileInfo, known: tuple[int, int, str] | None) -> str:
    """The file's sha256, reusing ``known = (size, mtime_ns, sha256)`` when size and mtime still match."""
    if known is not None and known[0] == info.size and known[1] == info.mtime_ns:
        return known[2]
    return sha256_file(info.path)


def read_metadata(root: LibraryRoot, relpaths: list[str]) -> tuple[dict[str, StyleMeta], list[tuple[str, str]]]:
    """Metadata for each image from the manifest and sidecars, and the metadata files that were unusable.

    A broken manifest or sidecar never hides a style: its image keeps a default name, and the
    problem is reported as ``(file, reason)``.
    """
    problems: list[tuple[str, str]] = []
    manifest: dict[str, Mapping[str, Any]] = {}
    manifest_path = root.path / MANIFEST_NAME
    if manifest_path.is_file():
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
            items = data["styles"] if isinstance(data, dict) else data
            for item in items:
                manifest[PurePosixPath(str(item["file"])).as_posix()] = item
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append((str(manifest_path), f"unreadable manifest: {exc}"))
    metas: dict[str, StyleMeta] = {}
    sidecars = _json_files(root.path, {posixpath.dirname(r) for r in relpaths})
    for relpath in relpaths:
        entry: dict[str, Any] = dict(manifest.get(relpath, {}))
        sidecar_relpath = sidecars.get(posixpath.splitext(relpath)[0])
        if sidecar_relpath is not None and posixpath.basename(sidecar_relpath) != MANIFEST_NAME:
            sidecar = root.path / sidecar_relpath
            try:
                side = json.loads(sidecar.read_text(encoding="utf-8"))
                if not isinstance(side, dict):
                    raise ValueError("expected a JSON object")
                entry.update(side)
            except FileNotFoundError:
                pass  # moved away since the listing (with its image, which the next sync no longer finds)
            except (OSError, ValueError) as exc:
                problems.append((str(sidecar), f"unreadable sidecar: {exc}"))
        metas[relpath] = meta_from_entry(relpath, entry)
    return metas, problems


def _json_files(base: Path, relfolders: set[str]) -> dict[str, str]:
    """The ``.json`` files in these folders by relative path without extension: one listing per folder,
    instead of a stat per image."""
    found: dict[str, str] = {}
    for relfolder in relfolders:
        try:
            names = os.listdir(base / relfolder)
        except OSError:
            continue
        for name in names:
            stem, ext = posixpath.splitext(name)
            if ext.lower() == ".json":
                found[posixpath.join(relfolder, stem)] = posixpath.join(relfolder, name)
    return found


def meta_from_entry(relpath: str, entry: Mapping[str, Any]) -> StyleMeta:
    name = str(entry.get("name") or "").strip() or default_name(relpath)
    text = {k: str(entry[k]) for k in TEXT_FIELDS if entry.get(k) not in (None, "")}
    if entry.get("licence") and "license" not in text:
        text["license"] = str(entry["licence"])
    try:
        tags = normalise_tags(entry.get("tags"))
    except LibraryError:
        tags = ()
    return StyleMeta(name=name, tags=tags, text=text)
