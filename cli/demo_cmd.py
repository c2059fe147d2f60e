"""``sketch-rag demo``: the main job on a fresh machine, in one command.

Installs ComfyUI if missing, starts it with the pack, and renders a bundled example sketch with the
default style library through the bundled API workflow. It uses the real SD1.5 / ControlNet / IP-Adapter /
CLIP files when they are in the models folder, and otherwise writes the tiny random-initialised models and
says so plainly: that render proves the pipeline runs, not what the real models draw.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..errors import InvalidParameterError, PreflightError
from ..model_folders import FOLDER_OF_INPUT
from .paths import HOME
from .workflows import SKETCHES_DIR

EXAMPLE_SKETCH = SKETCHES_DIR / "sketch_house.png"
DEMO_PROMPT = "a cozy cottage at dusk, warm light in the windows, painterly"
TINY_FIELDS: dict[str, Any] = {"steps": 4, "resolution": 128, "style_resolution": 128, "height": 128}
"""With the tiny models: a few steps at 128 px, seconds on a CPU (the output is noise-like anyway)."""


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``demo`` command."""

    demo = commands.add_parser("demo", help="start ComfyUI with the pack and render an example sketch end to end")
    demo.add_argument("--comfyui-dir", type=Path, default=HOME / "comfyui",
                      help="where ComfyUI lives or is installed (default: %(default)s)")
    demo.add_argument("--models-dir", type=Path, default=None,
                      help="ComfyUI models/ folder with the real files (default: <comfyui>/models)")
    demo.add_argument("--sketch", type=Path, default=EXAMPLE_SKETCH, help="the sketch (default: a bundled house)")
    demo.add_argument("--prompt", default=DEMO_PROMPT)
    demo.add_argument("--out", type=Path, default=Path("sketch_rag_demo.png"), help="output PNG (default: %(default)s)")
    demo.add_argument("--tiny", action="store_true", help="use the tiny offline models even if real ones exist")
    demo.add_argument("--cpu", action="store_true",
                      help="run ComfyUI on the CPU (automatic when torch sees no GPU)")
    demo.add_argument("--port", type=int, default=0,
                      help="port for the demo's own ComfyUI on 127.0.0.1 (default: a free one)")
    demo.set_defaults(run=_demo)


EARLIER_NAMES = {"controlnet": ("control_v11p_sd15_canny.pth", "control_v11p_sd15_canny.safetensors")}
"""Files earlier READMEs had users download (lllyasviel's originals): a demo user who has one keeps using it."""


def real_models_present(models_dir: Path) -> dict[str, str] | None:
    """The real model names to run with if every one is in ``models_dir`` (the bundled workflow's, or an earlier
    name of the same model), else None."""
    from .workflows import REAL_MODELS

    chosen = {}
    for field, name in REAL_MODELS.items():
        folder = models_dir / FOLDER_OF_INPUT[field]
        found = next((n for n in (name, *EARLIER_NAMES.get(field, ())) if (folder / n).exists()), None)
        if found is None:
            return None
        chosen[field] = found
    return chosen


def accelerator_available() -> bool:
    """Whether torch sees a GPU ComfyUI can use; without one ComfyUI must be started with ``--cpu``.

    ComfyUI 0.3.75 assumes CUDA unless told otherwise and dies at start on a CPU-only torch
    ("Torch not compiled with CUDA enabled"), so the demo decides for the user.
    """
    import torch

    xpu = getattr(torch, "xpu", None)
    return bool(torch.cuda.is_available() or torch.backends.mps.is_available()
                or (xpu is not None and xpu.is_available()))


