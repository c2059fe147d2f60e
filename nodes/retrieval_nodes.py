"""Style retrieval nodes: Style Library loader, CLIP Style Retriever, Add to Style Library.

Thin adapters over ``retrieval``: they resolve folders through ``folder_paths``, pick the device
from ComfyUI, convert tensors and report progress. Loaded CLIP models and open libraries live in
a small cache here (keyed by folder, store and device), so re-running the loader after the
library changed only syncs it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from comfy_api.v0_0_2 import io, ui
from PIL import Image, ImageDraw

from ..errors import InvalidImageError, LibraryError, SketchRagError
from ..model_folders import STYLE_CLIP
from ..retrieval import (
    DEFAULT_HUB_MODEL,
    DEFAULT_TEMPERATURE,
    IMAGE_EXTENSIONS,
    MAX_K,
    ClipEmbedder,
    LibraryLocation,
    LibraryRoot,
    StyleLibrary,
    StyleMatch,
    StyleQuery,
    checked_name,
    checked_tags,
    clip_folder_names,
    library_roots,
    normalise_tags,
    numbered_names,
    open_library,
    resolve_location,
    square_reference,
    store_location,
)
from .comfy_folders import access_policy, library_home, style_clip_dirs
from .comfy_host import ManagedModels, Progress, raise_if_interrupted, torch_device
from .common import CATEGORY, NODE_PREFIX
from .input_checks import unknown_options
from .tensors import arrays_to_image_batch, image_batch_to_arrays

StyleLibraryType = io.Custom("SKETCHRAG_STYLE_LIBRARY")
"""An open, synced StyleLibrary (its CLIP model and index stay loaded while ComfyUI caches it)."""

DEFAULT_LIBRARY = ""
"""Empty folder input = the shipped styles plus the user's own styles folder."""

_embedders: dict[tuple[str, str], ClipEmbedder] = {}
_libraries: dict[tuple[str, ...], StyleLibrary] = {}
_cache_lock = threading.Lock()


def _model_options() -> list[str]:
    return [*clip_folder_names(style_clip_dirs()), DEFAULT_HUB_MODEL]


