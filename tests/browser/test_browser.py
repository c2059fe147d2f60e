"""The bundled workflow in a real browser: Debian's chromium, headless, driven by Playwright.

The pack is copied (not linked) into the server's custom_nodes, as a git clone or ComfyUI-Manager would
install it, so the template files are served exactly as for a user.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api

from sketch_rag.cli.comfyui_client import ComfyClient
from sketch_rag.cli.comfyui_server import PACK_LINK_NAME, ComfyServer
from sketch_rag.cli.workflows import MODEL_FILES, ModelFile, load_ui_workflow, resolved, tiny_models
from tests.helpers.browser import ARTIFACTS, launch_chromium, start_copied_pack_server

WIDGETS = {**tiny_models(), "num_inference_steps": 2, "resolution": 64, "height": 64}
"""Widget name -> value set in the page after loading: the tiny model files, and a fast, small render."""
EDITED_PROMPT = "a red barn in fresh snow, gouache"
"""Typed into the template's one prompt node before queueing: the retriever and the sampler must both receive it."""
USER_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}
"""User settings posted before the page loads. A user without ``Comfy.TutorialCompleted`` counts as new, and the
frontend (1.32) then opens the template browser over the graph on load, hiding the render in the screenshot; the
minimap would cover a corner of the graph."""


def post_user_settings(url: str, settings: dict[str, Any]) -> None:
    """Save settings for the server's (single, ``default``) user through ComfyUI's settings API, and read them back."""
    request = urllib.request.Request(f"{url}/settings", data=json.dumps(settings).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    with urllib.request.urlopen(f"{url}/settings", timeout=10) as response:
        saved = json.load(response)
    assert {k: saved.get(k) for k in settings} == settings, f"the server did not keep the settings: {saved}"


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[sync_api.Page]:
    """A fresh headless chromium page (own profile), closed after the test."""
    with sync_api.sync_playwright() as playwright:
        context = launch_chromium(playwright, tmp_path / "profile")
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def open_comfyui(page: sync_api.Page, url: str) -> None:
    page.goto(url, wait_until="domcontentloaded", timeout=120_000)
    page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)


def expected_missing(name: str) -> list[ModelFile]:
    """The real files a bundled workflow names (none is on the test server): each of our model files one of its
    nodes' widgets selects, and the style CLIP (which the workflow's own ``models`` list describes)."""
    values = {v for node in load_ui_workflow(name)["nodes"] for v in node.get("widgets_values") or []
              if isinstance(v, str)}
    return [m for field, m in MODEL_FILES.items() if field != "embedding_model" and m.name in values] + [
        MODEL_FILES["embedding_model"]]


@pytest.mark.parametrize("name", ["sketch_to_render", "sketch_to_render_core_controlnet"])
def test_template_opened_without_the_real_models_lists_each_with_its_folder_and_download(
        copied_pack_server: ComfyServer, browser_page: sync_api.Page, name: str) -> None:
    post_user_settings(copied_pack_server.url, {**USER_SETTINGS, "Comfy.Workflow.ShowMissingModelsWarning": True})
    page = browser_page
    open_comfyui(page, copied_pack_server.url)
    # As the template browser opens a pack's template: fetch it from the pack's folder, load it as a new graph.
    page.evaluate(
        """async (path) => {
            const workflow = await (await fetch(path)).json();
            await window.app.loadGraphData(workflow, true, true, 'template');
        }""", f"/api/workflow_templates/{PACK_LINK_NAME}/{name}.json")
    panel = page.locator(".comfy-missing-models")
    panel.wait_for(state="visible", timeout=30_000)
    panel.get_by_text(MODEL_FILES["embedding_model"].name).scroll_into_view_if_needed()  # the last entry, in view
    page.wait_for_timeout(300)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"browser_missing_models_{name}.png"))
    text = panel.inner_text()
    expected = expected_missing(name)
    for model in expected:
        assert f"{model.directory} / {model.name}" in text, f"{model.directory} / {model.name} not in:\n{text}"
    assert len(panel.get_by_role("option").all()) == len(expected), text
    for model in expected:
        download = panel.locator(f'button[title="{model.url}"]')
        # The frontend fetches .safetensors only; the CLIP folder's .bin stands for the folder, named, no button.
        assert download.is_enabled() == model.name.endswith(".safetensors"), model
    assert "Only allowed suffixes" in text  # the frontend's own reason, beside the CLIP entry


@pytest.fixture(scope="module")
def copied_pack_server(tmp_path_factory: pytest.TempPathFactory, comfy_base_dir: Path) -> Iterator[ComfyServer]:
    server = start_copied_pack_server(tmp_path_factory.mktemp("browser_base"), comfy_base_dir / "models")
    yield server
    server.stop()


