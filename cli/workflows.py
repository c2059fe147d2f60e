"""Workflow files: load API-format graphs, check them against a server, convert UI format, bind job fields.

ComfyUI keeps two formats of one graph: the UI format (nodes with positions, ``links`` and positional
``widgets_values``; what the template browser opens) and the API format (``{id: {class_type, inputs}}``;
what ``POST /prompt`` takes). We ship both, so this module proves they describe the same graph and that
the graph fits a server's ``/object_info`` before any job is queued: ComfyUI itself reports a bad value one
job at a time ("Value not in list"), which is costly for a batch of hundreds.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import WorkflowError
from ..model_folders import CHECKPOINTS, CLIP_VISION, CONTROLNET, IPADAPTER, STYLE_CLIP

PACK_DIR = Path(__file__).resolve().parent.parent
WORKFLOWS_DIR = PACK_DIR / "workflows"
"""UI-format workflows (``*.json``, each with a ``.jpg`` thumbnail) for ComfyUI's template browser.

ComfyUI 0.3.75 (``app/custom_node_manager.py``) lists ``*.json`` directly inside a pack's example_workflows,
example, examples, workflow or workflows folder, and serves the first of those that exists under
``/api/workflow_templates/<pack>/``; so the pack has no folder earlier in that list (the example sketches live
in ``workflows/sketches/``, which it neither lists nor needs)."""
API_DIR = WORKFLOWS_DIR / "api"
"""API-format copies, one folder deeper so the template browser does not list them."""
SKETCHES_DIR = WORKFLOWS_DIR / "sketches"
"""The example sketches (see PROVENANCE.md there): the demo's input, and the tests' and benches'."""
DEFAULT_WORKFLOW = "sketch_to_render"

Graph = dict[str, dict[str, Any]]

FRONTEND_ONLY_TYPES = frozenset({"Note", "MarkdownNote"})
"""Node types that live in the frontend only: a UI workflow may hold them, the queued graph never does."""

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
"""Input types the frontend shows as widgets (their values live in ``widgets_values``); lists are combos too."""


def api_path(name: str = DEFAULT_WORKFLOW) -> Path:
    return API_DIR / f"{name}.json"


def ui_path(name: str = DEFAULT_WORKFLOW) -> Path:
    return WORKFLOWS_DIR / f"{name}.json"


def load_api_workflow(source: str | Path = DEFAULT_WORKFLOW) -> Graph:
    """An API-format graph from a bundled name (``sketch_to_render``) or a file path.

    Raises:
        WorkflowError: the file is missing, not JSON, or in UI format.
    """
    path = Path(source)
    if not path.suffix:
        path = api_path(str(source))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        bundled = ", ".join(sorted(p.stem for p in API_DIR.glob("*.json")))
        raise WorkflowError(f"Workflow {source!s} not found at {path}; bundled API workflows: {bundled}.") from exc
    except json.JSONDecodeError as exc:
        raise WorkflowError(f"Workflow {path} is not valid JSON ({exc}); export it again from ComfyUI.") from exc
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise WorkflowError(
            f"Workflow {path} is in UI format; pass the API format (ComfyUI: Workflow > Export (API)), "
            f"e.g. {api_path()}."
        )
    if not isinstance(data, dict) or not all(isinstance(n, dict) and "class_type" in n for n in data.values()):
        raise WorkflowError(f"Workflow {path} is not an API-format graph ({{id: {{class_type, inputs}}}}).")
    return {str(k): v for k, v in data.items()}


def load_ui_workflow(source: str | Path = DEFAULT_WORKFLOW) -> dict[str, Any]:
    path = Path(source) if Path(source).suffix else ui_path(str(source))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise WorkflowError(f"UI workflow {path} cannot be read ({exc}).") from exc
    if not isinstance(data, dict) or "nodes" not in data:
        raise WorkflowError(f"{path} is not a UI-format workflow (no 'nodes').")
    return data


