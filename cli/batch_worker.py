"""Rendering one job on one ComfyUI server, and the batch worker that does it job after job.

Per job (``JobRunner.fetch``, the same for every placement): upload the sketch (``/upload/image``), queue
the bound API workflow (``/prompt``) under a prompt id derived from the bound graph, follow ``/ws`` (and
``/history``) to the end, download the render and the style reference and read the retrieved names and
scores (``/history`` + ``/view``). Then, wherever the output folder is (``finish_job``): score it, write
the PNG and the manifest. The ``--server`` placement does both in its worker threads (``Worker``); the Ray
placement fetches on the cluster and finishes on the driver.

What ends a job how:
- anything that goes wrong inside the job (a 4xx from an endpoint, a node error at execution, a render
  PIL cannot decode, a timeout, any unexpected exception) fails that job, with the reason in its manifest;
- only a server that stops answering (no HTTP reply, then no ``/system_stats`` either) raises ``ServerDown``:
  the job goes back on the board for the other servers.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .batch_board import JobBoard
from .batch_jobs import Job
from .batch_output import manifest_path, write_json, write_png
from .batch_scores import structure_fidelity, style_similarity
from .comfyui_client import (
    ComfyClient,
    ComfyClientError,
    JobFailed,
    OutputImage,
    PromptRejected,
    ServerUnreachable,
    finished_entry,
)
from .workflows import Graph, bind, bind_ui_values, nodes_titled, style_results

logger = logging.getLogger(__name__)

UPLOAD_SUBFOLDER = "sketch_rag_batch"
JOB_TIMEOUT_S = 1800.0
REQUEST_TIMEOUT_S = 30.0
WS_POLL_S = 1.0
"""How often a job is also checked against ``/history`` (a websocket message can be missed) and its server's state."""
HISTORY_POLL_S = 0.2
"""Poll interval for a job followed without a websocket (queued by an earlier run, or after the socket dropped)."""


class ServerDown(ComfyClientError):
    """The server stopped answering in the middle of a job."""


@dataclass
class BatchSettings:
    """What every job shares: the workflow (API + optional UI form), fields bound into every job, scoring, limits."""

    workflow: Graph
    out_dir: Path
    ui_workflow: dict[str, Any] | None = None
    common: dict[str, Any] = field(default_factory=dict)
    embedder: Any = None
    slots: int = 2
    job_timeout: float = JOB_TIMEOUT_S
    """Seconds from queueing to the end of execution; past it the job is cancelled on the server and failed."""
    request_timeout: float = REQUEST_TIMEOUT_S
    """Seconds one HTTP request may go unanswered before the server is asked whether it is still alive."""
    progress: bool = True


def upload_name(job: Job) -> str:
    return f"{UPLOAD_SUBFOLDER}/{job.job_id}{job.sketch.suffix.lower()}"


def job_graph(settings: BatchSettings, job: Job) -> Graph:
    """The API graph the server gets for ``job`` (sketch named as it will be uploaded).

    Raises:
        WorkflowError: a job field this workflow has no input for.
    """
    return bind(settings.workflow, {**settings.common, **job.fields(), "sketch": upload_name(job),
                                    "filename_prefix": f"{UPLOAD_SUBFOLDER}/{job.job_id}"})


@dataclass
class Fetched:
    """What a finished job sends back: the graph it ran (as queued), its UI form, and the image bytes."""

    graph: Graph
    ui: dict[str, Any] | None
    render: bytes
    render_name: str
    reference: bytes | None = None
    reference_name: str | None = None


def new_manifest(job: Job, server: str, prompt_id: str | None) -> dict[str, Any]:
    """A job's manifest before it runs: what was asked, where it runs; the rest is filled as it ends."""
    return {
        "job_id": job.job_id, "sketch": str(job.sketch), **job.fields(), "server": server, "status": None,
        "prompt_id": prompt_id, "styles": [], "style_scores": [], "output": None,
        "reference_file": None, "error": None, "structure_fidelity": None, "style_similarity": None,
        "timings": {},
    }