def test_bundled_workflow_loads_without_missing_nodes_queues_and_shows_the_render(
        copied_pack_server: ComfyServer, tmp_path: Path, example_sketches: list[Path]) -> None:
    post_user_settings(copied_pack_server.url, USER_SETTINGS)
    sketch = next(p for p in example_sketches if p.stem == "sketch_house")
    ComfyClient(copied_pack_server.url).upload_image(sketch.read_bytes(), sketch.name)  # the workflow's input
    with sync_api.sync_playwright() as playwright:
        context = launch_chromium(playwright, tmp_path / "profile")
        try:
            page = context.pages[0] if context.pages else context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(copied_pack_server.url, wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
            loaded: dict[str, Any] = page.evaluate(
                """async () => {
                    const templates = await (await fetch('/api/workflow_templates')).json();
                    const workflow = await (await fetch('/api/workflow_templates/sketch_rag/sketch_to_render.json'))
                        .json();
                    // The server has only the tiny models: the real files' panel is the next test's subject.
                    await window.app.loadGraphData(workflow, true, true, null, {showMissingModelsDialog: false});
                    const nodes = window.app.graph._nodes;
                    return {templates, types: nodes.map(n => n.type),
                            missing: nodes.filter(n => !window.LiteGraph.registered_node_types[n.type])
                                          .map(n => n.type)};
                }""")
            assert sorted(loaded["templates"]["sketch_rag"]) == ["sketch_to_render", "sketch_to_render_core_controlnet"]
            assert loaded["missing"] == [] and "SketchRAGHybridSampler" in loaded["types"]
            page.wait_for_timeout(500)
            assert page.get_by_text("missing", exact=False).count() == 0  # no missing-node dialog
            page.evaluate(
                """(values) => {
                    for (const node of window.app.graph._nodes)
                        for (const widget of node.widgets || [])
                            if (widget.name in values && !(node.type === 'SketchRAGClipStyleRetriever'
                                                           && widget.name === 'resolution'))
                                widget.value = values[widget.name];
                }""", WIDGETS)
            # The one prompt: edit its text, and the graph the frontend queues feeds it to both nodes.
            edited: dict[str, Any] = page.evaluate(
                """async (text) => {
                    const node = window.app.graph._nodes.find(n => n.title === 'prompt');
                    node.widgets.find(w => w.name === 'value').value = text;
                    const {output} = await window.app.graphToPrompt();
                    const fed = Object.fromEntries(Object.values(output).filter(n => 'prompt' in n.inputs)
                                                         .map(n => [n.class_type, n.inputs.prompt]));
                    return {id: String(node.id), type: node.type, value: output[String(node.id)].inputs.value, fed};
                }""", EDITED_PROMPT)
            assert edited["type"] == "PrimitiveStringMultiline" and edited["value"] == EDITED_PROMPT
            assert edited["fed"] == {"SketchRAGClipStyleRetriever": [edited["id"], 0],
                                     "SketchRAGHybridSampler": [edited["id"], 0]}
            page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
            page.wait_for_function(
                """() => Object.values(window.app.nodeOutputs || {}).some(
                       o => (o.images || []).some(i => i.type === 'output'))""", timeout=240_000)
            dialogs = [d.inner_text()[:200] for d in page.locator(".p-dialog, .p-dialog-mask").all() if d.is_visible()]
            assert dialogs == [], f"a dialog covers the graph: {dialogs}"
            # Frame the whole graph, so the screenshot shows every node with its output.
            page.evaluate(
                """() => {
                    const rects = window.app.graph._nodes.map(n => n.boundingRect);
                    const x0 = Math.min(...rects.map(r => r[0])), y0 = Math.min(...rects.map(r => r[1]));
                    const x1 = Math.max(...rects.map(r => r[0] + r[2])), y1 = Math.max(...rects.map(r => r[1] + r[3]));
                    // Margin on top for the menu bar, tabs and queue panel that float over the canvas.
                    window.app.canvas.ds.fitToBounds([x0 - 40, y0 - 260, x1 - x0 + 80, y1 - y0 + 300], {zoom: 1});
                    window.app.canvas.setDirty(true, true);
                }""")
            page.wait_for_timeout(1000)
            render_in_view = page.evaluate(
                """() => {
                    const [vx, vy, vw, vh] = window.app.canvas.ds.visible_area;
                    const render = window.app.graph._nodes.find(n => n.type === 'SaveImage');
                    const [x, y, w, h] = render.boundingRect;
                    return x >= vx && y >= vy && x + w <= vx + vw && y + h <= vy + vh;
                }""")
            assert render_in_view, "the SaveImage node with the render is outside the screenshot"
            page.screenshot(path=str(ARTIFACTS / "browser_sketch_to_render.png"))
            images = page.evaluate(
                "() => Object.values(window.app.nodeOutputs).flatMap(o => o.images || []).map(i => i.filename)")
            assert any(name.startswith("render") for name in images)
            assert not [e for e in errors if "SketchRAG" in e]
            # What the server ran: both prompt inputs took the edited text from the one prompt node.
            (entry,) = ComfyClient(copied_pack_server.url).all_history().values()
            ran = {str(k): v for k, v in entry["prompt"][2].items()}
            assert resolved(ran, ran[edited["id"]]["inputs"]["value"]) == EDITED_PROMPT
            assert {n["class_type"]: resolved(ran, n["inputs"]["prompt"]) for n in ran.values()
                    if "prompt" in n["inputs"]} == {"SketchRAGClipStyleRetriever": EDITED_PROMPT,
                                                    "SketchRAGHybridSampler": EDITED_PROMPT}
        finally:
            context.close()
    assert (ARTIFACTS / "browser_sketch_to_render.png").stat().st_size > 10_000
