"""Batch throughput benchmark: jobs per minute through a real ComfyUI server, through Ray, and in-process.

One run, ending with one JSON line ``{"jobs", "rounds", "server_jobs_per_min", "inprocess_jobs_per_min",
"overhead_ratio", "overhead_ms_per_job", "overhead_ms_per_job_rounds", ..., "ray_jobs_per_min", "ray_init_s",
"ray_startup_s", "ray_steady_ms_per_job", "server_steady_ms_per_job", "ray_overhead_ms_per_job_vs_server"}``.

Why both sides: ``sketch-rag batch`` adds an HTTP server, uploads, a websocket, ``/history`` + ``/view``
downloads, a PNG with the workflow embedded and a structure score per job on top of the engine's own
work. This measures what that costs against rendering the same jobs with the same engine in this
process, so a regression in the server path shows up as a number. Issue 10 targets <= 30 ms per job.

* Server side: ComfyUI (``.comfyui/ComfyUI``, CPU) with the pack linked in and the tiny offline models,
  driven by the real batch runner (``cli/batch.py``, default 2 slots, no style-similarity model).
* In-process side: every node's work done by direct engine calls (canny edges, library query, style
  crops, ``HybridPipeline.render``, PNG write), with every parameter read from the same bound API
  workflow the server gets, so sizes, steps, scales and model files are identical by construction.

Both sides first render one untimed warm-up job (model loading and library indexing are one-off costs
of either path, not per-job overhead), then ``--rounds`` rounds of ``--jobs`` fresh jobs each, the two
sides taking turns round by round (which side goes first alternating) so a change in machine load hits both;
medians over rounds keep a load spike in one round out of the figure. ``overhead_ms_per_job`` is the
median over rounds of ``(server wall time - in-process wall time) / jobs``; ``server_idle_ms_per_job`` the
median over rounds of ``(server wall time - the server's own execution time) / jobs``, i.e. what the batch
runner adds by not keeping the server busy (uploads, downloads, scoring not overlapped with rendering),
apart from ComfyUI's own per-job cost; ``overhead_ratio`` is
``server wall time / in-process wall time - 1`` over all rounds (0.10 = 10 % slower through the server).

ComfyUI's prompt worker pauses for a full ``gc.collect()`` (a few hundred ms here) at most every 10 s;
whether a round meets one is chance. So the overhead is also given without those pauses
(``overhead_ms_per_job_outside_comfyui_gc``, their steady share on its own as ``comfyui_gc_ms_per_job``),
and without the batch's once-per-batch start and end as well (``overhead_ms_per_job_steady``: pre-flight
and first upload before the first job starts, the last job's collection, ``batch.json`` and the contact
sheet after the last one ends), all read from the server's history stamps.
The overhead per job is roughly constant, so with real models (seconds to minutes per render) the ratio
is far smaller than with the tiny ones. The details line (stderr) breaks a server job's time down:
upload, POST /prompt, queue wait, execution (as the client saw it and as the server's history stamps
it), how long after the server's end the client had the result (websocket + /history), /view downloads,
PNG writes, scoring.

The Ray row (``--ray`` placement, skipped with ``--no-ray`` or without the ray extra): a local one-node
Ray (started once, on 127.0.0.1; ``ray_init_s``) whose actor finds the same ComfyUI the server side uses and
keeps the same two jobs in flight, so the two rows differ only by the placement. Each round is one
``--ray`` batch on its own actor pool, as a run of ``sketch-rag batch --ray`` is. Start-up and per-job cost
are told apart by when each job's manifest landed (its file's mtime, on both sides alike): a batch's
steady time per job is ``(last landing - first landing) / (jobs - 1)``, its start-up is the time to the
first landing less one steady job. ``ray_overhead_ms_per_job_vs_server`` is the median over rounds of
Ray's steady time per job less the server side's in the same round (target: at most 30 ms);
``ray_startup_s`` the median of Ray's start-up per batch (actor pool, the actor's pre-flight).

    python bench/batch.py                     # 7 rounds of 12 jobs, 64 px, 8 steps
    python bench/batch.py --steps 20          # the ratio at a usual step count (the overhead per job barely moves)
    python bench/batch.py --rounds 3 --jobs 4 # a quick smoke run (noisier)

The ``run_batch`` wall time includes its per-batch work (pre-flight against the server's node types,
``batch.json`` and the contact sheet), spread over ``--jobs``; with many jobs per batch it fades.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

if __package__ in (None, ""):  # run as a script: make the pack importable as sketch_rag
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from sketch_rag.cli.batch_jobs import Job
from sketch_rag.cli.workflows import SKETCHES_DIR

REPO = Path(__file__).resolve().parent.parent
DEFAULT_COMFYUI = REPO / ".comfyui" / "ComfyUI"
SKETCHES = SKETCHES_DIR
PROMPTS = ("a watercolor painting of it", "an ink drawing with bold lines")
WARMUP_PROMPT = "a pencil study, warm-up"
SERVER_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "ANONYMIZED_TELEMETRY": "False"}


def make_jobs(count: int, sketches: Sequence[Path], first_seed: int = 1000) -> list[Job]:
    """``count`` distinct jobs: sketches × prompts, each with its own seed, so no ComfyUI cache hit skips work."""
    jobs = []
    for n in range(count):
        sketch = sketches[n // len(PROMPTS) % len(sketches)]
        jobs.append(Job(sketch=sketch, prompt=PROMPTS[n % len(PROMPTS)], seed=first_seed + n))
    return jobs


def common_fields(steps: int, height: int) -> dict[str, Any]:
    """Fields bound into every job on both sides: the tiny models, and a small, fixed render size."""
    from sketch_rag.cli.workflows import tiny_models

    return {**tiny_models(), "steps": steps, "resolution": height, "style_resolution": max(64, height),
            "height": height}


# -- server side ------------------------------------------------------------------------------------------
def prepare_base(base: Path) -> Path:
    """A ComfyUI ``--base-directory`` with the pack linked in and the tiny models written; returns models/."""
    from sketch_rag.cli.comfyui_server import link_pack
    from sketch_rag.tiny_models.files import write_tiny_models

    link_pack(base)
    for folder in ("input", "output", "user", "temp"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    write_tiny_models(base / "models")
    return base / "models"


class ServerSide:
    """A fresh ComfyUI on the bench's base directory, driven by the real batch runner; stop() ends it."""

    def __init__(self, comfy_dir: Path, base: Path, work: Path, common: Mapping[str, Any], threads: int) -> None:
        from sketch_rag.cli.comfyui_server import free_port, start_server

        self.work, self.common = work, common
        env = {**SERVER_ENV, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.server = start_server(comfy_dir, port=free_port(), cpu=True, log_path=work / "comfyui.log",
                                   extra_args=("--base-directory", str(base), "--database-url", "sqlite:///:memory:"),
                                   env=env)
        self.started = 0.0

    def batch(self, batch_jobs: Sequence[Job], out: Path) -> tuple[float, list[dict[str, Any]]]:
        """(wall seconds, manifests) for rendering ``batch_jobs`` into ``out``."""
        from sketch_rag.cli.batch import BatchSettings, run_batch
        from sketch_rag.cli.workflows import load_api_workflow, load_ui_workflow

        settings = BatchSettings(workflow=load_api_workflow(), out_dir=out, ui_workflow=load_ui_workflow(),
                                 common=dict(self.common), progress=False)
        self.started = time.time()  # the clock of the server's history stamps
        start = time.perf_counter()
        result = run_batch(settings, batch_jobs, [self.server.url])
        seconds = time.perf_counter() - start
        if not result.ok or len(result.done) != len(batch_jobs):
            errors = [f"{m['job_id']}: {m['error']}" for m in result.failed] + result.unfinished
            raise RuntimeError(f"server batch did not render every job ({len(result.done)}/{len(batch_jobs)}): "
                               f"{errors}; see the server log {self.server.log_path}")
        return seconds, result.done

    def prompt_spans(self, done: Sequence[Mapping[str, Any]]) -> list[tuple[float, float]]:
        """Each job's (start, end) of execution on the server, in time.time() seconds, from its history stamps.

        With two slots the next job is already queued when one ends, so a gap between two spans is the
        server's own time between prompts: about a millisecond, except when ComfyUI's prompt worker runs its
        periodic full ``gc.collect()`` (main.py: at most every 10 s, between prompts or while idle).
        """
        from sketch_rag.cli.comfyui_client import ComfyClient

        client = ComfyClient(self.server.url)
        spans = []
        for manifest in done:
            entry = client.history(manifest["prompt_id"]) or {}
            stamps = {kind: data.get("timestamp") for kind, data in (entry.get("status") or {}).get("messages", [])
                      if isinstance(data, dict)}
            start, end = stamps.get("execution_start"), stamps.get("execution_success")
            if isinstance(start, (int, float)) and isinstance(end, (int, float)):
                spans.append((start / 1000.0, end / 1000.0))
        return sorted(spans)

    def stop(self) -> None:
        self.server.stop()


class RaySide:
    """The ``--ray`` placement on a local one-node Ray, its actor finding ``server``'s ComfyUI on its port."""

    def __init__(self, server: ServerSide) -> None:
        from sketch_rag.cli.batch_ray import ComfySpec, RayPlacement, connect, import_ray

        self.ray, self.server = import_ray(), server
        port = int(server.server.url.rsplit(":", 1)[1])
        self.placement = RayPlacement(actors=1, num_gpus=0, num_cpus=1, comfy=ComfySpec(port=port))
        start = time.perf_counter()
        connect(self.ray, None)
        self.init_s = time.perf_counter() - start

    def batch(self, batch_jobs: Sequence[Job], out: Path) -> tuple[float, list[dict[str, Any]]]:
        from sketch_rag.cli.batch import BatchResult, BatchSettings
        from sketch_rag.cli.batch_ray import run_on_ray
        from sketch_rag.cli.workflows import load_api_workflow, load_ui_workflow

        settings = BatchSettings(workflow=load_api_workflow(), out_dir=out, ui_workflow=load_ui_workflow(),
                                 common=dict(self.server.common), progress=False)
        result = BatchResult()
        start = time.perf_counter()
        run_on_ray(self.ray, settings, batch_jobs, self.placement, result)
        seconds = time.perf_counter() - start
        if not result.ok or len(result.done) != len(batch_jobs):
            errors = [f"{m['job_id']}: {m['error']}" for m in result.failed] + result.unfinished
            raise RuntimeError(f"Ray batch did not render every job ({len(result.done)}/{len(batch_jobs)}): {errors}")
        return seconds, result.done

    def stop(self) -> None:
        self.ray.shutdown()


def landings(out: Path, started_wall: float) -> tuple[float, float]:
    """(start-up s, steady s per job) of a batch from its manifests' mtimes; ``started_wall`` is time.time()."""
    stamps = sorted(p.stat().st_mtime for p in (out / "manifests").glob("*.json"))
    steady = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return stamps[0] - started_wall - steady, steady


# -- in-process side --------------------------------------------------------------------------------------
class InProcessRenderer:
    """The bundled workflow's nodes as direct engine calls, parameters read from the bound API graph."""

    def __init__(self, models_dir: Path, work: Path) -> None:
        from sketch_rag.cli.workflows import load_api_workflow

        self.models_dir, self.work = models_dir, work
        self.workflow = load_api_workflow()
        self.library: Any = None

    def _inputs(self, graph: Mapping[str, Any], class_type: str) -> dict[str, Any]:
        from sketch_rag.cli.workflows import resolved

        found = [node["inputs"] for node in graph.values() if node["class_type"] == class_type]
        if len(found) != 1:
            raise RuntimeError(f"the bundled workflow has {len(found)} {class_type} nodes; this bench expects one.")
        return {name: resolved(dict(graph), value) for name, value in found[0].items()}  # the one prompt's text

    def _open_library(self, embedding_model: str) -> Any:
        """The default library (shipped styles + an empty user folder), as the Style Library node opens it."""
        from sketch_rag.model_folders import STYLE_CLIP
        from sketch_rag.retrieval.embedder import ClipEmbedder
        from sketch_rag.retrieval.library import default_roots, open_library

        if self.library is None:
            embedder = ClipEmbedder.load(embedding_model, device="cpu",
                                         search_dirs=[self.models_dir / STYLE_CLIP])
            self.library, _ = open_library(default_roots(self.work / "user_styles"), embedder, self.work / "store")
        return self.library

    def render(self, job: Job, common: Mapping[str, Any], out: Path) -> None:
        from PIL import Image, ImageOps

        from sketch_rag.cli.workflows import bind
        from sketch_rag.imaging import write_image
        from sketch_rag.rendering.canny import CannySettings, sketch_to_edges
        from sketch_rag.rendering.model_cache import DEFAULT_CACHE
        from sketch_rag.rendering.pipeline_spec import PipelineSpec
        from sketch_rag.rendering.render_request import IpAdapterMode, RenderRequest
        from sketch_rag.retrieval.folder import normalise_tags
        from sketch_rag.retrieval.images import square_reference
        from sketch_rag.retrieval.query import StyleQuery

        graph = bind(self.workflow, {**common, **job.fields()})
        canny = self._inputs(graph, "SketchRAGCannySketchPreprocessor")
        library_in = self._inputs(graph, "SketchRAGStyleLibraryLoader")
        retriever = self._inputs(graph, "SketchRAGClipStyleRetriever")
        loader = self._inputs(graph, "SketchRAGHybridPipelineLoader")
        sampler = self._inputs(graph, "SketchRAGHybridSampler")
        if library_in["library_folder"] or library_in["store"]:
            raise RuntimeError("this bench mirrors the default style library only; the workflow names another.")

        with Image.open(job.sketch) as opened:  # what ComfyUI's LoadImage does: EXIF-rotated RGB in [0, 1]
            sketch = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"), dtype=np.float32) / 255.0
        edges = sketch_to_edges(sketch, CannySettings(
            low_threshold=canny["low_threshold"], high_threshold=canny["high_threshold"],
            auto_threshold=canny["auto_threshold"], resolution=canny["resolution"], blur=canny["blur"],
            thicken=canny["thicken"]))
        library = self._open_library(library_in["embedding_model"])
        library.sync()  # the loader node re-checks the folders on every run
        matches = library.query(StyleQuery(text=retriever["prompt"], k=retriever["k"],
                                           tags=normalise_tags(retriever["tag_filter"]),
                                           image_weight=retriever["image_weight"],
                                           temperature=retriever["blend_temperature"]))
        styles = [square_reference(m.path, retriever["resolution"]) for m in matches]
        spec = PipelineSpec(
            checkpoint=self.models_dir / "checkpoints" / loader["checkpoint"],
            controlnet=self.models_dir / "controlnet" / loader["controlnet"],
            ip_adapter=self.models_dir / "ipadapter" / loader["ip_adapter"],
            image_encoder=self.models_dir / "clip_vision" / loader["image_encoder"],
            dtype=loader["dtype"], device="cpu", attention_slicing=loader["attention_slicing"],
            vae_tiling=loader["vae_tiling"])
        request = RenderRequest(
            prompt=sampler["prompt"], negative_prompt=sampler["negative_prompt"], control_image=edges,
            style_images=styles, style_weights=[round(m.weight, 4) for m in matches],
            controlnet_conditioning_scale=sampler["controlnet_conditioning_scale"],
            control_guidance_start=sampler["control_guidance_start"],
            control_guidance_end=sampler["control_guidance_end"], ip_adapter_scale=sampler["ip_adapter_scale"],
            ip_adapter_mode=IpAdapterMode(sampler["ip_adapter_mode"]),
            num_inference_steps=sampler["num_inference_steps"], guidance_scale=sampler["guidance_scale"],
            seed=sampler["seed"], width=sampler["width"], height=sampler["height"],
            num_images_per_prompt=sampler["batch_size"])
        images = DEFAULT_CACHE.get(spec).render(request)
        write_image(out / f"{job.job_id}.png", images[0])

    def close(self) -> None:
        if self.library is not None:
            self.library.close()


def run_inprocess(renderer: InProcessRenderer, jobs: Sequence[Job], common: Mapping[str, Any], out: Path) -> float:
    """Seconds to render ``jobs`` one after the other in this process (checked: one PNG per job)."""
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for job in jobs:
        renderer.render(job, common, out)
    seconds = time.perf_counter() - start
    rendered = len(list(out.glob("*.png")))
    if rendered != len(jobs):
        raise RuntimeError(f"in-process side wrote {rendered} PNGs for {len(jobs)} jobs.")
    return seconds


PAUSE_MS = 100.0
"""A gap between two prompts at least this long is ComfyUI's periodic gc pause (see ``ServerSide.prompt_gaps``);
the ordinary gap is about a millisecond, the pause a few hundred (a full collection of ~0.5 M objects)."""
GC_INTERVAL_S = 10.0
"""ComfyUI's ``gc_collect_interval`` (main.py, ``prompt_worker``): the shortest time between two of its pauses."""

BREAKDOWN = ("upload_s", "queue_s", "queue_wait_s", "render_s", "server_exec_s", "end_seen_after_s", "download_s",
             "write_s", "score_s", "total_s")
"""The per-job timings a manifest records, in the order a job goes through them."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=12, help="timed jobs per side and round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=7,
                        help="timed rounds, the sides taking turns, each round's first side alternating; the "
                        "figures are medians over rounds (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads on each side; one keeps the figures steady on a shared machine, where "
                        "two contending threads run several times slower (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=8,
                        help="sampling steps per job; the overhead per job hardly depends on it, while the noise "
                        "of a shared machine grows with the render time (default: %(default)s)")
    parser.add_argument("--height", type=int, default=64, help="render height and edge-map short side, multiple of 8 "
                        "(default: %(default)s)")
    parser.add_argument("--comfyui-dir", type=Path, default=DEFAULT_COMFYUI,
                        help="a ComfyUI 0.3.75 folder (default: %(default)s, made by ./dev.sh)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the work folder (renders, logs) here")
    parser.add_argument("--no-ray", action="store_true", help="leave out the Ray row")
    args = parser.parse_args(argv)
    if args.jobs < 2 and not args.no_ray:
        parser.error("the Ray row needs --jobs 2 or more (a steady time per job); or give --no-ray.")
    if args.jobs < 1 or args.rounds < 1 or args.threads < 1 or args.steps < 1 or args.height < 64 or args.height % 8:
        parser.error("--jobs, --rounds and --steps must be at least 1, --height a multiple of 8 of at least 64.")
    if not (args.comfyui_dir / "main.py").is_file():
        parser.error(f"no ComfyUI in {args.comfyui_dir}; run ./dev.sh (installs .comfyui/) or pass --comfyui-dir.")
    sketches = sorted(SKETCHES.glob("*.png"))
    if not sketches:
        parser.error(f"no example sketches in {SKETCHES}.")

    warmup = Job(sketch=sketches[-1], prompt=WARMUP_PROMPT, seed=1)
    common = common_fields(args.steps, args.height)
    n, server_times, inproc_times, manifests = args.jobs, [], [], []
    idle_ms: list[float] = []
    pauses: list[list[float]] = []  # per server round: ComfyUI's gc pauses between its prompts, ms
    gap_ms: list[float] = []  # every other gap between two prompts, ms
    ends_ms: list[float] = []  # per server round: the batch's time before its first and after its last job, ms
    ray_times: list[float] = []
    steady: dict[str, list[float]] = {"server": [], "ray": []}  # per round: s per job between first and last landing
    startup: dict[str, list[float]] = {"server": [], "ray": []}  # per round: s before the first landing, less one job
    with tempfile.TemporaryDirectory(prefix="sketch_rag_bench_batch_") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        models_dir = prepare_base(work / "base")
        import torch

        torch.set_num_threads(args.threads)  # the server's torch gets the same count (OMP_NUM_THREADS)
        server = ServerSide(args.comfyui_dir, work / "base", work, common, args.threads)
        renderer = InProcessRenderer(models_dir, work)
        ray_side: RaySide | None = None
        try:
            if not args.no_ray:
                ray_side = RaySide(server)
            server_warm, _ = server.batch([warmup], work / "server_warmup")
            start = time.perf_counter()
            run_inprocess(renderer, [warmup], common, work / "inprocess_warmup")
            inproc_warm = time.perf_counter() - start
            for round_no in range(args.rounds):
                jobs = make_jobs(n, sketches, first_seed=1000 + round_no * n)

                def server_round(jobs: Sequence[Job] = jobs, round_no: int = round_no) -> None:
                    started_wall = time.time()
                    seconds, done = server.batch(jobs, work / f"server_out_{round_no}")
                    first, per_job = landings(work / f"server_out_{round_no}", started_wall)
                    startup["server"].append(first)
                    steady["server"].append(per_job)
                    server_times.append(seconds)
                    manifests.extend(done)
                    # The server's execution stamps: what of the wall time it spent rendering, not waiting for us.
                    busy = sum(m["timings"].get("server_exec_s", 0.0) for m in done)
                    idle_ms.append(round(1000.0 * (seconds - busy) / n, 1))
                    spans = server.prompt_spans(done)  # after the timing: costs the round nothing
                    gaps = [max(0.0, nxt[0] - prev[1]) for prev, nxt in itertools.pairwise(spans)]
                    # Once per batch, not per job: pre-flight and the first upload before the first start,
                    # the last job's collection and batch.json + contact sheet after the last end.
                    ends_ms.append(round(1000.0 * ((spans[0][0] - server.started)
                                                   + (server.started + seconds - spans[-1][1])), 1))
                    pauses.append([round(1000.0 * g, 1) for g in gaps if g * 1000.0 >= PAUSE_MS])
                    gap_ms.extend(1000.0 * g for g in gaps if g * 1000.0 < PAUSE_MS)

                def inprocess_round(jobs: Sequence[Job] = jobs, round_no: int = round_no) -> None:
                    inproc_times.append(run_inprocess(renderer, jobs, common, work / f"inprocess_out_{round_no}"))

                def ray_round(jobs: Sequence[Job] = jobs, round_no: int = round_no) -> None:
                    if ray_side is None:
                        return
                    # Seeds of their own: the same graph would be collected from the server's history, not rendered.
                    ray_jobs = make_jobs(n, sketches, first_seed=500_000 + round_no * n)
                    started_wall = time.time()
                    seconds, _ = ray_side.batch(ray_jobs, work / f"ray_out_{round_no}")
                    ray_times.append(seconds)
                    first, per_job = landings(work / f"ray_out_{round_no}", started_wall)
                    startup["ray"].append(first)
                    steady["ray"].append(per_job)

                # Which side goes first rotates: a side that always ran second would always meet the
                # other's leftovers (a warm page cache, a gc debt, a load spike that is just ending).
                sides = [server_round, inprocess_round, ray_round]
                for side in sides[round_no % 3:] + sides[:round_no % 3]:
                    side()
        finally:
            renderer.close()
            if ray_side is not None:
                ray_side.stop()
            server.stop()

    per_round_ms = [round(1000.0 * (s - i) / n, 1) for s, i in zip(server_times, inproc_times, strict=True)]
    # The same without ComfyUI's gc pauses: whether a round meets one (0 or 1 in a ~6 s round) is chance,
    # which makes the raw figure flip between two values; its steady share is reported on its own.
    outside_gc_ms = [round((1000.0 * (s - i) - sum(p)) / n, 1)
                     for s, i, p in zip(server_times, inproc_times, pauses, strict=True)]
    # ... and without the batch's own start and end too: what each further job of a long batch adds.
    steady_ms = [round((1000.0 * (s - i) - sum(p) - e) / n, 1)
                 for s, i, p, e in zip(server_times, inproc_times, pauses, ends_ms, strict=True)]
    all_pauses = [p for round_pauses in pauses for p in round_pauses]
    gc_pause_ms = statistics.median(all_pauses) if all_pauses else 0.0
    server_s, inproc_s = sum(server_times), sum(inproc_times)
    details = {
        "steps": args.steps, "height": args.height, "threads": args.threads, "cpu_count": os.cpu_count(),
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "server_wall_s": [round(t, 2) for t in server_times], "inprocess_wall_s": [round(t, 2) for t in inproc_times],
        "server_warmup_s": round(server_warm, 2), "inprocess_warmup_s": round(inproc_warm, 2),
        "inprocess_mean_job_ms": round(1000.0 * inproc_s / (n * args.rounds), 1),
        "server_mean_job_ms": round(1000.0 * server_s / (n * args.rounds), 1),
        # Where a server job's time goes; medians over every timed job, in ms.
        "server_job_median_ms": {key.removesuffix("_s"): round(1000.0 * statistics.median(
            m["timings"].get(key, 0.0) for m in manifests), 1) for key in BREAKDOWN},
        "server_gap_between_prompts_median_ms": round(statistics.median(gap_ms), 1) if gap_ms else None,
        "comfyui_gc_pauses_ms_rounds": pauses,
        "server_batch_ends_ms_rounds": ends_ms,
    }
    ray_row: dict[str, Any] = {}
    if ray_side is not None:
        vs_server = [round(1000.0 * (r - s), 1) for r, s in zip(steady["ray"], steady["server"], strict=True)]
        ray_row = {
            "ray_jobs_per_min": round(60.0 * n * args.rounds / sum(ray_times), 2),
            "ray_init_s": round(ray_side.init_s, 2),
            "ray_startup_s": round(statistics.median(startup["ray"]), 2),
            "server_startup_s": round(statistics.median(startup["server"]), 2),
            "ray_steady_ms_per_job": round(1000.0 * statistics.median(steady["ray"]), 1),
            "server_steady_ms_per_job": round(1000.0 * statistics.median(steady["server"]), 1),
            "ray_overhead_ms_per_job_vs_server": round(statistics.median(vs_server), 1),
            "ray_overhead_ms_per_job_vs_server_rounds": vs_server,
        }
        details["ray_wall_s"] = [round(t, 2) for t in ray_times]
        details["ray_startup_s_rounds"] = [round(t, 2) for t in startup["ray"]]
    print("details: " + json.dumps(details), file=sys.stderr)
    total = n * args.rounds
    print(json.dumps({"jobs": n, "rounds": args.rounds, "server_jobs_per_min": round(60.0 * total / server_s, 2),
                      "inprocess_jobs_per_min": round(60.0 * total / inproc_s, 2),
                      "overhead_ratio": round(server_s / inproc_s - 1.0, 4),
                      "overhead_ms_per_job": round(statistics.median(per_round_ms), 1),
                      "overhead_ms_per_job_rounds": per_round_ms,
                      "overhead_ms_per_job_outside_comfyui_gc": round(statistics.median(outside_gc_ms), 1),
                      "overhead_ms_per_job_outside_comfyui_gc_rounds": outside_gc_ms,
                      "overhead_ms_per_job_steady": round(statistics.median(steady_ms), 1),
                      "comfyui_gc_pause_ms": round(gc_pause_ms, 1),
                      # One pause per GC_INTERVAL_S of rendering, spread over the jobs rendered meanwhile.
                      "comfyui_gc_ms_per_job": round(gc_pause_ms * (server_s / total) / GC_INTERVAL_S, 1),
                      "server_idle_ms_per_job": round(statistics.median(idle_ms), 1),
                      "server_idle_ms_per_job_rounds": idle_ms, **ray_row}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
