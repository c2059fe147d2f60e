"""API-format graphs built against the server's own schemas: a test names only the inputs it cares about.

``Graph.node`` fills every other required input with its default from ``/object_info`` (a combo without one takes
its first option), the way Acly's ``ComfyWorkflow`` (krita-ai-diffusion) fills a node from the server's node
list. Optional inputs are left out unless given, so a graph also stands for one saved before an optional input
existed. An input the node does not have, or a required one without a default, is an error naming the node.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from sketch_rag.cli.comfyui_client import ComfyClient
from sketch_rag.tiny_models.clip import TINY_CLIP_NAME
from sketch_rag.tiny_models.sd import CHECKPOINT_NAME, CONTROLNET_NAMES, IMAGE_ENCODER_NAME, IP_ADAPTER_NAMES

CANNY = "SketchRAGCannySketchPreprocessor"
PIPELINE_LOADER, SAMPLER, LORA = "SketchRAGHybridPipelineLoader", "SketchRAGHybridSampler", "SketchRAGHybridLoRA"
LIBRARY_LOADER, RETRIEVER = "SketchRAGStyleLibraryLoader", "SketchRAGClipStyleRetriever"
ADD = "SketchRAGAddToStyleLibrary"

_NO_DEFAULT = object()


@dataclass(frozen=True)
class Node:
    """A node of a ``Graph``: its id in the API graph and its type."""

    id: str
    class_type: str

    def out(self, index: int = 0) -> list[Any]:
        """The link to output ``index``, as an API graph writes it."""
        return [self.id, index]


class Schemas:
    """``/object_info/{type}`` of each node type asked for, fetched once per type from ``client``'s server."""

    def __init__(self, client: ComfyClient) -> None:
        self._client = client
        self._known: dict[str, dict[str, Any]] = {}

    def __getitem__(self, class_type: str) -> dict[str, Any]:
        if class_type not in self._known:
            found = self._client.node_info([class_type])
            if class_type not in found:
                raise KeyError(f"The server at {self._client.url} has no node type {class_type!r}.")
            self._known[class_type] = found[class_type]
        return self._known[class_type]


def input_default(spec: list[Any]) -> Any:
    """An input's default from its ``/object_info`` spec; ``_NO_DEFAULT`` for a link-only input (IMAGE, ...)."""
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in options:
        return options["default"]
    if isinstance(kind, list) and kind:  # a combo written as its list of choices
        return kind[0]
    if kind == "COMBO" and options.get("options"):  # a V3 combo
        return options["options"][0]
    return _NO_DEFAULT


class Graph:
    """An API-format graph; node ids are "1", "2", ... in the order the nodes are added."""

    def __init__(self, schemas: Schemas) -> None:
        self.schemas = schemas
        self.nodes: dict[str, dict[str, Any]] = {}

    def node(self, class_type: str, /, **inputs: Any) -> Node:
        """Add a ``class_type`` node with ``inputs`` (a ``Node`` links its output 0) and defaults for the rest."""
        declared = self.schemas[class_type]["input"]
        required, optional = declared.get("required", {}), declared.get("optional", {})
        unknown = sorted(set(inputs) - set(required) - set(optional))
        if unknown:
            known = ", ".join([*required, *optional])
            raise ValueError(f"{class_type} has no input {', '.join(unknown)}; it has {known}")
        values: dict[str, Any] = {}
        missing = []
        for name, spec in required.items():
            if name not in inputs:
                default = input_default(spec)
                if default is _NO_DEFAULT:
                    missing.append(name)
                else:
                    values[name] = default
        if missing:
            raise ValueError(f"{class_type} needs {', '.join(missing)}: no default in /object_info, so pass them")
        values.update({name: value.out() if isinstance(value, Node) else value for name, value in inputs.items()})
        node = Node(str(len(self.nodes) + 1), class_type)
        self.nodes[node.id] = {"class_type": class_type, "inputs": values}
        return node

    def inputs(self, node: Node) -> dict[str, Any]:
        """The inputs ``node`` will be queued with (the graph's own dict: edits change the graph)."""
        return dict(self.nodes[node.id]["inputs"])

    def set(self, node: Node, **inputs: Any) -> None:
        """Change inputs of a node already in the graph."""
        self.nodes[node.id]["inputs"].update(
            {name: value.out() if isinstance(value, Node) else value for name, value in inputs.items()})

    def api(self) -> dict[str, Any]:
        """The graph as ``POST /prompt`` takes it (a copy)."""
        return copy.deepcopy(self.nodes)