def _folder_signature(roots: list[LibraryRoot]) -> str:
    """A cheap fingerprint of the library folders: every image and metadata file's path, size and mtime.

    Only ever given roots the access policy allowed (a library at ``/`` is refused before any walk).
    """
    digest = hashlib.sha256()
    for root in roots:
        if not root.path.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root.path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                if Path(name).suffix.lower() in IMAGE_EXTENSIONS | {".json"}:
                    try:
                        stat = os.stat(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        continue  # moved away (trashed, renamed) since the listing: not part of the folder now
                    digest.update(f"{dirpath}/{name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _managed_embedder(embedder: ClipEmbedder) -> ClipEmbedder:
    """Register ``embedder``'s CLIP with ComfyUI's model management, like the SD models (``comfy_host.ManagedModels``).

    ComfyUI's "Unload models" (``POST /free``) then releases its weights; the libraries keep the embedder,
    which loads the weights again on its next use and registers them anew (its ``on_use`` hook runs before
    every embedding, so ComfyUI always knows the CLIP is in memory and in use).
    """
    managed = ManagedModels(f"the Style Library CLIP model {embedder.name}", embedder.release)

    def in_use(current: ClipEmbedder) -> None:
        if current.model is not None:
            managed.use(current.generation, {"clip": current.model})

    embedder.on_use = in_use
    in_use(embedder)  # accounted for from the load on, not only from its first embedding
    return embedder


def _one_query_image(query_image: torch.Tensor | None) -> np.ndarray | None:
    """The query image, refusing a batch: one style query has one image, and silently using the first is wrong."""
    if query_image is None:
        return None
    images = image_batch_to_arrays(query_image, "query_image")
    if len(images) > 1:
        raise InvalidImageError(
            f"query_image is a batch of {len(images)} images; the CLIP Style Retriever matches one image. Pick "
            "one with the core ImageFromBatch node (batch_index, length 1) before query_image, or run one "
            "retriever per image."
        )
    return images[0]


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
        return _folder_signature(roots)

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


def shared_library(
    location: LibraryLocation,
    embedding_model: str,
    *,
    allow_download: bool = False,
    rebuild: bool = False,
    sync: bool = True,
    progress: Any = None,
) -> StyleLibrary:
    """The open library of ``location`` from this module's cache (opened and synced on first use, else synced
    unless ``sync`` is false), and its CLIP loaded once per model and device.

    The loader node and the Style Library tab's routes both come here, so the sidebar shares the
    node's CLIP and index handle instead of loading a second copy.
    """
    roots, store_dir, chroma_url = list(location.roots), location.store_dir, location.chroma_url
    device = str(torch_device())
    with _cache_lock:
        model_key = (embedding_model, device)
        if model_key not in _embedders:
            _embedders[model_key] = _managed_embedder(
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


def _tags(tag_filter: str) -> tuple[str, ...]:
    return normalise_tags(tag_filter)


PREVIEW_SIDE = 192
"""Side of each thumbnail of the retriever's preview gallery (the style images themselves keep ``resolution``)."""
CAPTION_LINE = 13
"""Height of one caption line in the preview, in pixels (PIL's default bitmap font is 11 px high)."""


def _thumbnail(image: np.ndarray, lines: list[str]) -> np.ndarray:
    """A small copy of a style image with a caption band below (one line each), for the preview gallery only."""
    pil = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))
    side = PREVIEW_SIDE  # one size whatever the resolution, so captions stay legible and k large stays light
    pil = pil.resize((side, side), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (side, side + CAPTION_LINE * len(lines) + 4), (20, 20, 20))
    canvas.paste(pil, (0, 0))
    draw = ImageDraw.Draw(canvas)
    width = max(8, side // 6)  # characters of the default font that fit the thumbnail's width
    for n, line in enumerate(lines):
        draw.text((3, side + 2 + n * CAPTION_LINE), line[:width], fill=(240, 240, 240))
    return np.asarray(canvas, dtype=np.float32) / 255.0


class ClipStyleRetriever(io.ComfyNode):
    """No ``validate_inputs``: ComfyUI then checks every declared min, max and option itself before a run
    (a ``validate_inputs`` taking ``**kwargs`` would switch those checks off for every input of the node)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{NODE_PREFIX}ClipStyleRetriever",
            display_name="CLIP Style Retriever",
            category=CATEGORY,
            description=(
                "Finds the style images that best fit a prompt (and/or a query image) by CLIP similarity, and "
                "returns them as an IMAGE batch with their names, scores and blending weights."
            ),
            inputs=[
                StyleLibraryType.Input("library", tooltip="A library from the Style Library node."),
                io.String.Input(
                    "prompt", multiline=True, default="an oil painting with swirling brushstrokes",
                    tooltip="What the style should look like; usually the render prompt. CLIP reads ~77 tokens.",
                ),
                io.Int.Input("k", default=1, min=1, max=MAX_K, tooltip="How many style references to return."),
                io.String.Input(
                    "tag_filter", default="",
                    tooltip="Comma-separated tags a style must all carry (exact match, case-insensitive). "
                    "Empty: no filter.",
                ),
                io.Float.Input(
                    "image_weight", default=0.5, min=0.0, max=1.0, step=0.05,
                    tooltip="With a query image: its share of the query compared with the style images (0 = prompt "
                    "only, 1 = image only); text_weight still compares the prompt with the styles' words.",
                ),
                io.Int.Input(
                    "resolution", default=512, min=64, max=2048, step=8,
                    tooltip="Side of the square style images (scaled to cover, centre-cropped).",
                ),
                io.Float.Input(
                    "blend_temperature", default=DEFAULT_TEMPERATURE, min=0.001, max=1.0, step=0.001,
                    tooltip="Softness of the blending weights over the k results (0.01 = CLIP's own scale; "
                    "higher spreads the weight more evenly).",
                ),
                io.Image.Input(
                    "query_image", optional=True,
                    tooltip="Optional image whose style to match (mixed with the prompt by image_weight). One image: "
                    "pick one of a batch with ImageFromBatch.",
                ),
                io.Float.Input(
                    "text_weight", default=0.0, min=0.0, max=1.0, step=0.05, optional=True,
                    tooltip="How much the styles' own words count: each score mixes the cosine of the query with "
                    "the style image (1 - text_weight) and of the prompt with the style's name, tags and "
                    "description (text_weight), both from the same CLIP. 0 = images only, 1 = words "
                    "only. Prompt-to-words cosines run higher than prompt-to-image ones (CLIP's modality gap), so "
                    "a small weight already counts: start around 0.1-0.3. Without a prompt (a query image alone) "
                    "it has no effect: the words are compared with the prompt, never with the image.",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="style_images", tooltip="The top-k style images, best first."),
                io.String.Output(display_name="names", tooltip="Their names, one per line."),
                io.String.Output(display_name="scores", tooltip="Their scores, comma-separated, best first: cosine "
                                 "similarities (with text_weight above 0, the mix of image and word cosines)."),
                io.String.Output(display_name="weights", tooltip="Blending weights summing to 1, comma-separated."),
                io.Float.Output(display_name="top_score", tooltip="The best match's score (as in scores)."),
                io.Float.Output(
                    display_name="top_z_score",
                    tooltip="The best match's score relative to the library for this query: standard deviations "
                    "above the mean score of all its styles. It does not move with a prompt's or model's overall "
                    "cosine level as top_score does, so one threshold holds across prompts. The best of many "
                    "styles always stands out somewhat (about 2.5 for 100 unrelated styles, 3.8 for 10,000), so "
                    "set the threshold for your library from a few prompts with and without a fitting style.",
                ),
                io.String.Output(
                    display_name="z_scores", tooltip="Each result's z-score among all the library's styles, "
                    "comma-separated, best first.",
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        library: StyleLibrary,
        prompt: str = "",
        k: int = 1,
        tag_filter: str = "",
        image_weight: float = 0.5,
        resolution: int = 512,
        blend_temperature: float = DEFAULT_TEMPERATURE,
        query_image: torch.Tensor | None = None,
        text_weight: float = 0.0,
    ) -> io.NodeOutput:
        if not isinstance(library, StyleLibrary):
            raise LibraryError(f"The library input is a {type(library).__name__}; connect a Style Library node.")
        image = _one_query_image(query_image)
        matches = library.query(
            StyleQuery(text=prompt, image=image, image_weight=image_weight, k=k, tags=_tags(tag_filter),
                       temperature=blend_temperature, text_weight=text_weight)
        )
        arrays = [square_reference(m.path, resolution) for m in matches]
        images = arrays_to_image_batch(arrays)
        # The preview is a gallery: every result as a thumbnail captioned with its name and scores.
        gallery = [_thumbnail(a, _caption_lines(n, m)) for n, (a, m) in enumerate(zip(arrays, matches, strict=True))]
        return io.NodeOutput(
            images,
            "\n".join(m.name for m in matches),
            ", ".join(f"{m.score:.4f}" for m in matches),
            ", ".join(f"{m.weight:.4f}" for m in matches),
            float(matches[0].score),
            float(matches[0].z_score),
            ", ".join(f"{m.z_score:.3f}" for m in matches),
            # "text" carries each caption on one line for API clients (and the batch manifest), after any
            # note that a damaged store was healed during this query (also logged as a warning).
            ui={**ui.PreviewImage(arrays_to_image_batch(gallery), cls=cls).as_dict(),
                "text": [*library.take_healed(), *(_label(m) for m in matches)]},
        )


def _caption_lines(rank: int, match: StyleMatch) -> list[str]:
    return [f"{rank + 1}. {match.name}", f"cos {match.score:.3f}  z {match.z_score:+.2f}",
            f"pct {match.percentile:.1f}  w {match.weight:.2f}"]


def _label(match: StyleMatch) -> str:
    """One line per result: name, raw score, standing in the library (z, percentile), then the blend weight."""
    return (f"{match.name[:48]}  score {match.score:.3f}  z {match.z_score:+.2f}  "
            f"p {match.percentile:.1f}  w {match.weight:.2f}")


class AddToStyleLibrary(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{NODE_PREFIX}AddToStyleLibrary",
            display_name="Add to Style Library",
            category=CATEGORY,
            description="Saves an image into the library's own folder with a name and tags, and indexes it.",
            inputs=[
                StyleLibraryType.Input("library", tooltip="A library from the Style Library node."),
                io.Image.Input("image", tooltip="The style image (each image of a batch is added)."),
                io.String.Input(
                    "name", default="my style",
                    tooltip="Display name of the new style. Its file name is made from it (letters and digits, "
                    "'_' between words, never replacing a file); control characters are refused.",
                ),
                io.String.Input(
                    "tags", default="", tooltip="Comma-separated tags for filtering, e.g. 'ink, line art'."
                ),
            ],
            outputs=[
                StyleLibraryType.Output(display_name="library", tooltip="The same library, now with the new style."),
                io.String.Output(display_name="ids", tooltip="Ids of the added styles, one per line."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls, library: StyleLibrary, image: torch.Tensor, name: str = "my style", tags: str = ""
    ) -> io.NodeOutput:
        if not isinstance(library, StyleLibrary):
            raise LibraryError(f"The library input is a {type(library).__name__}; connect a Style Library node.")
        arrays = image_batch_to_arrays(image, "image")
        names = numbered_names(checked_name(name), len(arrays))  # the tab's uploads follow the same rules
        added = library.add_many(arrays, names, checked_tags(tags), access=access_policy())
        return io.NodeOutput(library, "\n".join(m.item_id for m in added))


RETRIEVAL_NODES: list[type[io.ComfyNode]] = [StyleLibraryLoader, ClipStyleRetriever, AddToStyleLibrary]