def _demo(args: argparse.Namespace) -> int:
    from ..tiny_models.files import write_tiny_models
    from .comfyui_install import install_comfyui
    from .comfyui_server import free_port, link_pack, start_server
    from .workflows import REAL_MODELS, tiny_models

    if not args.sketch.is_file():
        raise InvalidParameterError(f"Sketch {args.sketch} does not exist; pass --sketch with an image file.")
    if args.out.suffix.lower() != ".png":
        raise InvalidParameterError(f"--out {args.out} must end in .png (ComfyUI saves PNG, with the workflow in it).")
    comfy_dir = install_comfyui(args.comfyui_dir)
    models_dir = args.models_dir or comfy_dir / "models"
    real = None if args.tiny else real_models_present(models_dir)
    extra: tuple[str, ...] = ()
    log_path: Path | None = None
    scratch: Path | None = None  # the tiny models' base directory, removed when the demo succeeds
    if real is not None:
        fields: dict[str, Any] = dict(real)
        print(f"Using the real models in {models_dir}: " + ", ".join(real.values()))
        if args.models_dir is not None:
            extra = ("--base-directory", str(models_dir.parent))
            link_pack(models_dir.parent)
    else:
        missing = [f"{FOLDER_OF_INPUT[f]}/{n}" for f, n in REAL_MODELS.items()
                   if not (models_dir / FOLDER_OF_INPUT[f] / n).exists()]
        reason = "--tiny given" if args.tiny else "real models not found (" + ", ".join(missing) + f" in {models_dir})"
        print(f"NOTE: {reason}.\n"
              "Rendering with TINY RANDOM-INITIALISED models: the output is noise-like and only proves the pipeline "
              "runs. See the README for the download command.", file=sys.stderr)
        scratch = Path(tempfile.mkdtemp(prefix="sketch_rag_demo_"))
        write_tiny_models(scratch / "models")
        extra = ("--base-directory", str(scratch))
        log_path = scratch / "comfyui.log"
        link_pack(scratch)
        fields = {**tiny_models(), **TINY_FIELDS}
    if not extra:
        link_pack(comfy_dir)
    cpu = args.cpu or not accelerator_available()
    if cpu and not args.cpu:
        print("No GPU visible to torch: running ComfyUI on the CPU.", file=sys.stderr)
    try:
        server = start_server(comfy_dir, port=args.port or free_port(), cpu=cpu, extra_args=extra, log_path=log_path,
                              env={"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
        try:
            names, scores = _render(server.url, args, fields)
        finally:
            server.stop()
    except BaseException:
        if scratch is not None:
            print(f"The demo's ComfyUI folder (log, tiny models) is kept for a look: {scratch}", file=sys.stderr)
        raise
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    models = "real" if real is not None else "tiny"
    kind = "the real models" if real is not None else "the TINY random-initialised models (noise-like output)"
    print(f"Saved {args.out}, rendered with {kind}.")
    print(f"Style used: {', '.join(names) or '?'} (CLIP score {', '.join(f'{s:.4f}' for s in scores) or '?'})")
    print(json.dumps({"out": str(args.out), "style": names, "score": scores, "models": models}))
    return 0


def _render(url: str, args: argparse.Namespace, fields: dict[str, Any]) -> tuple[list[str], list[float]]:
    """Upload the sketch, check and queue the bundled workflow, save the render; returns the style names, scores.

    The UI form of the workflow, bound to the same values, goes into the PNG (as the batch runner does),
    so dropping the output on ComfyUI reopens this exact render.
    """
    from .comfyui_client import ComfyClient, JobFailed
    from .workflows import (
        bind,
        bind_ui_values,
        load_api_workflow,
        load_ui_workflow,
        nodes_titled,
        style_results,
        targets,
        validate_graph,
    )

    client = ComfyClient(url)
    object_info = client.object_info()
    uploaded = client.upload_image(args.sketch.read_bytes(), args.sketch.name)
    graph = bind(load_api_workflow(), {**fields, "sketch": uploaded, "prompt": args.prompt})
    problems = validate_graph(graph, object_info, skip_values=targets(graph, "sketch"))
    if problems:
        raise PreflightError("The bundled workflow does not fit this ComfyUI; nothing was queued:\n  "
                             + "\n  ".join(problems))
    ui = bind_ui_values(load_ui_workflow(), graph, object_info)
    prompt_id = client.queue_prompt(graph, {"extra_pnginfo": {"workflow": ui}})
    entry = client.wait(prompt_id, timeout=3600)
    names, scores = style_results(graph, entry["outputs"])
    save = nodes_titled(graph, "SaveImage")[0]
    images = client.output_images(entry, save)
    if not images:
        raise JobFailed(prompt_id, "SaveImage", "the job finished without an image; see the ComfyUI log.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(client.view(images[0]))
    return names, scores