class JobRunner:
    """One job at a time on one server, over its own websocket (ComfyUI sends progress to its client id)."""

    def __init__(self, url: str, settings: BatchSettings, object_info: Mapping[str, Any],
                 prompt_ids: Mapping[str, str], found: Mapping[str, str], status: Callable[[str], None],
                 given_up: Callable[[], bool] = lambda: False) -> None:
        """``prompt_ids``: job id -> prompt id; ``found``: job id -> "queued"/"rendered" for jobs this server has;
        ``given_up``: whether the caller has stopped counting on this server (a job in flight there then ends)."""
        self.client = ComfyClient(url, timeout=settings.request_timeout)
        self.url, self.settings, self.object_info = url, settings, object_info
        self.prompt_ids, self.found, self.status, self.given_up = prompt_ids, found, status, given_up
        self.ws: Any = None

    def fetch(self, job: Job, manifest: dict[str, Any], sketch: bytes | None = None) -> Fetched:
        """Run ``job`` on this server to its end and download what it made; timings go into ``manifest``.

        ``sketch``: the sketch file's bytes, where the job's path is not on this machine (read from it otherwise).

        Raises:
            ComfyClientError: the job failed (``JobFailed``, ``PromptRejected``...) or the server did not answer
                (``ServerUnreachable``).
        """
        timings = manifest["timings"]
        prompt_id = manifest["prompt_id"]
        graph = job_graph(self.settings, job)
        ui = bind_ui_values(self.settings.ui_workflow, graph, self.object_info) if self.settings.ui_workflow else None
        mark = time.perf_counter()
        earlier = self.found.get(job.job_id)
        if earlier is not None:
            # An earlier run of this batch queued it here and died: collect that job instead of rendering again.
            try:
                entry = self._follow(prompt_id, job.job_id, use_ws=False)
                timings["wait_s"] = round(time.perf_counter() - mark, 4)
                fetched = self._download(entry, graph, ui, manifest)
                manifest["resumed_from_server"] = earlier
                return fetched
            except (ServerUnreachable, ServerDown, JobFailed):
                raise
            except ComfyClientError as exc:  # e.g. its render was deleted from the server since: render it again
                logger.info("Sketch RAG batch: job %s from an earlier run cannot be collected (%s); rendering it "
                            "again.", job.job_id, exc)
        self._connect()
        data = job.sketch.read_bytes() if sketch is None else sketch
        uploaded = self.client.upload_image(data, Path(upload_name(job)).name, subfolder=UPLOAD_SUBFOLDER)
        if uploaded != upload_name(job):  # the server renamed it: bind the name it chose
            graph = bind(graph, {"sketch": uploaded})
        timings["upload_s"] = round(time.perf_counter() - mark, 4)
        mark = time.perf_counter()
        self.client.queue_prompt(graph, {"extra_pnginfo": {"workflow": ui}} if ui else None, prompt_id)
        timings["queue_s"] = round(time.perf_counter() - mark, 4)
        mark = time.perf_counter()
        entry = self._follow(prompt_id, job.job_id, use_ws=True, timings=timings)
        timings["wait_s"] = round(time.perf_counter() - mark, 4)
        return self._download(entry, graph, ui, manifest)

    # -- following a job ----------------------------------------------------------------------------------
    def _connect(self) -> Any:
        import websocket

        if self.ws is None:
            parts = urllib.parse.urlsplit(self.url)
            scheme = "wss" if parts.scheme == "https" else "ws"
            try:
                self.ws = websocket.create_connection(
                    f"{scheme}://{parts.netloc}/ws?clientId={self.client.client_id}", timeout=WS_POLL_S)
            except (OSError, websocket.WebSocketException) as exc:
                raise ServerUnreachable(f"websocket to {self.url} failed: {exc}") from exc
        return self.ws

    def _close_ws(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:  # closing a broken socket: nothing left to report
                pass
            self.ws = None

    def _follow(self, prompt_id: str, job_id: str, use_ws: bool, timings: dict[str, Any] | None = None
                ) -> dict[str, Any]:
        """Wait for ``prompt_id`` to end; returns its history entry.

        The websocket gives the end at once and the progress; ``/history`` (checked every ``WS_POLL_S``, and
        every ``HISTORY_POLL_S`` without a socket) is the authority, so a missed or garbled message costs a poll.

        Raises:
            JobFailed: it ended in an error or interruption, or was cancelled after ``job_timeout``.
            ServerDown: the board says this server is down.
            ServerUnreachable: the server did not answer.
        """
        import websocket

        queued = time.perf_counter()
        exec_started: float | None = None
        deadline = time.monotonic() + self.settings.job_timeout
        next_check = time.monotonic() + (WS_POLL_S if use_ws else 0.0)
        while time.monotonic() < deadline:
            message: Any = None
            if use_ws and self.ws is not None:
                try:
                    message = self.ws.recv()
                except websocket.WebSocketTimeoutException:
                    message = None
                except (OSError, websocket.WebSocketException) as exc:
                    logger.info("Sketch RAG batch: websocket to %s dropped (%s); following %s on /history.",
                                self.url, exc, job_id)
                    self._close_ws()
            elif time.monotonic() < next_check:
                time.sleep(max(0.0, next_check - time.monotonic()))
            if isinstance(message, str):
                kind, data = _event(message)
                if data.get("prompt_id") == prompt_id:
                    if kind == "execution_start":
                        exec_started = time.perf_counter()
                    elif kind == "progress":
                        self.status(f"{job_id[:24]} step {data.get('value')}/{data.get('max')}")
                    elif kind in ("execution_error", "execution_interrupted") or (
                            kind == "executing" and data.get("node") is None):
                        # Sent after ComfyUI wrote the history entry (execution_success comes before it).
                        next_check = 0.0
            if time.monotonic() >= next_check:
                if self.given_up():
                    raise ServerDown(f"{self.url} was marked down while job {job_id} ran there")
                entry = finished_entry(prompt_id, self.client.history(prompt_id))  # JobFailed if it failed
                if entry is not None:
                    if timings is not None:
                        finished = time.perf_counter()
                        timings["queue_wait_s"] = round((exec_started or finished) - queued, 4)
                        timings["render_s"] = round(finished - (exec_started or queued), 4)
                        timings.update(_server_times(entry))
                    return entry
                polling = not use_ws or self.ws is None
                next_check = time.monotonic() + (HISTORY_POLL_S if polling else WS_POLL_S)
        running = self.client.cancel(prompt_id)
        raise JobFailed(prompt_id, "?", f"did not finish within {self.settings.job_timeout:.0f} s; it was "
                        f"{'interrupted and ' if running else ''}removed from {self.url}'s queue. Raise the job "
                        "timeout or check the server.")

    # -- collecting its outputs ---------------------------------------------------------------------------
    def _download(self, entry: dict[str, Any], graph: Graph, ui: dict[str, Any] | None,
                  manifest: dict[str, Any]) -> Fetched:
        outputs, timings = entry.get("outputs", {}), manifest["timings"]

        def images(node_ids: list[str]) -> list[OutputImage]:
            found = []
            for node_id in node_ids:
                found.extend(self.client.output_images(entry, node_id))
            return found

        mark = time.perf_counter()
        manifest["styles"], manifest["style_scores"] = style_results(graph, outputs)
        renders = images(nodes_titled(graph, "SaveImage"))
        if not renders:
            raise JobFailed(manifest["prompt_id"], "SaveImage", "the job finished without an image")
        references = images(nodes_titled(graph, "PreviewImage", "style reference"))
        fetched = Fetched(graph, ui, self.client.view(renders[0]), renders[0].filename)
        if references:
            fetched.reference, fetched.reference_name = self.client.view(references[0]), references[0].filename
        timings["download_s"] = round(time.perf_counter() - mark, 4)
        return fetched


class Worker(JobRunner):
    """A ``--server`` worker thread: takes jobs from the board for its server and ends each one there."""

    def __init__(self, url: str, settings: BatchSettings, object_info: Mapping[str, Any], board: JobBoard,
                 prompt_ids: Mapping[str, str], found: Mapping[str, str], record: Callable[[dict[str, Any]], None],
                 status: Callable[[str], None]) -> None:
        super().__init__(url, settings, object_info, prompt_ids, found, status, lambda: board.is_down(url))
        self.board, self.record = board, record

    def run(self) -> None:
        try:
            while (job := self.board.take(self.url)) is not None:
                self._one(job)
        finally:
            self._close_ws()

    def _one(self, job: Job) -> None:
        try:
            manifest = self.render(job)
        except ServerDown as exc:
            if self.board.server_down(self.url, job):
                logger.warning("Sketch RAG batch: %s stopped answering (%s); its jobs go to the other servers.",
                               self.url, exc)
            return
        write_manifest(self.settings, job, manifest)
        if self.board.finish(job):
            self.record(manifest)

    def render(self, job: Job) -> dict[str, Any]:
        """Run ``job`` to its end and write its outputs; returns its manifest (``error`` set when it failed).

        Raises:
            ServerDown: this server stopped answering (the job did not end).
        """
        manifest = new_manifest(job, self.url, self.prompt_ids.get(job.job_id))
        started = time.perf_counter()
        fetched = None
        try:
            fetched = self.fetch(job, manifest)
        except ServerUnreachable as exc:
            if self.board.is_down(self.url) or not self.client.alive(min(5.0, self.settings.request_timeout)):
                raise ServerDown(str(exc)) from exc
            manifest["error"] = f"{exc} (the server itself still answers, so only this job failed)"
        except ServerDown:
            raise
        except (JobFailed, PromptRejected, ComfyClientError) as exc:
            manifest["error"] = str(exc)
        except Exception as exc:  # whatever else goes wrong inside one job fails that job only
            logger.warning("Sketch RAG batch: job %s failed unexpectedly", job.job_id, exc_info=True)
            manifest["error"] = f"{type(exc).__name__}: {exc}"
        finish_job(self.settings, job, manifest, fetched)
        manifest["timings"]["total_s"] = round(time.perf_counter() - started, 4)
        return manifest


clip_lock = threading.Lock()
"""The CLIP model is shared by the threads that score; its own lock keeps progress updates from waiting on it."""


def _decode(data: bytes, name: str, what: str, prompt_id: str) -> Image.Image:
    try:
        decoded = Image.open(io.BytesIO(data))
        decoded.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise JobFailed(prompt_id, "SaveImage", f"the {what} {name} the server sent ({len(data)} bytes) is not an "
                        f"image Pillow can read ({exc})") from exc
    return decoded


def finish_job(settings: BatchSettings, job: Job, manifest: dict[str, Any], fetched: Fetched | None
               ) -> dict[str, Any]:
    """Write what ``fetched`` holds into the output folder, score it and complete ``manifest``; returns it.

    Whatever goes wrong here fails the job (its reason in the manifest). ``fetched`` is None for a job that
    already failed on its server.
    """
    if fetched is not None and not manifest["error"]:
        try:
            _write_outputs(settings, job, manifest, fetched)
        except Exception as exc:  # a render that does not decode, a full disk: this job fails, the batch goes on
            logger.warning("Sketch RAG batch: job %s failed while its outputs were written", job.job_id,
                           exc_info=not isinstance(exc, (JobFailed, OSError)))
            manifest["error"] = str(exc) if isinstance(exc, JobFailed) else f"{type(exc).__name__}: {exc}"
            manifest["output"] = None
    manifest["status"] = "failed" if manifest["error"] else "done"
    return manifest


def _write_outputs(settings: BatchSettings, job: Job, manifest: dict[str, Any], fetched: Fetched) -> None:
    out_dir, timings = settings.out_dir, manifest["timings"]
    render = _decode(fetched.render, fetched.render_name, "render", manifest["prompt_id"])
    reference = None
    if fetched.reference is not None:
        reference = _decode(fetched.reference, fetched.reference_name or "?", "style reference",
                            manifest["prompt_id"])
    mark = time.perf_counter()
    output = Path("renders") / f"{job.job_id}.png"
    write_png(out_dir / output, render, fetched.graph, fetched.ui)
    if reference is not None:
        reference_file = Path("references") / f"{job.job_id}.png"
        (out_dir / reference_file).parent.mkdir(parents=True, exist_ok=True)
        reference.save(out_dir / reference_file, compress_level=1)
        manifest["reference_file"] = str(reference_file)
    timings["write_s"] = round(time.perf_counter() - mark, 4)
    mark = time.perf_counter()
    from ..imaging import read_image

    pixels = np.asarray(render.convert("RGB"), dtype=np.float32) / 255.0
    manifest["structure_fidelity"] = round(structure_fidelity(read_image(job.sketch), pixels), 4)
    if settings.embedder is not None and reference is not None:
        with clip_lock:
            manifest["style_similarity"] = round(style_similarity(settings.embedder, render, reference), 4)
    timings["score_s"] = round(time.perf_counter() - mark, 4)
    manifest["output"] = str(output)  # last: a manifest names an output only once everything is on disk


def write_manifest(settings: BatchSettings, job: Job, manifest: dict[str, Any]) -> None:
    """The job's manifest, atomically; a manifest that cannot be written fails the job (in the returned record)."""
    try:
        write_json(manifest_path(settings.out_dir, job.job_id), manifest)
    except OSError as exc:
        manifest["error"] = f"the manifest could not be written ({exc}); free space or fix --out, then re-run"
        manifest["status"] = "failed"


def _server_times(entry: dict[str, Any]) -> dict[str, float]:
    """From the history entry's own timestamps: how long the server executed the job, and how long after its
    end this client had the entry (the cost of noticing the end: websocket, /history)."""
    stamps = {kind: data.get("timestamp") for kind, data in (entry.get("status") or {}).get("messages", [])
              if isinstance(data, dict)}
    start, end = stamps.get("execution_start"), stamps.get("execution_success")
    if not isinstance(start, (int, float)) or not isinstance(end, (int, float)):
        return {}
    return {"server_exec_s": round((end - start) / 1000.0, 4), "end_seen_after_s": round(time.time() - end / 1000.0, 4)}


def _event(message: str) -> tuple[Any, dict[str, Any]]:
    """A websocket text frame as ``(type, data)``; a frame that is not a JSON object reads as no event."""
    try:
        event = json.loads(message)
    except ValueError:
        logger.debug("Sketch RAG batch: ignoring a websocket frame that is not JSON: %.80r", message)
        return None, {}
    if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
        return None, {}
    return event.get("type"), event["data"]
