"""The pack on a ComfyUI whose internals moved: each internal removed or given another signature in turn.

Whatever breaks, the pack must import, register every node and render through the Canny and sampler
nodes; it goes without the one extra that internal bought (``comfy_host.EXTRAS``), and one log line names
it. Each case imports the pack's node modules afresh (as ComfyUI does at start-up) with the internal broken,
and checks the extra's own effect too: progress calls, previews, ComfyUI's entry for our models, Cancel,
the Style Library routes, the upload limit and the VAE flags.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import logging
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from aiohttp import web

import sketch_rag
from sketch_rag.rendering.model_cache import DEFAULT_CACHE
from sketch_rag.tiny_models.sd import CHECKPOINT_NAME, CONTROLNET_NAMES, IMAGE_ENCODER_NAME, IP_ADAPTER_NAMES

pytestmark = pytest.mark.node

REPO = Path(__file__).resolve().parents[2]
HOST_LOGGER = "sketch_rag.nodes.comfy_host"
NODE_IDS = {f"SketchRAG{name}" for name in (
    "CannySketchPreprocessor", "StyleLibraryLoader", "ClipStyleRetriever", "AddToStyleLibrary",
    "HybridPipelineLoader", "HybridLoRA", "HybridSampler",
)}
ROUTE_COUNT = 7
"""Routes the Style Library tab registers (see ``library_routes.register_routes``)."""
UPLOAD_MB = 7.0
"""A --max-upload-size the intact host reports and a broken one cannot (ComfyUI's default is 100)."""


def sketch() -> torch.Tensor:
    """A 64×64 pencil house, dark lines on white, as LoadImage gives it."""
    page = np.ones((64, 64, 3), np.float32)
    page[30, 12:52] = page[58, 12:52] = page[30:59, 12] = page[30:59, 51] = 0.1
    for i in range(20):
        page[30 - i, 12 + i] = page[30 - i, 51 - i] = 0.1
    return torch.from_numpy(page[None])


def style() -> torch.Tensor:
    y, x = np.mgrid[0:48, 0:48] / 47
    return torch.from_numpy(np.stack([x, y, (x + y) / 2], axis=-1).astype(np.float32)[None])


class FakeServer(types.ModuleType):
    """ComfyUI's ``server`` module as the pack sees it while ComfyUI loads custom nodes: a PromptServer instance
    with its aiohttp route table (the node tier runs no server; the server tier runs the real one)."""

    def __init__(self, with_instance: bool = True) -> None:
        super().__init__("server")
        self.routes = web.RouteTableDef()
        instance = types.SimpleNamespace(routes=self.routes)
        self.PromptServer = type("PromptServer", (), {"instance": instance} if with_instance else {})


Break = Callable[[pytest.MonkeyPatch, "FakeServer"], None]
"""Breaks one internal (through monkeypatch, so it is whole again after the test)."""


@dataclass
class Outcome:
    node_ids: set[str]
    image: torch.Tensor
    progress: list[tuple[int, int, bool]] = field(default_factory=list)
    """(value, total, has preview) of every progress-bar update ComfyUI received."""
    registered: bool = False
    """Whether ComfyUI's loaded models held our UNet while the sampler ran."""
    cancelled: bool = False
    routes: int = 0
    upload_bytes: int = 0
    vae_flag: str | None = None
    lines: list[str] = field(default_factory=list)
    """The pack's warnings about what it goes without."""


class _Lines(logging.Handler):
    """The pack's warnings about what it goes without, as ComfyUI's console would show them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_pack(monkeypatch: pytest.MonkeyPatch, server: FakeServer, broken: Break | None = None) -> Outcome:
    """Break an internal, import the pack's nodes afresh, register them, run Canny → loader → sampler."""
    import comfy.model_management as mm
    import comfy.utils
    from comfy.cli_args import LatentPreviewMethod
    from comfy.cli_args import args as comfy_args

    for name in [n for n in sys.modules if n == "sketch_rag.nodes" or n.startswith("sketch_rag.nodes.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sketch_rag, "nodes", getattr(sketch_rag, "nodes", None), raising=False)  # restored after
    monkeypatch.setattr(DEFAULT_CACHE, "_listeners", list(DEFAULT_CACHE._listeners))
    monkeypatch.setattr(comfy_args, "preview_method", LatentPreviewMethod.Latent2RGB)
    monkeypatch.setattr(comfy_args, "max_upload_size", UPLOAD_MB)
    monkeypatch.setattr(comfy_args, "fp32_vae", True)
    progress: list[tuple[int, int, bool]] = []

    def hook(value: int, total: int, preview: Any, node_id: Any = None) -> None:
        progress.append((value, total, preview is not None))

    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", hook)
    if broken is not None:
        broken(monkeypatch, server)
    lines = _Lines()
    logger = logging.getLogger(HOST_LOGGER)
    logger.addHandler(lines)
    try:
        outcome = _register_and_render(mm, server, progress)
    finally:
        logger.removeHandler(lines)
    outcome.lines = lines.lines
    return outcome


def _register_and_render(mm: Any, server: FakeServer, progress: list[tuple[int, int, bool]]) -> Outcome:
    extension = asyncio.run(sketch_rag.comfy_entrypoint())
    classes = asyncio.run(extension.get_node_list())
    node_ids = {cls.GET_SCHEMA().node_id for cls in classes}
    assert {cls.GET_NODE_INFO_V1()["name"] for cls in classes} == node_ids  # what /object_info lists

    loader_node = sys.modules["sketch_rag.nodes.pipeline_loader_node"]
    sampler_node = sys.modules["sketch_rag.nodes.sampler_node"]
    model_memory = sys.modules["sketch_rag.nodes.model_memory"]
    preprocess = sys.modules["sketch_rag.nodes.preprocess"]
    [edges] = preprocess.CannySketchPreprocessor.execute(sketch()).result
    progress.clear()  # the Canny node's own updates: test_the_canny_node_reports_progress_per_sketch...
    [spec] = loader_node.HybridPipelineLoader.execute(
        CHECKPOINT_NAME, CONTROLNET_NAMES[0], IP_ADAPTER_NAMES[0], IMAGE_ENCODER_NAME
    ).result
    hybrid_class = type(DEFAULT_CACHE.get(spec))
    original = hybrid_class.render_batch
    registered: list[bool] = []

    def watching(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Registration happens just before sampling: does ComfyUI's list of loaded models hold our UNet now?
        registered.append(any(
            isinstance(e.model.model, torch.nn.ModuleDict) and "unet" in e.model.model
            and e.model.model["unet"] is self.pipe.unet
            for e in mm.current_loaded_models if e.model is not None
        ))
        return original(self, *args, **kwargs)

    def render() -> torch.Tensor:
        [image] = sampler_node.HybridSampler.execute(
            spec, "a watercolor house", "blurry", edges, style=style(), num_inference_steps=2, seed=4, height=64
        ).result
        return image

    hybrid_class.render_batch = watching
    try:
        image = render()
        updates = list(progress)
        mm.interrupt_current_processing(True)  # what POST /interrupt sets
        try:
            render()
            cancelled = False
        except mm.InterruptProcessingException:
            cancelled = True
        finally:
            mm.interrupt_current_processing(False)
    finally:
        hybrid_class.render_batch = original
        for entry in getattr(model_memory, "_MANAGED", {}).values():
            entry.drop()  # ComfyUI's entry for this import of the pack dies with its patcher
    library_routes = sys.modules["sketch_rag.nodes.library_routes"]
    comfy_host = sys.modules["sketch_rag.nodes.comfy_host"]
    return Outcome(
        node_ids=node_ids,
        image=image,
        progress=updates,
        registered=bool(registered) and registered[0],
        cancelled=cancelled,
        routes=len(server.routes),
        upload_bytes=library_routes.upload_limit(),
        vae_flag=comfy_host.vae_precision_flag(),
    )


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    fake = FakeServer()
    monkeypatch.setitem(sys.modules, "server", fake)
    return fake


@pytest.fixture(scope="module")
def intact_image() -> Iterator[torch.Tensor]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        fake = FakeServer()
        monkeypatch.setitem(sys.modules, "server", fake)
        yield run_pack(monkeypatch, fake).image


# -- the intact host: every extra in use ---------------------------------------------------------------------


def test_on_the_installed_comfyui_every_extra_is_in_use(monkeypatch: pytest.MonkeyPatch, server: FakeServer) -> None:
    outcome = run_pack(monkeypatch, server)
    assert outcome.lines == []
    assert outcome.node_ids == NODE_IDS
    assert outcome.image.shape == (1, 64, 64, 3) and float(outcome.image.std()) > 0
    assert [(v, t) for v, t, _ in outcome.progress] == [(1, 2), (2, 2)]
    assert all(has_preview for _, _, has_preview in outcome.progress)
    assert outcome.registered and outcome.cancelled
    assert outcome.routes == ROUTE_COUNT
    assert outcome.upload_bytes == int(UPLOAD_MB * 2**20)
    assert outcome.vae_flag == "fp32"


# -- each internal broken in turn ------------------------------------------------------------------------------

def absent(module: str) -> Break:
    """The module is gone: importing it fails, as after a rename upstream."""
    return lambda monkeypatch, _server: monkeypatch.setitem(sys.modules, module, None)


def without(module: str, attribute: str) -> Break:
    return lambda monkeypatch, _server: monkeypatch.delattr(importlib.import_module(module), attribute)


def replaced(module: str, attribute: str, value: Any) -> Break:
    return lambda monkeypatch, _server: monkeypatch.setattr(importlib.import_module(module), attribute, value)


def _load_models_gpu(models: Any, memory_required: int, *, device_map: Any) -> None:
    raise AssertionError("never called: its signature does not take our call")


def _load_models_gpu_failing(models: Any, memory_required: int = 0, force_patch_weights: bool = False,
                             minimum_memory_required: Any = None, force_full_load: bool = False) -> None:
    raise AttributeError("'ModuleDict' object has no attribute 'model_size'")  # a changed patcher contract


class _Patcher:
    def __init__(self, model: Any, weight_wrapper: Any, load_device: Any, offload_device: Any, *, size: int) -> None:
        raise AssertionError("never built: its signature does not take our call")


def _progress_bar_needing_ids(total: int, node_id: str, prompt_id: str) -> Any:
    raise AssertionError("never built: its signature does not take our call")


class _ProgressBarOtherUpdate:
    def __init__(self, total: int) -> None:
        self.total = total

    def update_absolute(self, value: int) -> None:
        raise AssertionError("never called: its signature does not take our call")


def _get_previewer(device: Any, latent_format: Any, node_id: str, method: str) -> Any:
    raise AssertionError("never called: its signature does not take our call")


def _without_instance(monkeypatch: pytest.MonkeyPatch, server: FakeServer) -> None:
    monkeypatch.delattr(server.PromptServer, "instance")


DEVICE, CANCEL, MEMORY = "ComfyUI's device choice", "the Cancel button", "memory registration"
PROGRESS, PREVIEWS = "the progress bar", "step previews"
UPLOAD, VAE, ROUTES = "the --max-upload-size limit", "the VAE precision flags", "the Style Library tab's routes"

CASES: dict[str, tuple[Break, set[str], str]] = {
    "model_management absent": (absent("comfy.model_management"), {DEVICE, CANCEL, MEMORY},
                                "comfy.model_management cannot be imported"),
    "get_torch_device missing": (without("comfy.model_management", "get_torch_device"), {DEVICE},
                                 "get_torch_device is missing"),
    "processing_interrupted signature": (
        replaced("comfy.model_management", "processing_interrupted", lambda prompt_id: False), {CANCEL},
        "processing_interrupted has another signature"),
    "load_models_gpu signature": (replaced("comfy.model_management", "load_models_gpu", _load_models_gpu),
                                  {MEMORY}, "load_models_gpu has another signature"),
    "load_models_gpu fails": (replaced("comfy.model_management", "load_models_gpu", _load_models_gpu_failing),
                              {MEMORY}, "AttributeError: 'ModuleDict' object has no attribute 'model_size'"),
    "model_patcher absent": (absent("comfy.model_patcher"), {MEMORY}, "comfy.model_patcher cannot be imported"),
    "ModelPatcher signature": (replaced("comfy.model_patcher", "ModelPatcher", _Patcher), {MEMORY},
                               "ModelPatcher has another signature"),
    "CallbacksMP without ON_DETACH": (replaced("comfy.model_patcher", "CallbacksMP", type("CallbacksMP", (), {})),
                                      {MEMORY}, "CallbacksMP.ON_DETACH is missing"),
    "utils absent": (absent("comfy.utils"), {PROGRESS}, "comfy.utils cannot be imported"),
    "ProgressBar signature": (replaced("comfy.utils", "ProgressBar", _progress_bar_needing_ids), {PROGRESS},
                              "ProgressBar has another signature"),
    "ProgressBar.update_absolute signature": (replaced("comfy.utils", "ProgressBar", _ProgressBarOtherUpdate),
                                              {PROGRESS}, "update_absolute has another signature"),
    "latent_preview absent": (absent("latent_preview"), {PREVIEWS}, "latent_preview cannot be imported"),
    "get_previewer signature": (replaced("latent_preview", "get_previewer", _get_previewer), {PREVIEWS},
                                "get_previewer has another signature"),
    "latent_formats.SD15 missing": (without("comfy.latent_formats", "SD15"), {PREVIEWS}, "SD15 is missing"),
    "cli_args absent": (absent("comfy.cli_args"), {UPLOAD, VAE}, "comfy.cli_args cannot be imported"),
    "args without max_upload_size": (lambda mp, _s: mp.delattr(importlib.import_module("comfy.cli_args").args,
                                                               "max_upload_size"), {UPLOAD}, "max_upload_size"),
    "args without fp32_vae": (lambda mp, _s: mp.delattr(importlib.import_module("comfy.cli_args").args,
                                                        "fp32_vae"), {VAE}, "fp32_vae is missing"),
    "server absent": (absent("server"), {ROUTES}, "server cannot be imported"),
    "PromptServer without instance": (_without_instance, {ROUTES}, "PromptServer.instance is missing"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_without_an_internal_the_pack_still_registers_and_renders_and_says_what_it_goes_without(
    monkeypatch: pytest.MonkeyPatch, server: FakeServer, intact_image: torch.Tensor, case: str
) -> None:
    broken, lost, detail = CASES[case]
    outcome = run_pack(monkeypatch, server, broken)
    assert outcome.node_ids == NODE_IDS
    assert torch.equal(outcome.image, intact_image)  # the same render, bit for bit

    for extra in lost:
        naming = [line for line in outcome.lines if extra in line]
        assert len(naming) == 1, (extra, outcome.lines)
        assert detail in naming[0], naming[0]
    assert len(outcome.lines) == len(lost), outcome.lines

    # Each extra's own effect is gone exactly when the extra is.
    assert (outcome.progress == []) == (PROGRESS in lost)
    if PROGRESS not in lost:
        assert [(v, t) for v, t, _ in outcome.progress] == [(1, 2), (2, 2)]
        assert all(p for _, _, p in outcome.progress) == (PREVIEWS not in lost)
    assert outcome.registered == (MEMORY not in lost)
    assert outcome.cancelled == (CANCEL not in lost)
    assert outcome.routes == (0 if ROUTES in lost else ROUTE_COUNT)
    assert outcome.upload_bytes == int((100.0 if UPLOAD in lost else UPLOAD_MB) * 2**20)
    assert outcome.vae_flag == (None if VAE in lost else "fp32")


def test_the_canny_node_reports_progress_per_sketch_and_runs_without_a_progress_bar(
    monkeypatch: pytest.MonkeyPatch, to_image_batch: Callable[..., torch.Tensor]
) -> None:
    import comfy.utils

    from sketch_rag.nodes.preprocess import CannySketchPreprocessor

    updates: list[tuple[int, int]] = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda v, t, p, node_id=None: updates.append((v, t)))
    batch = torch.cat([sketch(), sketch()])
    [edges] = CannySketchPreprocessor.execute(batch).result
    assert updates == [(1, 2), (2, 2)]
    monkeypatch.setitem(sys.modules, "comfy.utils", None)
    [again] = CannySketchPreprocessor.execute(batch).result
    assert torch.equal(again, edges) and updates == [(1, 2), (2, 2)]


# -- VAE precision flags ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({}, None),
        ({"fp32_vae": True}, "fp32"),
        ({"bf16_vae": True}, "bf16"),
        ({"fp16_vae": True}, "fp16"),
        ({"force_fp32": True}, "fp32"),
        ({"force_fp32": True, "bf16_vae": True}, "bf16"),  # an explicit VAE flag wins, as in ComfyUI's vae_dtype
    ],
)
def test_vae_precision_follows_comfyuis_flags(
    monkeypatch: pytest.MonkeyPatch, flags: dict[str, bool], expected: str | None
) -> None:
    from comfy.cli_args import args as comfy_args

    from sketch_rag.nodes.comfy_host import vae_precision_flag

    for name in ("fp32_vae", "bf16_vae", "fp16_vae", "force_fp32"):
        monkeypatch.setattr(comfy_args, name, flags.get(name, False))
    assert vae_precision_flag() == expected


def test_comfyuis_own_parser_gives_the_flags_we_read() -> None:
    from comfy.cli_args import parser

    for flag, attribute in (("--fp32-vae", "fp32_vae"), ("--bf16-vae", "bf16_vae"), ("--fp16-vae", "fp16_vae"),
                            ("--force-fp32", "force_fp32")):
        assert getattr(parser.parse_args([flag]), attribute) is True


# -- one module -------------------------------------------------------------------------------------------------

SUPPORTED = {"comfy_api.v0_0_2", "folder_paths"}
"""What the node modules may import from ComfyUI directly: the numbered V3 API and the model folders."""
COMFYUI_TOP = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "execution",
               "nodes", "node_helpers", "latent_preview", "comfyui_version"}


def test_only_comfy_host_touches_comfyuis_internals() -> None:
    offenders = []
    for path in [REPO / "__init__.py", *sorted((REPO / "nodes").glob("*.py"))]:
        if path.name == "comfy_host.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{path.name}:{node.lineno} {name}" for name in names
                          if name.split(".")[0] in COMFYUI_TOP and name not in SUPPORTED]
    assert offenders == []


def test_the_readme_lists_every_internal_and_what_it_buys() -> None:
    from sketch_rag.nodes.comfy_host import EXTRAS

    readme = (REPO / "README.md").read_text()
    for extra in EXTRAS:
        assert f"| {extra.internals.replace('|', '/')} |" in readme.replace("`", ""), extra.internals
        assert extra.buys in readme, extra.buys
