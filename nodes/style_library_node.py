"""The Style Library node: library folder, store and model inputs -> an open, synced ``StyleLibrary``.

It resolves the inputs against the access policy (``comfy_folders``), opens the library through the shared cache
(``library_cache``), reports the sync's progress, and re-runs whenever the folder's files change.
"""

from __future__ import annotations

from typing import Any

from comfy_api.v0_0_2 import io

from ..errors import SketchRagError
from ..model_folders import STYLE_CLIP
from ..retrieval import (
    DEFAULT_HUB_MODEL,
    clip_folder_names,
    folder_signature,
    library_roots,
    resolve_location,
    store_location,
)
from .comfy_folders import access_policy, library_home, style_clip_dirs
from .comfy_host import Progress, raise_if_interrupted
from .common import CATEGORY, NODE_PREFIX
from .input_checks import unknown_options
from .library_cache import shared_library
from .library_socket import StyleLibraryType

DEFAULT_LIBRARY = ""
"""Empty folder input = the shipped styles plus the user's own styles folder."""


def _model_options() -> list[str]:
    return [*clip_folder_names(style_clip_dirs()), DEFAULT_HUB_MODEL]


def _progress_callback(bar: Progress) -> Any:
    def progress(done: int, total: int) -> None:
        raise_if_interrupted()
        bar.update_absolute(done, max(total, 1))

    return progress


class StyleLibraryLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        options = _model_options()
        return io.Schema(
            node_id=f"{NODE_PREFIX}StyleLibraryLoader",
            display_name="Style Library",
            category=CATEGORY,
            description=(
                "Opens a folder of style images with a CLIP model and syncs its search index (new, changed and "
                "deleted files by content hash), so the retriever can find the style that fits a prompt."
            ),
            inputs=[
                io.String.Input(
                    "library_folder", default=DEFAULT_LIBRARY,
                    tooltip="Folder of style images (optional <name>.json sidecars or a library.json manifest). "
                    "Empty: the shipped public-domain styles plus your own folder in ComfyUI's user directory. "
                    "A relative name is a library under user/sketch_rag/libraries. Allowed: folders inside "
                    "ComfyUI's user, input, output and models folders, and those listed under allowed_folders "
                    "in user/sketch_rag/config.json.",
                ),
                io.Combo.Input(
                    "embedding_model", options=options, default=options[0],
                    tooltip=f"A transformers CLIP folder in models/{STYLE_CLIP}, or {DEFAULT_HUB_MODEL} "
                    "from the Hugging Face Hub (needs allow_download).",
                ),
                io.String.Input(
                    "store", default="",
                    tooltip="Where the index lives. Empty: user/sketch_rag/store. A folder (a relative name is "
                    "user/sketch_rag/stores/<name>; others must be writable folders inside ComfyUI's user, input, "
                    "output or models folder or listed in user/sketch_rag/config.json), or the URL of a Chroma "
                    "server (http://host:port) listed under allowed_store_urls in that file.",
                ),
                io.Boolean.Input(
                    "allow_download", default=False,
                    tooltip="Allow downloading the embedding model from the Hugging Face Hub if it is not local.",
                ),
                io.Boolean.Input(
                    "rebuild_index", default=False,
                    tooltip="Drop the library's index and rebuild it with the embedding_model picked now. A library "
                    "has one index, checked against the model on every load: after switching embedding_model the "
                    "load stops with an error until you run it once with this on (vectors already computed for a "
                    "model are cached, so switching back re-embeds nothing). Turn it off again afterwards.",
                ),
            ],
            outputs=[StyleLibraryType.Output(display_name="library", tooltip="The opened, synced style library.")],
        )

    @classmethod
    def fingerprint_inputs(cls, library_folder: str = DEFAULT_LIBRARY, store: str = "", **_: Any) -> str:
        # Re-run (and so re-sync, and re-run the retrievers downstream) whenever the folder changes, and
        # whenever the config file allows or stops allowing the folder or the store (a cached library
        # must not outlive its permission).
        try:
            policy, home = access_policy(), library_home()
            roots = library_roots(library_folder, policy, home)
            store_location(store, policy, home)
        except SketchRagError as exc:
            return f"refused: {exc}"  # nothing is walked; execute raises the same error for the user
        return folder_signature(roots)

    @classmethod
    def validate_inputs(cls, embedding_model: str | None = None) -> bool | str:
        return unknown_options(cls, embedding_model=embedding_model)

    @classmethod
    def execute(
        cls,
        library_folder: str = DEFAULT_LIBRARY,
        embedding_model: str = DEFAULT_HUB_MODEL,
        store: str = "",
        allow_download: bool = False,
        rebuild_index: bool = False,
    ) -> io.NodeOutput:
        location = resolve_location(library_folder, store, embedding_model, policy=access_policy(), home=library_home())
        progress = _progress_callback(Progress(1))
        library = shared_library(location, embedding_model, allow_download=allow_download, rebuild=rebuild_index,
                                 progress=progress)
        healed = library.take_healed()  # also logged as warnings; shown on the node so the user sees it too
        return io.NodeOutput(library, ui={"text": healed} if healed else None)
