"""The open style libraries and their CLIP models, shared by the Style Library node and the Style Library tab.

Keyed by folders, store, model and device, so re-running the loader after the library changed only syncs it, and
the tab's routes use the node's CLIP and index handle instead of loading a second copy.
"""

from __future__ import annotations

import threading
from typing import Any

from ..retrieval import ClipEmbedder, LibraryLocation, StyleLibrary, open_library
from .comfy_folders import style_clip_dirs
from .comfy_host import torch_device
from .model_memory import managed_embedder

_embedders: dict[tuple[str, str], ClipEmbedder] = {}
_libraries: dict[tuple[str, ...], StyleLibrary] = {}
_cache_lock = threading.Lock()


def shared_library(
    location: LibraryLocation,
    embedding_model: str,
    *,
    allow_download: bool = False,
    rebuild: bool = False,
    sync: bool = True,
    progress: Any = None,
) -> StyleLibrary:
    """The open library of ``location`` from this cache (opened and synced on first use, else synced
    unless ``sync`` is false), and its CLIP loaded once per model and device.

    The loader node and the Style Library tab's routes both come here, so the sidebar shares the
    node's CLIP and index handle instead of loading a second copy.
    """
    roots, store_dir, chroma_url = list(location.roots), location.store_dir, location.chroma_url
    device = str(torch_device())
    with _cache_lock:
        model_key = (embedding_model, device)
        if model_key not in _embedders:
            _embedders[model_key] = managed_embedder(
                ClipEmbedder.load(
                    location.model, device=device, allow_download=allow_download, search_dirs=style_clip_dirs()
                )
            )
        embedder = _embedders[model_key]
        # The writable flag is part of the key: a folder the config made read-only is a new library.
        roots_key = (f"{r.path}:{r.writable:d}" for r in roots)
        key = (*roots_key, embedding_model, device, str(store_dir), chroma_url or "")
        library = _libraries.get(key)
        if library is None or rebuild:
            library, _ = open_library(
                roots, embedder, store_dir, chroma_url=chroma_url, rebuild=rebuild, progress=progress
            )
            _libraries[key] = library
            return library
    # Outside the cache lock: a sync of one library must not hold up every other library's requests (the
    # library serialises its own writers).
    if sync:
        library.sync(progress=progress)
    return library
