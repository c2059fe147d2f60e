"""The ``library`` socket between the Style Library node and the retriever and Add nodes, and the check of what
arrives on it."""

from __future__ import annotations

from typing import Any

from comfy_api.v0_0_2 import io

from ..errors import LibraryError
from ..retrieval import StyleLibrary

StyleLibraryType = io.Custom("SKETCHRAG_STYLE_LIBRARY")
"""An open, synced StyleLibrary (its CLIP model and index stay loaded while ComfyUI caches it)."""


def checked_library(library: Any) -> StyleLibrary:
    """The ``StyleLibrary`` the Style Library node passes on; ComfyUI lets an API graph's constant through instead."""
    if not isinstance(library, StyleLibrary):
        raise LibraryError(f"The library input is a {type(library).__name__}; connect a Style Library node.")
    return library
