"""Model dropdowns: the files ComfyUI lists in a models folder, and a picked name back to its path.

Names resolve through ``folder_paths`` (so ``extra_model_paths.yaml`` folders count); a name ComfyUI does not know
goes to the engine's resolver, whose error names the folder, what it holds and what to download.
"""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..errors import InvalidParameterError
from ..model_folders import IPADAPTER

NONE_CHOICE = "none"
"""The first option of an optional model dropdown: no model."""


def register_ipadapter_folder() -> None:
    """``models/ipadapter`` is not a core ComfyUI folder; IP-Adapter packs register it, we do too if missing.

    Called when a schema is built (not at import), so importing the pack changes nothing in ComfyUI.
    """
    if IPADAPTER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[IPADAPTER] = (
            [os.path.join(folder_paths.models_dir, IPADAPTER)],
            folder_paths.supported_pt_extensions,
        )


def choices(folder: str, optional: bool = False) -> list[str]:
    """The file names ComfyUI lists in ``models/<folder>``, after :data:`NONE_CHOICE` when ``optional``."""
    names = list(folder_paths.get_filename_list(folder))
    return ([NONE_CHOICE] if optional else []) + names


def full_path(folder: str, name: str) -> Path:
    """Dropdown name -> path; a name ComfyUI does not know goes to the engine's resolver for its clear error."""
    from ..rendering import resolve_model  # deferred: model_files loads torch, which an import of the pack must not

    found = folder_paths.get_full_path(folder, name)
    if found:
        return Path(found)
    if Path(name).is_absolute() or ".." in Path(name).parts:
        # ComfyUI's dropdown check stops these in a queued graph; a direct call must not reach outside models/ either.
        raise InvalidParameterError(f"The {folder} model {name!r} is a path; pick a file name from models/{folder}.")
    return resolve_model(name, Path(folder_paths.get_folder_paths(folder)[0]), folder)
