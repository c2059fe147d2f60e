"""The Add to Style Library node: saves images into a library's own folder under a name and tags, and indexes them.

The name and tag rules are retrieval's (``checked_name``, ``checked_tags``), the same the Style Library tab's
uploads follow.
"""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from ..retrieval import StyleLibrary, checked_name, checked_tags, numbered_names
from .comfy_folders import access_policy
from .common import CATEGORY, NODE_PREFIX
from .library_socket import StyleLibraryType, checked_library
from .tensors import image_batch_to_arrays


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
        library = checked_library(library)
        arrays = image_batch_to_arrays(image, "image")
        names = numbered_names(checked_name(name), len(arrays))  # the tab's uploads follow the same rules
        added = library.add_many(arrays, names, checked_tags(tags), access=access_policy())
        return io.NodeOutput(library, "\n".join(m.item_id for m in added))
