"""``sketch-rag render``: sketch + prompt + style → image, in-process with the same engine as the nodes.

The style is a given image (``--style``) or the best match for the prompt in a style library (``--library``,
through the retrieval engine). Models come from a ComfyUI-style ``models/`` folder; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..errors import InvalidParameterError, ModelNotFoundError
from ..model_folders import CHECKPOINTS, CLIP_VISION, CONTROLNET, IPADAPTER
from ..precisions import PRECISIONS
from .paths import HOME


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``render`` command."""
    from ..rendering import (
        CLIP_SKIP_CHOICES,
        DEFAULT_CONTROLNET_SCALE,
        DEFAULT_GUIDANCE_SCALE,
        DEFAULT_HIRES_DENOISE,
        DEFAULT_IP_ADAPTER_MODE,
        DEFAULT_IP_ADAPTER_SCALE,
        DEFAULT_SAMPLER,
        DEFAULT_STEPS,
        SAMPLER_NAMES,
        IpAdapterMode,
    )

    render = commands.add_parser("render", help="render a sketch in a style (SD1.5 + ControlNet + IP-Adapter)")
    render.add_argument("--sketch", type=Path, required=True, help="the sketch image")
    render.add_argument("--prompt", required=True, help="what to render")
    source = render.add_mutually_exclusive_group(required=True)
    source.add_argument("--style", type=Path, help="the style reference image")
    source.add_argument("--library", type=Path, help="a style library folder; the best match for the prompt is used")
    render.add_argument(
        "--models-dir",
        type=Path,
        required=True,
        help="a ComfyUI models/ folder (checkpoints, controlnet, ipadapter, clip_vision)",
    )
    render.add_argument("--out", type=Path, required=True, help="output PNG")
    render.add_argument("--seed", type=int, default=0)
    render.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    render.add_argument("--negative-prompt", default="blurry, low quality")
    render.add_argument("--guidance-scale", type=float, default=DEFAULT_GUIDANCE_SCALE)
    render.add_argument("--controlnet-scale", type=float, default=DEFAULT_CONTROLNET_SCALE)
    render.add_argument("--ip-adapter-scale", type=float, default=DEFAULT_IP_ADAPTER_SCALE)
    render.add_argument(
        "--mode",
        choices=[m.value for m in IpAdapterMode],
        default=DEFAULT_IP_ADAPTER_MODE.value,
        help="IP-Adapter blocks: style (default), composition, style_and_composition, full",
    )
    render.add_argument(
        "--edges",
        choices=("lines", "canny"),
        default="lines",
        help="control image from the sketch: lines = 1-pixel centre lines (default, as the bundled workflow), "
        "canny = Canny edges of both sides of every stroke",
    )
    render.add_argument("--upscale", type=float, default=1.0, help="above 1 (up to 2): add a hires pass")
    render.add_argument("--hires-denoise", type=float, default=DEFAULT_HIRES_DENOISE)
    render.add_argument(
        "--sampler",
        choices=SAMPLER_NAMES,
        default=DEFAULT_SAMPLER,
        help="ComfyUI's sampler names (default uni_pc); lcm/tcd: --steps 4-8 --guidance-scale 1-2, LCM/TCD LoRA",
    )
    render.add_argument(
        "--clip-skip",
        type=int,
        choices=CLIP_SKIP_CHOICES,
        default=1,
        help="1: CLIP's last layer (default); 2: the penultimate (ComfyUI's CLIP Set Last Layer -2)",
    )
    render.add_argument("--width", type=int, default=0, help="multiple of 8; 0 follows the sketch's aspect")
    render.add_argument("--height", type=int, default=0, help="multiple of 8; 0 follows the sketch's aspect")
    render.add_argument("--checkpoint", help="file in <models-dir>/checkpoints (default: the first found)")
    render.add_argument("--controlnet", help="file in <models-dir>/controlnet (default: the first found)")
    render.add_argument("--ip-adapter", help="file in <models-dir>/ipadapter (default: the first found)")
    render.add_argument("--image-encoder", help="file in <models-dir>/clip_vision (default: the first found)")
    render.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    render.add_argument("--dtype", default="auto", choices=PRECISIONS)
    render.add_argument("--store", default=str(HOME / "store"), help="library index folder (with --library)")
    render.set_defaults(run=_render)