# -- /object_info helpers -------------------------------------------------------------------------------
def _input_specs(info: Mapping[str, Any]) -> dict[str, tuple[Any, dict[str, Any], bool]]:
    """name -> (type or option list, options, required), in the node's input order."""
    specs: dict[str, tuple[Any, dict[str, Any], bool]] = {}
    for section, required in (("required", True), ("optional", False)):
        for name, spec in info.get("input", {}).get(section, {}).items():
            specs[name] = (spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}, required)
    order = info.get("input_order")
    if order:
        names = [*order.get("required", []), *order.get("optional", [])]
        specs = {n: specs[n] for n in names if n in specs} | specs
    return specs


def combo_options(kind: Any, options: Mapping[str, Any]) -> list[Any] | None:
    """The allowed values of a combo input (V1 lists its options inline, V3 as ``["COMBO", {"options"}]``)."""
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return list(options.get("options", []))
    return None


def _is_widget(kind: Any) -> bool:
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _widget_names(info: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """Widget inputs in frontend order, each with whether a control_after_generate value follows it."""
    return [
        (name, bool(opts.get("control_after_generate")))
        for name, (kind, opts, _req) in _input_specs(info).items()
        if _is_widget(kind)
    ]


def validate_graph(graph: Graph, object_info: Mapping[str, Any], *, skip_values: Iterable[tuple[str, str]] = ()
                   ) -> list[str]:
    """Every problem ``POST /prompt`` would find (and some it would find only at run time), all at once.

    ``skip_values`` lists ``(node id, input)`` whose value is not known yet (an image uploaded later).
    Returns one readable line per problem; an empty list means the graph fits the server.
    """
    skipped = set(skip_values)
    problems: list[str] = []
    for node_id, node in graph.items():
        class_type = node.get("class_type")
        label = f"node {node_id} ({class_type})"
        info = object_info.get(str(class_type))
        if info is None:
            hint = " (a Sketch RAG node: is the pack installed and did it import?)" if str(class_type).startswith(
                "SketchRAG") else ""
            problems.append(f"{label}: the server has no node type {class_type!r}{hint}.")
            continue
        specs = _input_specs(info)
        inputs = node.get("inputs", {})
        for name, (_kind, _opts, required) in specs.items():
            if required and name not in inputs:
                problems.append(f"{label}: required input {name!r} is missing.")
        for name, value in inputs.items():
            if name not in specs:
                problems.append(f"{label}: unknown input {name!r}; the server's inputs are {sorted(specs)}.")
                continue
            kind, opts, _required = specs[name]
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                problems.extend(_check_link(graph, object_info, label, name, kind, value))
            elif (node_id, name) not in skipped:
                problems.extend(_check_value(label, name, kind, opts, value))
    return problems


def _check_link(graph: Graph, object_info: Mapping[str, Any], label: str, name: str, kind: Any,
                link: list[Any]) -> list[str]:
    source_id, slot = str(link[0]), int(link[1])
    source = graph.get(source_id)
    if source is None:
        return [f"{label}: input {name!r} is linked to node {source_id}, which is not in the graph."]
    source_info = object_info.get(str(source.get("class_type")))
    if source_info is None:
        return []  # reported on the source node itself
    outputs = source_info.get("output", [])
    if not 0 <= slot < len(outputs):
        return [f"{label}: input {name!r} takes output {slot} of node {source_id}, which has {len(outputs)}."]
    produced, wanted = outputs[slot], kind
    if isinstance(wanted, str) and isinstance(produced, str) and "*" not in (wanted, produced) and \
            wanted != produced and not (wanted == "COMBO" and produced == "COMBO"):
        return [f"{label}: input {name!r} wants {wanted} but node {source_id} output {slot} is {produced}."]
    return []


def _check_value(label: str, name: str, kind: Any, opts: Mapping[str, Any], value: Any) -> list[str]:
    allowed = combo_options(kind, opts)
    if allowed is not None:
        if value not in allowed:
            shown = ", ".join(map(str, allowed[:20])) + (" …" if len(allowed) > 20 else "")
            return [f"{label}: {name} {value!r} is not on the server; it has: {shown or '(nothing)'}."]
        return []
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, int | float) or (kind == "INT" and value != int(value)):
            return [f"{label}: {name} must be a number ({kind}), got {value!r}."]
        low, high = opts.get("min"), opts.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            return [f"{label}: {name} {value!r} is outside {low}..{high}."]
    elif kind == "BOOLEAN" and not isinstance(value, bool):
        return [f"{label}: {name} must be true or false, got {value!r}."]
    elif kind == "STRING" and not isinstance(value, str):
        return [f"{label}: {name} must be text, got {value!r}."]
    return []