# -- the graphs the server tier queues -----------------------------------------------------------------------


@dataclass(frozen=True)
class RenderGraph:
    """Sketch → Canny → Hybrid Pipeline Loader (→ LoRA × n) → Hybrid Sampler ← style image → Save Image."""

    graph: Graph
    sketch: Node
    edges: Node
    loader: Node
    style: Node
    sampler: Node
    save: Node
    loras: tuple[Node, ...] = ()


def render_graph(schemas: Schemas, sketch: str, style: str, *, loras: tuple[tuple[str, float], ...] = (),
                 edges: dict[str, Any] | None = None, prefix: str = "tests/render", **sampler: Any) -> RenderGraph:
    """The tiny models' render of the uploaded ``sketch`` in the uploaded ``style``: 64 px high, 3 steps.

    ``sampler`` overrides any Hybrid Sampler input; optional ones (``sampler``, ``clip_skip``, ...) are sent only
    when given. ``edges`` overrides the Canny node's inputs.
    """
    graph = Graph(schemas)
    sketch_node = graph.node("LoadImage", image=sketch)
    edge_node = graph.node(CANNY, image=sketch_node, **{"resolution": 64, **(edges or {})})
    loader = graph.node(PIPELINE_LOADER, checkpoint=CHECKPOINT_NAME, controlnet=CONTROLNET_NAMES[0],
                        ip_adapter=IP_ADAPTER_NAMES[0], image_encoder=IMAGE_ENCODER_NAME)
    style_node = graph.node("LoadImage", image=style)
    pipeline, lora_nodes = loader, []
    for name, strength in loras:
        pipeline = graph.node(LORA, pipeline=pipeline, lora=name, strength=strength)
        lora_nodes.append(pipeline)
    settings = {"prompt": "a watercolor house", "negative_prompt": "blurry", "controlnet_conditioning_scale": 1.5,
                "ip_adapter_scale": 0.8, "num_inference_steps": 3, "seed": 21, "width": 0, "height": 64, **sampler}
    sampler_node = graph.node(SAMPLER, pipeline=pipeline, edges=edge_node, style=style_node, **settings)
    save = graph.node("SaveImage", images=sampler_node, filename_prefix=prefix)
    return RenderGraph(graph, sketch_node, edge_node, loader, style_node, sampler_node, save, tuple(lora_nodes))


@dataclass(frozen=True)
class RetrievalGraph:
    """Style Library → CLIP Style Retriever → a preview (or save) of the retrieved styles."""

    graph: Graph
    library: Node
    retriever: Node
    output: Node


def retrieval_graph(schemas: Schemas, library_folder: str = "", *, store: str = "", save: bool = False,
                    **retriever: Any) -> RetrievalGraph:
    """Retrieve from ``library_folder`` on the tiny CLIP: k=1 at 64 px unless ``retriever`` says otherwise."""
    graph = Graph(schemas)
    library = graph.node(LIBRARY_LOADER, library_folder=library_folder, embedding_model=TINY_CLIP_NAME, store=store)
    settings = {"prompt": "a red poster", "k": 1, "resolution": 64, "blend_temperature": 0.01, **retriever}
    found = graph.node(RETRIEVER, library=library, **settings)
    output = (graph.node("SaveImage", images=found, filename_prefix="tests/styles") if save
              else graph.node("PreviewImage", images=found))
    return RetrievalGraph(graph, library, found, output)