def _pick(models_dir: Path, kind: str, name: str | None) -> Path:
    from ..rendering import candidates, resolve_model

    folder = models_dir / kind
    if name is None:
        found = candidates(folder)
        if not found:
            resolve_model("(none given)", folder, kind)  # raises the error that lists what to download
        name = found[0]
    return resolve_model(name, folder, kind)


def _style_from_library(args: argparse.Namespace) -> tuple[Path, str, float]:
    """The library's best match for the prompt: (image path, name, score)."""
    from ..retrieval import ClipEmbedder, InputNames, StyleQuery, open_library
    from .library_cmd import cli_location

    if not args.library.is_dir():
        raise InvalidParameterError(f"--library {args.library} is not a folder; give a folder of style images.")
    location, home = cli_location(args.library, args.store, None, args.models_dir,
                                  InputNames(folder="--library", store="--store", model="style model"))
    try:
        embedder = ClipEmbedder.load(location.model, search_dirs=home.model_dirs)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{exc} (Or render with --style IMAGE, which needs no CLIP model.)") from exc
    library, _report = open_library(location.roots, embedder, location.store_dir, chroma_url=location.chroma_url)
    try:
        matches = library.query(StyleQuery(text=args.prompt, k=1))
    finally:
        library.close()
    if not matches:
        raise InvalidParameterError(f"The style library {args.library} has no images; add some or use --style.")
    return matches[0].path, matches[0].name, float(matches[0].score)


def _render(args: argparse.Namespace) -> int:
    import torch

    from ..imaging import read_image, write_image
    from ..rendering import DEFAULT_CACHE, CannySettings, IpAdapterMode, PipelineSpec, RenderRequest, sketch_to_edges

    if args.style is not None:
        style_path, style_name, score = args.style, args.style.stem, None
    else:
        style_path, style_name, score = _style_from_library(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    spec = PipelineSpec(
        checkpoint=_pick(args.models_dir, CHECKPOINTS, args.checkpoint),
        controlnet=_pick(args.models_dir, CONTROLNET, args.controlnet),
        ip_adapter=_pick(args.models_dir, IPADAPTER, args.ip_adapter),
        image_encoder=_pick(args.models_dir, CLIP_VISION, args.image_encoder),
        dtype=args.dtype,
        device=device,
    )
    edges = sketch_to_edges(read_image(args.sketch), CannySettings(mode=args.edges))
    request = RenderRequest(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        control_image=edges,
        style_images=[read_image(style_path)],
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        controlnet_conditioning_scale=args.controlnet_scale,
        ip_adapter_scale=args.ip_adapter_scale,
        ip_adapter_mode=IpAdapterMode(args.mode),
        seed=args.seed,
        width=args.width,
        height=args.height,
        sampler=args.sampler,
        clip_skip=args.clip_skip,
        upscale=args.upscale,
        hires_denoise=args.hires_denoise,
    )
    start = time.perf_counter()
    pipeline = DEFAULT_CACHE.get(spec)
    loaded = time.perf_counter()
    image = pipeline.render(request)[0]
    done = time.perf_counter()
    write_image(args.out, image)
    report: dict[str, Any] = {
        "out": str(args.out),
        "style": style_name,
        "style_path": str(style_path),
        "style_score": score,
        "width": int(image.shape[1]),
        "height": int(image.shape[0]),
        "seed": args.seed,
        "steps": args.steps,
        "sampler": args.sampler,
        "clip_skip": args.clip_skip,
        "checkpoint": spec.checkpoint.name,
        "controlnet": spec.controlnet.name,
        "ip_adapter": spec.ip_adapter.name if spec.ip_adapter else None,
        "device": device,
        "load_s": round(loaded - start, 3),
        "render_s": round(done - loaded, 3),
    }
    print(json.dumps(report))
    return 0