# -- UI format <-> API format ---------------------------------------------------------------------------
def ui_to_api(ui: Mapping[str, Any], object_info: Mapping[str, Any]) -> Graph:
    """The API graph a UI-format workflow queues, as the frontend builds it (bypassed/muted nodes dropped).

    Raises:
        WorkflowError: a node type the server lacks, or widget values that do not fit its inputs.
    """
    links = {int(link[0]): link for link in ui.get("links", [])}  # id, from, from_slot, to, to_slot, type
    graph: Graph = {}
    for node in ui["nodes"]:
        if node.get("mode", 0) in (2, 4) or node["type"] in FRONTEND_ONLY_TYPES:  # 2 muted, 4 bypassed
            continue
        info = object_info.get(node["type"])
        if info is None:
            raise WorkflowError(f"UI node {node['id']} has type {node['type']!r}, which the server does not know.")
        values = list(node.get("widgets_values") or [])
        inputs: dict[str, Any] = {}
        position = 0
        for name, has_control in _widget_names(info):
            if position >= len(values):
                raise WorkflowError(f"UI node {node['id']} ({node['type']}) has too few widgets_values for {name!r}.")
            inputs[name] = values[position]
            position += 2 if has_control else 1
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[int(slot["link"])]
                inputs[slot["name"]] = [str(link[1]), int(link[2])]
        entry: dict[str, Any] = {"class_type": node["type"], "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        graph[str(node["id"])] = entry
    return graph


def bind_ui_values(ui: Mapping[str, Any], graph: Graph, object_info: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the UI workflow with every widget value taken from the API graph (same node ids).

    Embedded in a batch render's PNG, it reopens in ComfyUI with the exact job's prompt, seed and scales.
    """
    bound = copy.deepcopy(dict(ui))
    for node in bound["nodes"]:
        api = graph.get(str(node["id"]))
        info = object_info.get(node["type"])
        if api is None or info is None:
            continue
        values = list(node.get("widgets_values") or [])
        position = 0
        for name, has_control in _widget_names(info):
            value = api["inputs"].get(name)
            if position < len(values) and value is not None and not isinstance(value, list):
                values[position] = value
            position += 2 if has_control else 1
        node["widgets_values"] = values
    return bound


def graph_differences(first: Graph, second: Graph) -> list[str]:
    """How two API graphs differ (titles ignored); empty when they queue the same work."""
    problems = []
    for node_id in sorted(set(first) | set(second), key=str):
        a, b = first.get(node_id), second.get(node_id)
        if a is None or b is None:
            problems.append(f"node {node_id} is only in the {'second' if a is None else 'first'} graph.")
            continue
        if a["class_type"] != b["class_type"]:
            problems.append(f"node {node_id}: {a['class_type']} vs {b['class_type']}.")
        for name in sorted(set(a["inputs"]) | set(b["inputs"])):
            if a["inputs"].get(name) != b["inputs"].get(name):
                problems.append(f"node {node_id} input {name}: {a['inputs'].get(name)!r} vs {b['inputs'].get(name)!r}.")
    return problems


# -- job fields -> graph inputs ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """One graph input a job field sets: every node of ``class_type`` (optionally with ``title``) gets it.

    An input wired to another node's output takes its value from there, so a field leaves it alone, unless
    ``replaces_link``: then the field's value replaces the link (a style query that differs from the prompt).
    """

    class_type: str
    input: str
    title: str | None = None
    replaces_link: bool = False


BINDINGS: dict[str, tuple[Target, ...]] = {
    "sketch": (Target("LoadImage", "image", "sketch"),),
    # sketch_to_render asks for the prompt once: a string node titled "prompt" wired into the retriever and the
    # sampler. A workflow that types it into each node gets it written into each.
    "prompt": (Target("PrimitiveStringMultiline", "value", "prompt"), Target("SketchRAGHybridSampler", "prompt"),
               Target("SketchRAGClipStyleRetriever", "prompt"),
               Target("CLIPTextEncode", "text", "positive prompt")),
    # Set after "prompt", so a separate style query overrides what the retriever searches for.
    "style_query": (Target("SketchRAGClipStyleRetriever", "prompt", replaces_link=True),),
    "negative_prompt": (Target("SketchRAGHybridSampler", "negative_prompt"),
                        Target("CLIPTextEncode", "text", "negative prompt")),
    "seed": (Target("SketchRAGHybridSampler", "seed"), Target("KSampler", "seed")),
    "k": (Target("SketchRAGClipStyleRetriever", "k"),),
    "controlnet_scale": (Target("SketchRAGHybridSampler", "controlnet_conditioning_scale"),
                         Target("ControlNetApplyAdvanced", "strength")),
    "ip_adapter_scale": (Target("SketchRAGHybridSampler", "ip_adapter_scale"),),
    "steps": (Target("SketchRAGHybridSampler", "num_inference_steps"), Target("KSampler", "steps")),
    "resolution": (Target("SketchRAGCannySketchPreprocessor", "resolution"),),
    "style_resolution": (Target("SketchRAGClipStyleRetriever", "resolution"),),
    # 0 (the default) renders at SD1.5's 512 px with the edge map's aspect; a height sets the size instead.
    "height": (Target("SketchRAGHybridSampler", "height"),),
    "checkpoint": (Target("SketchRAGHybridPipelineLoader", "checkpoint"),
                   Target("CheckpointLoaderSimple", "ckpt_name")),
    "controlnet": (Target("SketchRAGHybridPipelineLoader", "controlnet"),
                   Target("ControlNetLoader", "control_net_name")),
    "ip_adapter": (Target("SketchRAGHybridPipelineLoader", "ip_adapter"),),
    "image_encoder": (Target("SketchRAGHybridPipelineLoader", "image_encoder"),),
    "embedding_model": (Target("SketchRAGStyleLibraryLoader", "embedding_model"),),
    "library_folder": (Target("SketchRAGStyleLibraryLoader", "library_folder"),),
    "filename_prefix": (Target("SaveImage", "filename_prefix"),),
}


def is_link(value: Any) -> bool:
    """Whether an API-format input value is a link to another node's output (``[node id, output index]``)."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


PRIMITIVE_TYPES = frozenset({"PrimitiveString", "PrimitiveStringMultiline", "PrimitiveInt", "PrimitiveFloat",
                             "PrimitiveBoolean"})
"""ComfyUI core's value nodes: one ``value`` input, passed on unchanged (``comfy_extras/nodes_primitive.py``)."""


def resolved(graph: Graph, value: Any) -> Any:
    """An input's value as the node receives it: a link to one of core's value nodes is followed to that value."""
    while is_link(value) and graph.get(value[0], {}).get("class_type") in PRIMITIVE_TYPES:
        value = graph[value[0]]["inputs"]["value"]
    return value


def targets(graph: Graph, field_name: str) -> list[tuple[str, str]]:
    """The ``(node id, input)`` pairs a job field sets in this graph (see :class:`Target` for wired inputs)."""
    found = []
    for target in BINDINGS[field_name]:
        for node_id, node in graph.items():
            title = node.get("_meta", {}).get("title")
            if node["class_type"] == target.class_type and (target.title is None or title == target.title):
                if target.replaces_link or not is_link(node.get("inputs", {}).get(target.input)):
                    found.append((node_id, target.input))
    return found


def bind(graph: Graph, fields: Mapping[str, Any]) -> Graph:
    """A copy of ``graph`` with each non-None field written into the inputs it drives.

    Raises:
        WorkflowError: a field this workflow has no input for (e.g. ``ip_adapter_scale`` in the core variant).
    """
    bound = copy.deepcopy(graph)
    for field_name in BINDINGS:  # BINDINGS' order, so style_query lands after prompt
        value = fields.get(field_name)
        if value is None:
            continue
        places = targets(bound, field_name)
        if not places:
            raise WorkflowError(
                f"The workflow has no input for {field_name} = {value!r}; drop that field or use a workflow with "
                f"one of: {', '.join(f'{t.class_type}.{t.input}' for t in BINDINGS[field_name])}."
            )
        for node_id, name in places:
            bound[node_id]["inputs"][name] = value
    unknown = set(fields) - set(BINDINGS)
    if unknown:
        raise WorkflowError(f"Unknown job field(s) {sorted(unknown)}; known: {sorted(BINDINGS)}.")
    return bound


def nodes_titled(graph: Graph, class_type: str, title: str | None = None) -> list[str]:
    return [node_id for node_id, node in graph.items() if node["class_type"] == class_type
            and (title is None or node.get("_meta", {}).get("title") == title)]


def style_results(graph: Graph, outputs: dict[str, Any]) -> tuple[list[str], list[float]]:
    """The retrieved style names and scores a finished job shows in its "style names"/"style scores" previews."""

    def texts(title: str) -> list[str]:
        values = [t for nid in nodes_titled(graph, "PreviewAny", title) for t in outputs.get(nid, {}).get("text", [])]
        return [line.strip() for value in values for line in str(value).splitlines() if line.strip()]

    scores = [float(s) for text in texts("style scores") for s in text.split(",") if s.strip()]
    return texts("style names"), scores


@dataclass(frozen=True)
class ModelFile:
    """A real model file a bundled workflow names, as ComfyUI's frontend reads it from ``properties.models``.

    The frontend (1.32, bundled with ComfyUI 0.3.75) collects these from each node whose widget values include
    ``name``, and from the workflow's own ``models`` list; one it cannot find in ``directory`` (a models folder
    name, as ``/experiment/models`` lists them) is shown in its Missing Models panel with a download button,
    which it offers only for ``https://huggingface.co/`` or civitai URLs and ``.safetensors``/``.sft`` names.
    """

    name: str
    """The file name as the node's dropdown shows it, a path below ``directory``."""
    url: str
    directory: str


HF = "https://huggingface.co"
MODEL_FILES: dict[str, ModelFile] = {
    "checkpoint": ModelFile(
        "v1-5-pruned-emaonly.safetensors",
        f"{HF}/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors",
        CHECKPOINTS),
    "controlnet": ModelFile(
        "control_v11p_sd15_canny_fp16.safetensors",
        f"{HF}/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/control_v11p_sd15_canny_fp16.safetensors",
        CONTROLNET),
    "ip_adapter": ModelFile(
        "ip-adapter_sd15.safetensors", f"{HF}/h94/IP-Adapter/resolve/main/models/ip-adapter_sd15.safetensors",
        IPADAPTER),
    # h94 ships the ViT-H/14 encoder as models/image_encoder/model.safetensors; ComfyUI users keep it under
    # this name (a browser download arrives as model.safetensors: save it as ``name``).
    "image_encoder": ModelFile(
        "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
        f"{HF}/h94/IP-Adapter/resolve/main/models/image_encoder/model.safetensors", CLIP_VISION),
    # The style CLIP is a transformers folder (config, tokenizer, weights), which no single download fills; its
    # weights file stands for it, so the panel names the folder and where it goes, and the template's note gives
    # the one command that fetches all of it. The repo's main branch has no model.safetensors, so the frontend
    # lists this entry without a download button.
    "embedding_model": ModelFile(
        "clip-vit-base-patch32/pytorch_model.bin",
        f"{HF}/openai/clip-vit-base-patch32/resolve/main/pytorch_model.bin", STYLE_CLIP),
}
"""The model files the bundled workflows name, keyed by the job field that picks each (see the README)."""

REAL_MODELS: dict[str, str] = {
    **{field: model.name for field, model in MODEL_FILES.items() if field != "embedding_model"},
    "embedding_model": MODEL_FILES["embedding_model"].name.split("/")[0],
}
"""The dropdown values the bundled workflows carry for the real models (the style CLIP by its folder)."""

def tiny_models() -> dict[str, str]:
    """Job fields that point the bundled workflows at the files ``sketch-rag tiny-models`` writes."""
    from ..tiny_models.clip import TINY_CLIP_NAME
    from ..tiny_models.sd import CHECKPOINT_NAME, CONTROLNET_NAMES, IMAGE_ENCODER_NAME, IP_ADAPTER_NAMES

    return {"checkpoint": CHECKPOINT_NAME, "controlnet": CONTROLNET_NAMES[0], "ip_adapter": IP_ADAPTER_NAMES[0],
            "image_encoder": IMAGE_ENCODER_NAME, "embedding_model": TINY_CLIP_NAME}
