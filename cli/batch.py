"""Batch renders through ComfyUI's HTTP API: many sketch × prompt jobs over one or more servers.

Flow per job: upload the sketch (``/upload/image``), queue the bound API workflow (``/prompt``), follow
``/ws`` for progress and the end of the job, collect the render, the style reference and the retrieved
names and scores (``/history`` + ``/view``), score it, and write the PNG (with the workflow embedded as
ComfyUI does) and a manifest. The manifest is written last, atomically: its presence is what makes a
re-run skip the job, so a crash or a dead server loses nothing and renders nothing twice.

Servers: each gets ``slots`` worker threads (two keep its queue from running dry between jobs). A server
that stops answering has its job put back on the shared queue for the others; it gets no more jobs.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from ..errors import PreflightError
from .batch_jobs import Job
from .batch_scores import contact_sheet, structure_fidelity, style_similarity
from .comfyui_client import ComfyClient, ComfyClientError, JobFailed, OutputImage, PromptRejected
from .workflows import Graph, bind, bind_ui_values, nodes_titled, style_results, targets, validate_graph

logger = logging.getLogger(__name__)

UPLOAD_SUBFOLDER = "sketch_rag_batch"
JOB_TIMEOUT_S = 1800.0
WS_POLL_S = 2.0
"""How often a silent websocket is checked against ``/history`` (a message can be missed on reconnect)."""


class ServerDown(ComfyClientError):
    """The server stopped answering in the middle of a job."""


@dataclass
class BatchResult:
    done: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    dead_servers: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.unfinished


@dataclass
class BatchSettings:
    """What every job shares: the workflow (API + optional UI form), fields bound into every job, scoring."""

    workflow: Graph
    out_dir: Path
    ui_workflow: dict[str, Any] | None = None
    common: dict[str, Any] = field(default_factory=dict)
    embedder: Any = None
    slots: int = 2
    job_timeout: float = JOB_TIMEOUT_S
    progress: bool = True


def manifest_path(out_dir: Path, job_id: str) -> Path:
    return out_dir / "manifests" / f"{job_id}.json"


def is_done(out_dir: Path, job_id: str) -> bool:
    """Finished earlier: a manifest without error whose output file exists."""
    path = manifest_path(out_dir, job_id)
    if not path.is_file():
        return False
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return not manifest.get("error") and bool(manifest.get("output")) and (out_dir / manifest["output"]).is_file()


def preflight(settings: BatchSettings, jobs: Sequence[Job], clients: Sequence[ComfyClient]
              ) -> tuple[list[ComfyClient], dict[str, Any]]:
    """Check every job's graph against every reachable server's ``/object_info``; report all problems at once.

    Returns the reachable clients and one server's object_info. Unreachable servers are dropped with a
    warning while at least one answers.

    Raises:
        PreflightError: no server answers, or any job's graph does not fit a server.
    """
    live: list[tuple[ComfyClient, dict[str, Any]]] = []
    unreachable = []
    for client in clients:
        try:
            live.append((client, client.object_info()))
        except ComfyClientError as exc:
            unreachable.append(f"{client.url}: {exc}")
    if not live:
        raise PreflightError("No ComfyUI server answered; start one (sketch-rag serve) or fix --server:\n  "
                         + "\n  ".join(unreachable))
    for line in unreachable:
        logger.warning("Sketch RAG batch: skipping a server that does not answer: %s", line)
    problems: list[str] = []
    if not nodes_titled(settings.workflow, "SaveImage"):
        problems.append("the workflow has no SaveImage node, so a job would produce no file; add one.")
    for client, info in live:
        seen: set[str] = set()
        for job in jobs:
            try:
                graph = bind(settings.workflow, {**settings.common, **job.fields()})
            except Exception as exc:  # WorkflowError: the same for every job, report once
                seen.add(str(exc))
                continue
            for problem in validate_graph(graph, info, skip_values=targets(graph, "sketch")):
                seen.add(problem)
        problems.extend(f"{client.url}: {p}" for p in sorted(seen))
    if problems:
        raise PreflightError(f"{len(problems)} problem(s) found before queueing; nothing was queued:\n  "
                             + "\n  ".join(problems))
    return [c for c, _ in live], live[0][1]


def run_batch(settings: BatchSettings, jobs: Sequence[Job], servers: Sequence[str]) -> BatchResult:
    """Render every job not rendered yet; see the module docstring.

    Raises:
        PreflightError: before anything is queued (see ``preflight``).
    """
    from tqdm import tqdm

    out_dir = settings.out_dir
    result = BatchResult()
    unique = list({job.job_id: job for job in jobs}.items())
    todo: list[Job] = []
    for job_id, job in unique:
        if is_done(out_dir, job_id):
            result.skipped.append(job_id)
        else:
            todo.append(job)
    if not todo:
        write_report(out_dir)
        return result
    clients, object_info = preflight(settings, todo, [ComfyClient(url) for url in servers])
    pending: queue.Queue[Job] = queue.Queue()
    for job in todo:
        pending.put(job)
    lock = threading.Lock()
    bar = tqdm(total=len(todo), unit="job", desc="sketch-rag batch", disable=not settings.progress)

    def record(manifest: dict[str, Any]) -> None:
        with lock:
            (result.failed if manifest.get("error") else result.done).append(manifest)
            bar.update(1)

    def status(text: str) -> None:
        with lock:
            bar.set_postfix_str(text, refresh=True)

    workers = []
    for client in clients:
        dead = threading.Event()
        for _slot in range(max(1, settings.slots)):
            worker = _Worker(ComfyClient(client.url), settings, object_info, pending, record, status, dead, result,
                             lock)
            workers.append(worker)
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    bar.close()
    while not pending.empty():
        result.unfinished.append(pending.get().job_id)
    write_report(out_dir)
    return result


class _Worker:
    """One job at a time on one server, over its own websocket (ComfyUI sends progress to its client id)."""

    clip_lock = threading.Lock()
    """The CLIP model is shared by the workers; its own lock keeps progress updates from waiting on it."""

    def __init__(self, client: ComfyClient, settings: BatchSettings, object_info: Mapping[str, Any],
                 pending: queue.Queue[Job], record: Callable[[dict[str, Any]], None], status: Callable[[str], None],
                 dead: threading.Event, result: BatchResult, lock: threading.Lock) -> None:
        self.client, self.settings, self.object_info = client, settings, object_info
        self.pending, self.record, self.status, self.dead = pending, record, status, dead
        self.result, self.lock = result, lock
        self.ws: Any = None

    def run(self) -> None:
        while not self.dead.is_set():
            try:
                job = self.pending.get_nowait()
            except queue.Empty:
                break
            try:
                self.record(self.render(job))
            except ServerDown as exc:
                self.pending.put(job)  # another server takes it
                self.dead.set()
                with self.lock:
                    if self.client.url not in self.result.dead_servers:
                        self.result.dead_servers.append(self.client.url)
                logger.warning("Sketch RAG batch: %s stopped answering (%s); its job goes back in the queue.",
                               self.client.url, exc)
        if self.ws is not None:
            self.ws.close()

    def _connect(self) -> Any:
        import websocket

        if self.ws is None:
            parts = urllib.parse.urlsplit(self.client.url)
            scheme = "wss" if parts.scheme == "https" else "ws"
            try:
                self.ws = websocket.create_connection(
                    f"{scheme}://{parts.netloc}/ws?clientId={self.client.client_id}", timeout=WS_POLL_S)
            except (OSError, websocket.WebSocketException) as exc:
                raise ServerDown(f"websocket to {self.client.url} failed: {exc}") from exc
        return self.ws

    def render(self, job: Job) -> dict[str, Any]:
        settings, out_dir = self.settings, self.settings.out_dir
        job_id = job.job_id
        manifest: dict[str, Any] = {
            "job_id": job_id, "sketch": str(job.sketch), **job.fields(), "server": self.client.url,
            "styles": [], "style_scores": [], "output": None, "reference_file": None, "error": None,
            "structure_fidelity": None, "style_similarity": None, "timings": {},
        }
        timings = manifest["timings"]
        started = time.perf_counter()
        try:
            self._connect()
            uploaded = self.client.upload_image(job.sketch.read_bytes(), f"{job_id}{job.sketch.suffix.lower()}",
                                                subfolder=UPLOAD_SUBFOLDER)
            graph = bind(settings.workflow, {**settings.common, **job.fields(), "sketch": uploaded,
                                             "filename_prefix": f"{UPLOAD_SUBFOLDER}/{job_id}"})
            ui = bind_ui_values(settings.ui_workflow, graph, self.object_info) if settings.ui_workflow else None
            timings["upload_s"] = round(time.perf_counter() - started, 3)
            prompt_id = self.client.queue_prompt(graph, {"extra_pnginfo": {"workflow": ui}} if ui else None)
            manifest["prompt_id"] = prompt_id
            queued = time.perf_counter()
            entry, exec_started = self._follow(prompt_id, job_id)
            finished = time.perf_counter()
            timings["queue_wait_s"] = round((exec_started or finished) - queued, 3)
            timings["render_s"] = round(finished - (exec_started or queued), 3)
            self._collect(entry, graph, ui, job, manifest)
            timings["download_s"] = round(time.perf_counter() - finished, 3)
        except (JobFailed, PromptRejected) as exc:
            manifest["error"] = str(exc)
        except ComfyClientError as exc:
            if isinstance(exc, ServerDown):
                raise
            raise ServerDown(str(exc)) from exc
        timings["total_s"] = round(time.perf_counter() - started, 3)
        _write_json(manifest_path(out_dir, job_id), manifest)
        return manifest

    def _follow(self, prompt_id: str, job_id: str) -> tuple[dict[str, Any], float | None]:
        """Read ``/ws`` until the job ends; returns its history entry and when it started executing."""
        import websocket

        ws = self._connect()
        deadline = time.monotonic() + self.settings.job_timeout
        exec_started: float | None = None
        while time.monotonic() < deadline:
            try:
                message = ws.recv()
            except websocket.WebSocketTimeoutException:
                message = None
            except (OSError, websocket.WebSocketException) as exc:
                raise ServerDown(f"websocket closed: {exc}") from exc
            if isinstance(message, str):
                event = json.loads(message)
                data = event.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                kind = event.get("type")
                if kind == "execution_start":
                    exec_started = time.perf_counter()
                elif kind == "progress":
                    self.status(f"{job_id[:24]} step {data.get('value')}/{data.get('max')}")
                elif kind == "execution_error":
                    raise JobFailed(prompt_id, data.get("node_type", "?"), data.get("exception_message", ""))
                elif kind in ("execution_success", "execution_interrupted") or (
                        kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id):
                    return self.client.wait(prompt_id, timeout=30.0), exec_started
            elif message is None:
                entry = self.client.history(prompt_id)  # also notices a dead server (raises ComfyClientError)
                if entry and entry.get("status", {}).get("completed") is not None:
                    return self.client.wait(prompt_id, timeout=30.0), exec_started
        raise JobFailed(prompt_id, "?", f"did not finish within {self.settings.job_timeout:.0f} s")

    def _collect(self, entry: dict[str, Any], graph: Graph, ui: dict[str, Any] | None, job: Job,
                 manifest: dict[str, Any]) -> None:
        out_dir, outputs = self.settings.out_dir, entry.get("outputs", {})

        def images(node_ids: list[str]) -> list[OutputImage]:
            found = []
            for node_id in node_ids:
                found.extend(self.client.output_images(entry, node_id))
            return found

        manifest["styles"], manifest["style_scores"] = style_results(graph, outputs)
        renders = images(nodes_titled(graph, "SaveImage"))
        if not renders:
            raise JobFailed(manifest.get("prompt_id", "?"), "SaveImage", "the job finished without an image")
        data = self.client.view(renders[0])
        render = Image.open(io.BytesIO(data))
        render.load()
        output = Path("renders") / f"{job.job_id}.png"
        _write_png(out_dir / output, render, graph, ui)
        manifest["output"] = str(output)
        references = images(nodes_titled(graph, "PreviewImage", "style reference"))
        reference = None
        if references:
            reference = Image.open(io.BytesIO(self.client.view(references[0])))
            reference_file = Path("references") / f"{job.job_id}.png"
            (out_dir / reference_file).parent.mkdir(parents=True, exist_ok=True)
            reference.save(out_dir / reference_file)
            manifest["reference_file"] = str(reference_file)
        from ..rendering.images import read_image

        pixels = np.asarray(render.convert("RGB"), dtype=np.float32) / 255.0
        manifest["structure_fidelity"] = round(structure_fidelity(read_image(job.sketch), pixels), 4)
        if self.settings.embedder is not None and reference is not None:
            with self.clip_lock:
                manifest["style_similarity"] = round(style_similarity(self.settings.embedder, render, reference), 4)


def _write_png(path: Path, image: Image.Image, graph: Graph, ui: dict[str, Any] | None) -> None:
    """The render with ComfyUI's text chunks, so dropping it on ComfyUI reopens the exact job."""
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(graph))
    if ui is not None:
        info.add_text("workflow", json.dumps(ui))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    image.save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_manifests(out_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((out_dir / "manifests").glob("*.json"))]


def write_report(out_dir: Path) -> Path:
    """``batch.json`` (every manifest, best structure first) and ``contact_sheet.png`` for review."""
    rows = sorted(read_manifests(out_dir), key=lambda r: -(r.get("structure_fidelity") or 0.0))
    _write_json(out_dir / "batch.json", rows)
    return contact_sheet(rows, out_dir, out_dir / "contact_sheet.png")
