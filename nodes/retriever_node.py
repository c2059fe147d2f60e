"""The CLIP Style Retriever node: a prompt and/or query image -> the best-fitting style images of a library.

It converts tensors, runs the library's query and returns the images with their names, scores and weights; the
preview gallery is drawn in ``retriever_gallery``.
"""

from __future__ import annotations

import numpy as np
import torch
from comfy_api.v0_0_2 import io, ui

from ..errors import InvalidImageError
from ..retrieval import DEFAULT_TEMPERATURE, MAX_K, StyleLibrary, StyleQuery, normalise_tags, square_reference
from .common import CATEGORY, NODE_PREFIX
from .library_socket import StyleLibraryType, checked_library
from .retriever_gallery import caption_lines, label, thumbnail
from .tensors import arrays_to_image_batch, image_batch_to_arrays


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


def _tags(tag_filter: str) -> tuple[str, ...]:
    return normalise_tags(tag_filter)


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
        library = checked_library(library)
        image = _one_query_image(query_image)
        matches = library.query(
            StyleQuery(text=prompt, image=image, image_weight=image_weight, k=k, tags=_tags(tag_filter),
                       temperature=blend_temperature, text_weight=text_weight)
        )
        arrays = [square_reference(m.path, resolution) for m in matches]
        images = arrays_to_image_batch(arrays)
        # The preview is a gallery: every result as a thumbnail captioned with its name and scores.
        gallery = [thumbnail(a, caption_lines(n, m)) for n, (a, m) in enumerate(zip(arrays, matches, strict=True))]
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
                "text": [*library.take_healed(), *(label(m) for m in matches)]},
        )
