"""The bundled workflows on a real ComfyUI: same graph in both formats, valid, listed, and rendering."""

from __future__ import annotations

import io
import json
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sketch_rag.cli.comfyui_client import ComfyClient
from sketch_rag.cli.comfyui_server import PACK_LINK_NAME
from sketch_rag.cli.workflows import (
    API_DIR,
    MODEL_FILES,
    WORKFLOWS_DIR,
    bind,
    graph_differences,
    load_api_workflow,
    load_ui_workflow,
    targets,
    tiny_models,
    ui_to_api,
    validate_graph,
)
from sketch_rag.errors import WorkflowError

NAMES = sorted(p.stem for p in API_DIR.glob("*.json"))


def test_both_workflows_ship_in_both_formats_with_thumbnails() -> None:
    assert NAMES == ["sketch_to_render", "sketch_to_render_core_controlnet"]
    for name in NAMES:
        assert (WORKFLOWS_DIR / f"{name}.json").is_file() and (WORKFLOWS_DIR / f"{name}.jpg").is_file()


@pytest.mark.parametrize("name", NAMES)
def test_api_file_is_the_ui_graph_and_fits_the_server(comfy: ComfyClient, name: str,
                                                       fast_fields: dict[str, Any]) -> None:
    info = comfy.object_info()
    api = load_api_workflow(name)
    assert graph_differences(ui_to_api(load_ui_workflow(name), info), api) == []
    fields = {k: v for k, v in fast_fields.items() if targets(api, k)}
    problems = validate_graph(bind(api, fields), info, skip_values=targets(api, "sketch"))
    assert problems == []


def test_validation_reports_every_problem_at_once(comfy: ComfyClient, fast_fields: dict[str, Any]) -> None:
    api = load_api_workflow()
    broken = bind(api, {**fast_fields, "checkpoint": "sd_xl_base.safetensors", "k": 0})
    broken["6"]["inputs"]["edges"] = ["4", 1]  # a STRING into an IMAGE input
    problems = validate_graph(broken, comfy.object_info(), skip_values=targets(api, "sketch"))
    text = "\n".join(problems)
    assert "checkpoint 'sd_xl_base.safetensors' is not on the server; it has: tiny-sd15.safetensors" in text
    assert "k 0 is outside 1..64" in text
    assert "input 'edges' wants IMAGE but node 4 output 1 is STRING" in text
    assert len(problems) == 3


def test_ui_format_is_refused_where_api_format_is_needed() -> None:
    with pytest.raises(WorkflowError, match="is in UI format; pass the API format"):
        load_api_workflow(WORKFLOWS_DIR / "sketch_to_render.json")


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


def test_template_browser_lists_the_workflows_under_the_pack_and_serves_them_from_workflows(
        comfy: ComfyClient) -> None:
    # The frontend's own calls: the listing, then each template and its thumbnail by name under the pack's folder.
    templates = json.loads(fetch(f"{comfy.url}/api/workflow_templates"))
    assert sorted(templates[PACK_LINK_NAME]) == NAMES  # not the API copies, not the sketches' folder
    for name in NAMES:
        served = fetch(f"{comfy.url}/api/workflow_templates/{PACK_LINK_NAME}/{name}.json")
        assert json.loads(served) == load_ui_workflow(name)
        assert fetch(f"{comfy.url}/api/workflow_templates/{PACK_LINK_NAME}/{name}.jpg") == (
            WORKFLOWS_DIR / f"{name}.jpg").read_bytes()


def test_every_models_folder_the_workflows_name_is_one_the_frontend_can_check(comfy: ComfyClient) -> None:
    comfy.object_info()  # builds the schemas, which register ipadapter/ and style_clip/ as ComfyUI does for packs
    folders = {f["name"] for f in json.loads(fetch(f"{comfy.url}/api/experiment/models"))}
    assert {m.directory for m in MODEL_FILES.values()} <= folders
    # The tiny stand-ins are found where the frontend looks, so a workflow naming them reports nothing missing.
    listed = {f["name"] for f in json.loads(fetch(f"{comfy.url}/api/experiment/models/style_clip"))}
    clip = tiny_models()["embedding_model"]
    assert any(name.startswith(f"{clip}/") and name.endswith((".safetensors", ".bin")) for name in listed), listed


@pytest.mark.slow
def test_bundled_api_workflow_renders_the_sketch_with_a_retrieved_style(
        comfy: ComfyClient, fast_fields: dict[str, Any], example_sketches: list[Path]) -> None:
    sketch = next(p for p in example_sketches if p.stem == "sketch_windmill")
    uploaded = comfy.upload_image(sketch.read_bytes(), sketch.name)
    graph = bind(load_api_workflow(), {**fast_fields, "sketch": uploaded, "prompt": "a windmill, ukiyo-e print"})
    entry = comfy.wait(comfy.queue_prompt(graph), timeout=300)
    render = Image.open(io.BytesIO(comfy.view(comfy.output_images(entry, "7")[0])))
    assert render.height == 64 and render.width % 8 == 0 and np.asarray(render).std() > 0
    names = entry["outputs"]["9"]["text"]
    scores = [float(s) for s in entry["outputs"]["10"]["text"][0].split(",")]
    assert len(names) == 1 and names[0].strip() and -1.0 <= scores[0] <= 1.0
    assert json.loads(render.info["prompt"])["6"]["class_type"] == "SketchRAGHybridSampler"  # SaveImage's chunk
