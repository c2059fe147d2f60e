"""Style retrieval engine: CLIP embeddings of a style library searched in ChromaDB, with no ComfyUI imports.

This face is the engine's whole public surface: ``nodes`` and ``cli`` import these names from here, never from a
submodule (``tools/check_layers.py`` enforces it). Each name is imported from its submodule on first use, so a
caller that only resolves a folder never loads torch, transformers or Chroma. Submodules, for reading: ``library``
(a library, coordinating ``library_lock`` (write lock, repair), ``library_adds`` (adding styles) and ``ranking``
(query ranking)), ``library_edits`` (rename, retag, trash), ``style_labels`` (the name and tag rules), ``locations``
(which folders, store and model a node's inputs mean), ``query``, ``embedder``, ``folder``, ``sync``, ``index``,
``state``, ``thumbnails``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy_exports import lazy_getattr

__all__ = [
    # a library and its folders
    "open_library",  # open (and sync) the library at a LibraryLocation with an embedder
    "StyleLibrary",  # an open library: sync, add_many, query, entries
    "SHIPPED_LIBRARY",  # the pack's public-domain styles folder (read-only)
    "LibraryRoot",  # one image folder of a library, writable or not
    "IMAGE_EXTENSIONS",  # the image file suffixes a library folder reads
    "FileRecord",  # one synced style file: id, path, name, tags, content hash, any error
    "default_name",  # a readable style name from a file name
    "folder_signature",  # a fingerprint of library folders' images and metadata files (path, size, mtime)
    # where a library lives
    "LibraryHome",  # the user's Sketch RAG folder and the CLIP model folders: what empty inputs fall back to
    "LibraryLocation",  # resolved folders, store and embedding model of one library
    "InputNames",  # the input names an error should mention (the node's or the CLI's)
    "resolve_location",  # library folder, store and model inputs -> a LibraryLocation, checked against a policy
    "library_roots",  # a library folder input -> its LibraryRoots, checked against a policy
    "store_location",  # a store input -> the Chroma folder or server URL
    # a style's name and tags
    "checked_name",  # a style name, checked (one line, at most MAX_NAME_CHARS)
    "checked_tags",  # tags, normalised and checked (at most MAX_TAGS, each at most MAX_TAG_CHARS)
    "MAX_NAME_CHARS",  # the longest style name accepted
    "numbered_names",  # names for several styles added under one name: "name 1", "name 2", ...
    "normalise_tags",  # tags as lower-case, stripped, de-duplicated words, for filtering
    # editing a library
    "find_style",  # a style's record by id (ids are looked up, never opened as paths)
    "root_of",  # the LibraryRoot that holds a record
    "style_file",  # a record's image file, checked to lie inside its root
    "edit_style",  # rename or retag a style through its sidecar
    "trash_style",  # move a style's files to the trash, with a record of where they were
    "open_style",  # open a style's image without following links (a file swapped for a link is refused)
    "read_style",  # a style image's bytes, read the same link-free way
    # searching
    "StyleQuery",  # one search: prompt text and/or image, k, tags, text weight, temperature
    "StyleMatch",  # one result: the style, its score, blend weight and standing
    "MAX_K",  # the most results one search returns
    "DEFAULT_TEMPERATURE",  # softmax temperature of the blend weights by default
    # embedding
    "ClipEmbedder",  # a CLIP model that embeds images and text, loaded offline from a folder (or the Hub if allowed)
    "DEFAULT_HUB_MODEL",  # the Hub CLIP model used when no folder is given
    "clip_folder_names",  # the CLIP model folders found in some directories
    # images
    "EMBED_SIDE",  # the longest side an image is decoded at for embedding
    "open_rgb",  # an image file decoded to RGB (transparency over white), checked and downsized
    "square_reference",  # a style image as the square array the IP-Adapter takes
    "content_hash",  # a style file's content hash (cached in its record)
    "thumbnail",  # a cached JPEG thumbnail of a style image
    "thumbnail_path",  # where a style's cached thumbnail lives, by content hash
]

_HOMES = {
    **dict.fromkeys(("open_library", "StyleLibrary", "SHIPPED_LIBRARY"), "library"),
    **dict.fromkeys(("LibraryRoot", "IMAGE_EXTENSIONS", "default_name", "folder_signature", "normalise_tags"),
                    "folder"),
    "FileRecord": "state",
    **dict.fromkeys(("LibraryHome", "LibraryLocation", "InputNames", "resolve_location", "library_roots",
                     "store_location"), "locations"),
    **dict.fromkeys(("checked_name", "checked_tags", "numbered_names", "MAX_NAME_CHARS"), "style_labels"),
    **dict.fromkeys(("find_style", "root_of", "style_file", "edit_style", "trash_style", "open_style", "read_style"),
                    "library_edits"),
    **dict.fromkeys(("StyleQuery", "StyleMatch", "MAX_K", "DEFAULT_TEMPERATURE"), "query"),
    **dict.fromkeys(("ClipEmbedder", "DEFAULT_HUB_MODEL", "clip_folder_names"), "embedder"),
    **dict.fromkeys(("EMBED_SIDE", "open_rgb", "square_reference"), "images"),
    **dict.fromkeys(("content_hash", "thumbnail", "thumbnail_path"), "thumbnails"),
}
"""Public name -> the submodule that defines it."""

__getattr__ = lazy_getattr(globals(), _HOMES)

if TYPE_CHECKING:
    from .embedder import DEFAULT_HUB_MODEL, ClipEmbedder, clip_folder_names
    from .folder import IMAGE_EXTENSIONS, LibraryRoot, default_name, folder_signature, normalise_tags
    from .images import EMBED_SIDE, open_rgb, square_reference
    from .library import SHIPPED_LIBRARY, StyleLibrary, open_library
    from .library_edits import edit_style, find_style, open_style, read_style, root_of, style_file, trash_style
    from .locations import InputNames, LibraryHome, LibraryLocation, library_roots, resolve_location, store_location
    from .query import DEFAULT_TEMPERATURE, MAX_K, StyleMatch, StyleQuery
    from .state import FileRecord
    from .style_labels import MAX_NAME_CHARS, checked_name, checked_tags, numbered_names
    from .thumbnails import content_hash, thumbnail, thumbnail_path
