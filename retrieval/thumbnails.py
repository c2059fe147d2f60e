"""Small previews of library images for the Style Library tab, made once and kept by content hash.

A grid of a few thousand styles cannot download full-size paintings, and decoding each image on
every visit costs seconds. A thumbnail is the image decoded at reduced size (the same decoder and
size checks as every library image) and saved as a JPEG named by the image's sha256, so renaming
or moving a style reuses it, a changed image gets a new one, and the file name is the cache key a
browser can keep forever. The cache folder is the caller's (ComfyUI's user folder), never the pack.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path

from ..hashing import sha256_file
from .images import open_rgb
from .state import FileRecord

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 256
"""Longest side of a thumbnail in pixels: sharp in a grid cell on a high-density screen."""
JPEG_QUALITY = 85
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def content_hash(path: Path, record: FileRecord) -> str:
    """The sha256 of the file at ``path``: the synced one while size and mtime still match, else hashed anew.

    So a file changed since the last sync never gets the old content's thumbnail.
    """
    stat = path.stat()
    if (stat.st_size, stat.st_mtime_ns) == (record.size, record.mtime_ns):
        return record.sha256
    return sha256_file(path)


def thumbnail_path(cache_dir: Path, sha256: str, side: int = THUMBNAIL_SIDE) -> Path:
    """Where the thumbnail of content ``sha256`` lives: ``<cache_dir>/<2 hex>/<sha256>-<side>.jpg``.

    Raises:
        ValueError: ``sha256`` is not 64 lower-case hex digits (it would not be a safe file name).
    """
    if not _SHA256.match(sha256):
        raise ValueError(f"{sha256!r} is not a sha256 hex digest")
    return cache_dir / sha256[:2] / f"{sha256}-{side}.jpg"


def thumbnail(image: Path, sha256: str, cache_dir: Path, side: int = THUMBNAIL_SIDE, *,
              data: bytes | None = None) -> Path:
    """The cached thumbnail of ``image`` (whose content hash is ``sha256``), made now if it is missing.

    With ``data``, the image's bytes as the caller read them (without following links) are decoded instead.

    Written beside its final name and renamed into place, so two requests making the same
    thumbnail at once, or an interrupted one, never leave a half-written file under the cached name.

    Raises:
        InvalidImageError: the image cannot be read (see :func:`..imaging.decode_image`).
    """
    target = thumbnail_path(cache_dir, sha256, side)
    if target.is_file():
        return target
    preview = open_rgb(image, side, data=data)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.partial")
    try:
        preview.save(partial, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    logger.debug("Style thumbnail of %s written to %s.", image, target)
    return target
