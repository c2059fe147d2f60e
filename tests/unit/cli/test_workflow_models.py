"""The bundled workflows tell ComfyUI's frontend which real model files they need, and where they come from.

The frontend (1.32, with ComfyUI 0.3.75) reads ``properties.models`` of each node, keeps the entries whose
``name`` is one of the node's widget values, adds the workflow's own ``models`` list, and lists those it cannot
find in their models folder; it offers a download only for Hugging Face/civitai URLs and ``.safetensors`` names.
These checks hold the files to exactly those rules, without a server (the browser test sees the panel itself).
"""

from __future__ import annotations

from typing import Any

import pytest

from sketch_rag.cli.workflows import (
    API_DIR,
    HF,
    MODEL_FILES,
    PACK_DIR,
    REAL_MODELS,
    SKETCHES_DIR,
    WORKFLOWS_DIR,
    ModelFile,
    load_api_workflow,
    load_ui_workflow,
    targets,
)
from sketch_rag.model_folders import CONTROLNET, FOLDER_OF_INPUT

NAMES = sorted(p.stem for p in API_DIR.glob("*.json"))
DOWNLOADABLE_HOSTS = ("https://huggingface.co/", "https://civitai.com/")
DOWNLOADABLE_SUFFIXES = (".safetensors", ".sft")
FOLDER_NAMES_BEFORE_OURS = ("example_workflows", "example", "examples", "workflow")
"""ComfyUI 0.3.75 serves the first of example_workflows/example/examples/workflow/workflows a pack has."""

ALTERNATIVE_MODEL_FILES: dict[str, tuple[ModelFile, ...]] = {
    # For the Canny node's ``lines`` mode: the ControlNet trained on 1-pixel line art. Listed with the loader's
    # models; the frontend reports it only once a user picks it in the dropdown.
    "controlnet": (ModelFile(
        "control_v11p_sd15_lineart_fp16.safetensors",
        f"{HF}/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/control_v11p_sd15_lineart_fp16.safetensors",
        CONTROLNET),),
}
MODEL_LOADERS: dict[str, dict[str, str]] = {
    "SketchRAGHybridPipelineLoader": {"checkpoint": "checkpoint", "controlnet": "controlnet",
                                      "ip_adapter": "ip_adapter", "image_encoder": "image_encoder"},
    "CheckpointLoaderSimple": {"ckpt_name": "checkpoint"},
    "ControlNetLoader": {"control_net_name": "controlnet"},
}
"""Node type -> {model widget -> job field}: the nodes whose ``properties.models`` describe their files.

The Style Library Loader is not here: its dropdown names a folder, which the frontend cannot match to a file,
so the style CLIP is described in the workflow's own ``models`` list instead."""


def metadata(model: ModelFile) -> dict[str, str]:
    return {"name": model.name, "url": model.url, "directory": model.directory}


def node_model_files(node_type: str) -> list[ModelFile]:
    """The ``properties.models`` a model-loading node of the bundled workflows carries, in widget order."""
    fields = MODEL_LOADERS.get(node_type, {}).values()
    return [model for field in fields for model in (MODEL_FILES[field], *ALTERNATIVE_MODEL_FILES.get(field, ()))]


def frontend_selection(node: dict[str, Any]) -> list[str]:
    """The model names the frontend takes from a node: ``properties.models`` entries named by a widget value."""
    values = {v for v in node.get("widgets_values") or [] if isinstance(v, str) and v.strip()}
    return [m["name"] for m in node.get("properties", {}).get("models", []) if m["name"] in values]


@pytest.mark.parametrize("name", NAMES)
def test_every_model_loader_names_its_files_with_url_and_folder(name: str) -> None:
    ui = load_ui_workflow(name)
    loaders = [n for n in ui["nodes"] if n["type"] in MODEL_LOADERS]
    assert loaders, f"{name} has no model loader"
    for node in loaders:
        assert node["properties"]["models"] == [metadata(m) for m in node_model_files(node["type"])]
        wanted = [REAL_MODELS[field] for field in MODEL_LOADERS[node["type"]].values()]
        assert frontend_selection(node) == wanted, f"{name} node {node['id']} ({node['type']})"


