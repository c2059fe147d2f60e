"""``sketch-rag batch``: render a CSV/JSONL file of sketch × prompt jobs on ComfyUI servers or on a Ray cluster."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from ..errors import InvalidParameterError
from .batch_ray import RAY_INSTALL
from .batch_worker import JOB_TIMEOUT_S, REQUEST_TIMEOUT_S


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``batch`` command."""
    batch = commands.add_parser(
        "batch", help="render sketch × prompt jobs (CSV or JSONL) through ComfyUI's API; resumable",
        description="Columns/keys: sketch (file or folder), prompt, and optionally seed, style_query, k, "
        "controlnet_scale, ip_adapter_scale, negative_prompt. Re-running renders only what is missing. "
        "Exit status: 0 every job done, 1 some job failed, unfinished or skipped, 2 nothing queued (a problem "
        "found before queueing).")
    batch.add_argument("jobs", type=Path, help="the job file (.csv with a header row, or .jsonl)")
    batch.add_argument("--out", type=Path, required=True, help="output folder (renders/, manifests/, report)")
    place = batch.add_mutually_exclusive_group()
    place.add_argument("--server", action="append", dest="servers", metavar="URL",
                       help="a ComfyUI server; repeat to spread jobs (default: http://127.0.0.1:8188)")
    place.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                       help="run the jobs on Ray instead: no ADDRESS starts a local Ray; auto, host:port or "
                       "ray://host:port joins a cluster. Needs the ray extra: " + RAY_INSTALL)
    ray = batch.add_argument_group("--ray placement")
    ray.add_argument("--ray-actors", type=int, help="actors (ComfyUIs) in the pool (default: one per GPU)")
    ray.add_argument("--ray-gpus-per-actor", type=float, default=1.0, help="(default: %(default)s)")
    ray.add_argument("--ray-cpus-per-actor", type=float, default=1.0, help="(default: %(default)s)")
    ray.add_argument("--comfyui-dir", type=Path,
                     help="the ComfyUI folder (pack in custom_nodes/) on every node, for actors that find no "
                     "ComfyUI answering on their port and start one")
    ray.add_argument("--comfyui-port", type=int, default=8188,
                     help="an actor's ComfyUI port on 127.0.0.1 is this + its GPU index (default: %(default)s)")
    ray.add_argument("--comfyui-base", type=Path, help="--base-directory for the ComfyUIs the actors start")
    ray.add_argument("--cpu", action="store_true", help="the ComfyUIs the actors start run on the CPU")
    batch.add_argument("--workflow", default="sketch_to_render",
                       help="a bundled API workflow name or an API-format JSON file (default: %(default)s)")
    batch.add_argument("--tiny-models", action="store_true",
                       help="use the files `sketch-rag tiny-models` writes instead of the real model names")
    for name in ("checkpoint", "controlnet", "ip_adapter", "image_encoder", "embedding_model"):
        batch.add_argument(f"--{name.replace('_', '-')}", dest=name, help=f"{name} file/folder name on the servers")
    batch.add_argument("--steps", type=int, help="sampling steps for every job")
    batch.add_argument("--resolution", type=int, help="short side of the edge map (and so of the render)")
    batch.add_argument("--height", type=int, help="render height (multiple of 8); default: 512 px, the sketch's aspect")
    batch.add_argument("--style-resolution", type=int, help="side of the retrieved style images")
    batch.add_argument("--clip-model", type=Path,
                       help="a transformers CLIP folder for the style-similarity score (default: none, no score)")
    batch.add_argument("--slots", type=int, default=2, help="jobs in flight per server (default: %(default)s)")
    batch.add_argument("--skip-bad", action="store_true",
                       help="run the good rows when some are bad (unreadable sketch, bad value) and list the others; "
                       "without it a bad row stops the batch before anything is queued")
    batch.add_argument("--job-timeout", type=float, default=JOB_TIMEOUT_S, metavar="S",
                       help="seconds a job may take from queueing to its end; past it the job is cancelled on the "
                       "server and failed (default: %(default)s)")
    batch.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT_S, metavar="S",
                       help="seconds a server may leave one request unanswered before it is checked and, if it "
                       "does not answer /system_stats either, given up (default: %(default)s)")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    batch.set_defaults(run=_batch)


def _batch(args: argparse.Namespace) -> int:
    from .batch import BatchSettings, run_batch
    from .batch_jobs import read_jobs
    from .workflows import load_api_workflow, load_ui_workflow, tiny_models, ui_path

    if args.ray is not None:
        from .batch_ray import import_ray

        import_ray()  # at once: a missing extra is found before the job file is read
    job_file = read_jobs(args.jobs, skip_bad=args.skip_bad)
    for row in job_file.bad_rows:
        print(f"skipped: {row}", file=sys.stderr)
    if args.slots < 1:
        raise InvalidParameterError(f"--slots {args.slots} must be at least 1.")
    for name in ("job_timeout", "request_timeout"):
        if not (math.isfinite(getattr(args, name)) and getattr(args, name) > 0):
            raise InvalidParameterError(f"--{name.replace('_', '-')} {getattr(args, name)} must be a number of "
                                        "seconds above 0.")
    common: dict[str, Any] = tiny_models() if args.tiny_models else {}
    for name in ("checkpoint", "controlnet", "ip_adapter", "image_encoder", "embedding_model", "steps",
                 "resolution", "style_resolution", "height"):
        if getattr(args, name) is not None:
            common[name] = getattr(args, name)
    workflow = load_api_workflow(args.workflow)
    bundled = Path(args.workflow).suffix == "" and ui_path(args.workflow).is_file()
    ui = load_ui_workflow(args.workflow) if bundled else None
    embedder = None
    if args.clip_model is not None:
        from ..retrieval import ClipEmbedder

        embedder = ClipEmbedder.load(args.clip_model.resolve())
    settings = BatchSettings(workflow=workflow, out_dir=args.out, ui_workflow=ui, common=common, embedder=embedder,
                             slots=args.slots, progress=not args.no_progress, job_timeout=args.job_timeout,
                             request_timeout=args.request_timeout)
    if args.ray is not None:
        from .batch_ray import ComfySpec, RayPlacement, format_node_table, run_ray_batch

        comfy = ComfySpec(comfyui_dir=args.comfyui_dir, port=args.comfyui_port, base_dir=args.comfyui_base,
                          cpu=args.cpu)
        placement = RayPlacement(address=args.ray or None, actors=args.ray_actors, num_gpus=args.ray_gpus_per_actor,
                                 num_cpus=args.ray_cpus_per_actor, comfy=comfy)
        result = run_ray_batch(settings, job_file.jobs, placement, job_file.bad_rows)
        if result.nodes:
            print(format_node_table(result.nodes), file=sys.stderr)
    else:
        result = run_batch(settings, job_file.jobs, args.servers or ["http://127.0.0.1:8188"], job_file.bad_rows)
    print(json.dumps({"done": len(result.done), "skipped": len(result.skipped), "failed": len(result.failed),
                      "unfinished": len(result.unfinished), "bad_rows": len(result.bad_rows),
                      "duplicate_rows": len(job_file.duplicate_lines), "resumed": len(result.resumed),
                      "dead_servers": result.dead_servers,
                      "lost_nodes": [row["node"] for row in result.nodes if row["lost"]],
                      "report": str(args.out / "contact_sheet.png")}))
    for manifest in result.failed:
        print(f"failed: {manifest['job_id']}: {manifest['error']}")
    for job_id in result.unfinished:
        print(f"unfinished: {job_id}: no server was left answering; re-run to render it")
    return 0 if result.ok else 1
