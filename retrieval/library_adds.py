"""Adding styles to a library's writable folder: every image and name checked first, then image + sidecar written.

:meth:`StyleLibrary.add_many` runs :meth:`StyleBatch.write` under the library's write lock and syncs once for the
whole batch; the name and tag rules are :mod:`.style_labels`', the same the Style Library tab's edits follow.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from ..access import AccessPolicy
from ..errors import InvalidImageError, LibraryError
from ..imaging import write_image
from .file_names import control_characters, style_file_stem
from .folder import MANIFEST_NAME, LibraryRoot, item_id_for, safe_relpath
from .images import EMBED_SIDE, array_to_pil, open_rgb
from .state import FileRecord
from .style_labels import checked_name, checked_tags


def writable_root(roots: Sequence[LibraryRoot], library_name: str) -> LibraryRoot:
    """The folder new styles go to: the last writable root.

    Raises:
        LibraryError: every folder of the library is read-only (the shipped one, say).
    """
    root = next((r for r in reversed(roots) if r.writable), None)
    if root is None:
        raise LibraryError(
            f"The style library {library_name!r} has no writable folder ({', '.join(str(r.path) for r in roots)} "
            "are read-only); load it with a folder of your own to add styles."
        )
    return root


@dataclass(frozen=True)
class StyleBatch:
    """Styles to add to ``root``, checked: names, tags, readable images, and any caller's file names."""

    root: LibraryRoot
    images: Sequence[np.ndarray | Path]
    names: list[str]
    tags: tuple[str, ...]
    suffixes: list[str]
    relpaths: list[str | None]
    text: dict[str, str] | None
    access: AccessPolicy | None

    @classmethod
    def checked(
        cls,
        root: LibraryRoot,
        images: Sequence[np.ndarray | Path],
        names: Sequence[str],
        tags: Sequence[str] | str,
        filenames: Sequence[str | None] | None,
        text: dict[str, str] | None,
        access: AccessPolicy | None,
    ) -> StyleBatch:
        """Check everything before anything is written (see :meth:`StyleLibrary.add_many` for the rules)."""
        if access is not None:
            access.writable(root.path, input_name="folder to add styles to", base=root.path)
        wanted = list(filenames) if filenames is not None else [None] * len(images)
        if not len(images) == len(names) == len(wanted):
            raise LibraryError(
                f"add_many got {len(images)} images, {len(names)} names and {len(wanted)} filenames; give one each."
            )
        checked_names = [checked_name(name) for name in names]
        checked = checked_tags(list(tags) if not isinstance(tags, str) else tags)
        suffixes = []
        for image in images:
            if isinstance(image, Path):
                open_rgb(image, EMBED_SIDE)  # refuse unreadable files before copying anything in
                suffixes.append(image.suffix.lower())
            else:
                array_to_pil(image)
                suffixes.append(".png")
        relpaths = [_given_relpath(root.path, f) if f else None for f in wanted]
        return cls(root, images, checked_names, checked, suffixes, relpaths, text, access)

    def write(self) -> list[str]:
        """Write each image and its sidecar (run under the library's write lock); their paths, in order.

        A generated file name never replaces anything; every resolved file is checked against ``access``
        before any of the batch is written.
        """
        root = self.root
        root.path.mkdir(parents=True, exist_ok=True)
        planned: list[str] = []
        taken: set[str] = set()  # names planned in this batch are as taken as those on disk
        for name, suffix, relpath in zip(self.names, self.suffixes, self.relpaths, strict=True):
            if relpath is None:
                relpath = _free_relpath(root.path, style_file_stem(name), suffix, taken)
            taken |= {relpath, _sidecar_relpath(relpath)}
            if self.access is not None:  # the resolved files, before any of the batch is written
                for path in (relpath, _sidecar_relpath(relpath)):
                    self.access.writable(root.path / path, input_name=f"file for the style {name!r}",
                                         base=root.path)
            planned.append(relpath)
        for image, name, relpath in zip(self.images, self.names, planned, strict=True):
            target = root.path / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(image, Path):
                shutil.copyfile(image, target)
            else:
                write_image(target, image)
            sidecar = {"name": name, "tags": list(self.tags), **(self.text or {})}
            (root.path / _sidecar_relpath(relpath)).write_text(
                json.dumps(sidecar, ensure_ascii=False, indent=2), encoding="utf-8"
            )
        return planned

    def indexed_ids(self, planned: list[str], records: dict[str, FileRecord]) -> list[str]:
        """The ids of the written styles, once the sync indexed every one of them.

        Raises:
            InvalidImageError: a style could not be indexed (its record carries the reason).
        """
        item_ids = [item_id_for(self.root, relpath) for relpath in planned]
        failed = [f"{i} ({records[i].error if i in records else 'not found after sync'})" for i in item_ids
                  if i not in records or records[i].error is not None]
        if failed:
            raise InvalidImageError(f"New styles could not be indexed: {'; '.join(failed)}.")
        return item_ids


def _given_relpath(root: Path, filename: str) -> str:
    """A caller's file name for a new style, inside ``root`` and not the manifest's sidecar slot."""
    if control_characters(filename):
        raise LibraryError(
            f"The file name {filename!r} contains control characters ({', '.join(control_characters(filename))}); "
            "use a name like 'my_style.png'."
        )
    relpath = safe_relpath(root, filename)
    if _sidecar_relpath(relpath) == MANIFEST_NAME:
        raise LibraryError(
            f"The file name {filename!r} would put its sidecar on the library manifest {MANIFEST_NAME}; "
            "choose another name."
        )
    return relpath


def _sidecar_relpath(relpath: str) -> str:
    return PurePosixPath(relpath).with_suffix(".json").as_posix()


def _free_relpath(folder: Path, stem: str, suffix: str, taken: set[str]) -> str:
    """``stem + suffix`` or ``stem_2 + suffix``...: the first whose image and sidecar are both free.

    ``lexists``, so a dangling symlink counts as taken: writing through it could land anywhere.
    """
    relpath, n = f"{stem}{suffix}", 2
    while any(p in taken or os.path.lexists(folder / p) for p in (relpath, _sidecar_relpath(relpath))):
        relpath, n = f"{stem}_{n}{suffix}", n + 1
    return relpath
