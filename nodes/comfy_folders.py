"""Where the pack's files live inside ComfyUI, and which folders a node or route may touch.

ComfyUI's ``folder_paths`` knows the user, input, output and models folders; the retrieval engine takes them as
plain paths. Every node and route that opens a library asks here, so the access rule (DESIGN.md §10) is built the
same way everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..access import AccessPolicy
from ..model_folders import STYLE_CLIP
from ..retrieval import SHIPPED_LIBRARY, LibraryHome


def style_clip_dirs() -> list[Path]:
    """The folders the embedding-model dropdown lists, registering ``models/style_clip`` on first use."""
    if STYLE_CLIP not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(
            STYLE_CLIP, os.path.join(folder_paths.models_dir, STYLE_CLIP), is_default=True
        )
    return [Path(p) for p in folder_paths.get_folder_paths(STYLE_CLIP)]


def user_dir() -> Path:
    """The pack's own folder in ComfyUI's user directory: store, user styles, thumbnails, trash, config."""
    return Path(folder_paths.get_user_directory()) / "sketch_rag"


def library_home() -> LibraryHome:
    """What empty library inputs fall back to: the pack's user folder and the CLIP model folders."""
    return LibraryHome(user_dir(), tuple(style_clip_dirs()))


def access_policy() -> AccessPolicy:
    """ComfyUI's user, input, output and models folders, the shipped styles (read-only) and the config's list.

    Built per execution (the config file is re-read only when it changed), so an edit to
    ``user/sketch_rag/config.json`` applies to the next queue without a restart.
    """
    user = folder_paths.get_user_directory()
    return AccessPolicy.for_comfyui(
        writable=[user, folder_paths.get_input_directory(), folder_paths.get_output_directory(),
                  folder_paths.models_dir],
        read_only=[SHIPPED_LIBRARY],
        user_dir=user,
    )