@pytest.mark.parametrize("name", NAMES)
def test_the_style_clip_folder_is_described_by_the_workflow_with_its_weights_file(name: str) -> None:
    ui = load_ui_workflow(name)
    library = next(n for n in ui["nodes"] if n["type"] == "SketchRAGStyleLibraryLoader")
    clip = MODEL_FILES["embedding_model"]
    assert ui["models"] == [metadata(clip)]
    assert REAL_MODELS["embedding_model"] in library["widgets_values"]
    assert clip.name.startswith(REAL_MODELS["embedding_model"] + "/")


def test_each_file_is_in_the_folder_the_nodes_read_it_from() -> None:
    for field, model in MODEL_FILES.items():
        assert model.directory == FOLDER_OF_INPUT[field], field


def test_each_file_but_the_clip_folder_is_one_the_frontend_can_download() -> None:
    for field, model in MODEL_FILES.items():
        assert model.url.startswith("https://huggingface.co/") and "/resolve/main/" in model.url, field
        downloadable = model.url.startswith(DOWNLOADABLE_HOSTS) and model.name.endswith(DOWNLOADABLE_SUFFIXES)
        assert downloadable == (field != "embedding_model"), field
    assert MODEL_FILES["embedding_model"].url.endswith("/" + MODEL_FILES["embedding_model"].name.split("/")[-1])
    for model in (m for loader in MODEL_LOADERS for m in node_model_files(loader)):
        # Saved under the URL's file name by a browser download: the name itself, or h94's encoder to rename.
        assert model.url.rsplit("/", 1)[-1] in (model.name, "model.safetensors"), model


@pytest.mark.parametrize("name", NAMES)
def test_the_api_copy_names_the_same_files(name: str) -> None:
    api = load_api_workflow(name)
    for field, model_name in REAL_MODELS.items():
        for node_id, input_name in targets(api, field):
            assert api[node_id]["inputs"][input_name] == model_name, (name, field)


@pytest.mark.parametrize("name", NAMES)
def test_the_models_note_names_every_folder_and_the_clip_download(name: str) -> None:
    ui = load_ui_workflow(name)
    note = next(n for n in ui["nodes"] if n["type"] == "MarkdownNote")["widgets_values"][0]
    used = {field for loader in ui["nodes"] if loader["type"] in MODEL_LOADERS
            for field in MODEL_LOADERS[loader["type"]].values()}
    for field in used:
        assert f"`{MODEL_FILES[field].directory}/` {MODEL_FILES[field].name}" in note, field
    assert "hf download openai/clip-vit-base-patch32 --local-dir models/style_clip/clip-vit-base-patch32" in note
    assert ui["last_node_id"] == max(n["id"] for n in ui["nodes"])


def test_no_template_folder_shadows_workflows_and_the_sketches_keep_their_licences() -> None:
    assert [f for f in FOLDER_NAMES_BEFORE_OURS if (PACK_DIR / f).exists()] == []
    assert WORKFLOWS_DIR == PACK_DIR / "workflows" and SKETCHES_DIR.parent == WORKFLOWS_DIR
    assert {"PROVENANCE.md", "LICENSE-Apache-2.0.txt"} <= {p.name for p in SKETCHES_DIR.iterdir()}
    provenance = (SKETCHES_DIR / "PROVENANCE.md").read_text(encoding="utf-8")
    for sketch in sorted(SKETCHES_DIR.glob("*.png")):
        assert f"| {sketch.name} |" in provenance, sketch.name
    assert not list(WORKFLOWS_DIR.glob("sketches/*.json"))  # nothing there for the template browser to list

