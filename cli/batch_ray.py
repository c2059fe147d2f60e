"""The ``--ray`` placement of ``sketch-rag batch``: the same jobs, placed and fed by Ray Data on a cluster.

What differs from ``--server`` is only where jobs run. The job file, the pre-flight, the job and prompt ids,
the manifests (written on the driver, atomically, by ``batch_worker.finish_job``), ``--skip-bad``, resume,
``batch.json`` and the exit codes are ``batch.py``'s, shared by both placements.

On the cluster, Ray Data's ``map_batches`` runs ``ComfyActor`` on an actor pool (``ActorPoolStrategy``), one
actor per GPU (``num_gpus=1``; a CPU count in tests). Each actor owns a ComfyUI on its node's 127.0.0.1: one
already answering on the actor's port, or one it starts there (``die_with_parent``: it ends with the actor).
The actor renders each job through the same HTTP prompt API and workflow as ``--server``
(``batch_worker.JobRunner``), ``slots`` jobs at once as ``--server`` keeps per server (so its ComfyUI
never waits for the next job's upload), and sends the render back through Ray. Scheduling, placement, backpressure and
retries are Ray's: a job lost with its node is retried by Ray's actor and task fault tolerance
(``max_restarts`` / ``max_task_retries``, Ray Data's defaults: without limit) on an actor on a surviving
node. There is no job board, health rule or re-queue of ours on this path.

Pre-flight on this path: the job file is checked on the driver as for ``--server``; every job's graph is
checked by each actor against its own ComfyUI's node types when the actor starts, before it queues
anything; a problem there makes every job of that actor come back refused, and the driver stops the batch
with every problem listed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PreflightError, SketchRagError
from .batch import BatchResult, Progress, check_jobs, end_batch, find_earlier_jobs, plan_batch, workflow_types
from .batch_jobs import BadRow, Job
from .batch_worker import BatchSettings, Fetched, JobRunner, finish_job, new_manifest, write_manifest
from .comfyui_client import ComfyClient, ComfyClientError, JobFailed, PromptRejected, ServerUnreachable

logger = logging.getLogger(__name__)

RAY_INSTALL = 'pip install "sketch-rag[ray]"'
PORT_ENV = "SKETCH_RAG_COMFYUI_PORT"
"""Set on a node (e.g. ``SKETCH_RAG_COMFYUI_PORT=8190 ray start ...``) to move its actors' ComfyUI ports."""
CONNECT_TIMEOUT_S = 10.0


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or the one install line when it is missing."""
    try:
        import ray
        import ray.data  # noqa: F401 - the placement needs Ray Data, not only Ray core
    except ImportError as exc:
        raise SketchRagError(f"--ray needs Ray, which is not installed here ({exc.name}); install it with: "
                             f"{RAY_INSTALL}") from exc
    return ray


@dataclass(frozen=True)
class ComfySpec:
    """How an actor gets its ComfyUI on its node: the one answering on its port, else one it starts."""

    comfyui_dir: Path | None = None
    """The ComfyUI folder (with the pack in custom_nodes/) on every node; None: only use a running one."""
    port: int = 8188
    """The first actor's port on a node; an actor uses ``port`` + its GPU's index (``PORT_ENV`` overrides)."""
    base_dir: Path | None = None
    """ComfyUI's ``--base-directory`` (models, input, output, custom_nodes), if not the ComfyUI folder."""
    cpu: bool = False
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RayPlacement:
    """Where ``--ray`` runs: the cluster, the actor count and what each actor reserves."""

    address: str | None = None
    """None: start a local Ray (on 127.0.0.1); ``auto``, ``host:port`` or ``ray://host:port``: join a cluster."""
    actors: int | None = None
    """None: one per ``num_gpus`` GPUs of the cluster."""
    num_gpus: float = 1.0
    num_cpus: float = 1.0
    resources: dict[str, float] = field(default_factory=dict)
    comfy: ComfySpec = field(default_factory=ComfySpec)


@dataclass
class Outcome:
    """What an actor sends back for one job (pickled through Ray): its manifest, its images, or a refusal."""

    job_id: str
    node: str
    manifest: dict[str, Any] | None = None
    fetched: Fetched | None = None
    refused: list[str] = field(default_factory=list)


class ComfyActor:
    """Ray Data's callable class: one per actor, owning a ComfyUI on its node, one job per call."""

    def __init__(self, settings: BatchSettings, jobs: list[Job], comfy: ComfySpec) -> None:
        import ray

        self.node = f"{socket.gethostname()} {ray.get_runtime_context().get_node_id()[:8]}"
        self.server: Any = None
        self.url = self._comfyui(comfy, ray.get_gpu_ids())
        client = ComfyClient(self.url, timeout=settings.request_timeout)
        info = client.node_info(workflow_types(settings))
        prompt_ids, self.refused = check_jobs(settings, jobs, {f"node {self.node} ({self.url})": info})
        found = {job_id: state for job_id, (_, state) in find_earlier_jobs([client], prompt_ids).items()}
        self._runner_args = (self.url, settings, info, prompt_ids, found, lambda _text: None)
        self._threads = threading.local()  # Ray runs ``slots`` calls at once, each on its own thread and socket
        self.client = client

    @property
    def runner(self) -> JobRunner:
        if not hasattr(self._threads, "runner"):
            self._threads.runner = JobRunner(*self._runner_args)
        runner: JobRunner = self._threads.runner
        return runner

    def _comfyui(self, comfy: ComfySpec, gpu_ids: Sequence[Any]) -> str:
        """The URL of this actor's ComfyUI on 127.0.0.1: found answering on its port, or started there."""
        from .comfyui_server import start_server

        index = int(gpu_ids[0]) if gpu_ids else 0
        port = int(os.environ.get(PORT_ENV) or comfy.port) + index
        url = f"http://127.0.0.1:{port}"
        if ComfyClient(url).alive(2.0):
            return url
        if comfy.comfyui_dir is None:
            raise SketchRagError(f"No ComfyUI answers at {url} on node {self.node}, and no --comfyui-dir was given "
                                 "to start one; start one there or give the ComfyUI folder every node has.")
        extra: tuple[str, ...] = ("--base-directory", str(comfy.base_dir)) if comfy.base_dir else ()
        log_dir = comfy.base_dir or comfy.comfyui_dir
        # It inherits the actor's environment: CUDA_VISIBLE_DEVICES, set by Ray, shows it this actor's GPU only.
        self.server = start_server(comfy.comfyui_dir, port=port, cpu=comfy.cpu, extra_args=extra, env=comfy.env,
                                   log_path=log_dir / f"comfyui-ray-{port}.log", die_with_parent=True)
        return self.server.url

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[bytes]]:
        return {"outcome": [pickle.dumps(self._one(*pickle.loads(item))) for item in batch["job"]]}

    def _one(self, job: Job, sketch: bytes) -> Outcome:
        if self.refused:
            return Outcome(job.job_id, self.node, refused=self.refused)
        runner = self.runner
        manifest = new_manifest(job, f"{self.url} on {self.node}", runner.prompt_ids.get(job.job_id))
        started = time.perf_counter()
        fetched = None
        try:
            fetched = runner.fetch(job, manifest, sketch)
        except ServerUnreachable as exc:
            if (self.server is not None and not self.server.is_running()) or not self.client.alive(5.0):
                # Its ComfyUI is gone, so this actor is: it exits, and Ray restarts it and retries the job.
                logger.error("Sketch RAG batch: the ComfyUI of an actor on node %s is gone (%s); the actor exits.",
                             self.node, exc)
                os._exit(1)
            manifest["error"] = f"{exc} (the server itself still answers, so only this job failed)"
        except (JobFailed, PromptRejected, ComfyClientError) as exc:
            manifest["error"] = str(exc)
        except Exception as exc:  # whatever else goes wrong inside one job fails that job only
            logger.warning("Sketch RAG batch: job %s failed unexpectedly", job.job_id, exc_info=True)
            manifest["error"] = f"{type(exc).__name__}: {exc}"
        manifest["timings"]["remote_s"] = round(time.perf_counter() - started, 4)
        return Outcome(job.job_id, self.node, manifest=manifest, fetched=fetched)


def connect(ray: Any, address: str | None) -> None:
    """``ray.init`` for ``address``; an address that does not answer is a ``PreflightError`` within seconds.

    A local Ray (no address) is bound to 127.0.0.1 with no dashboard. Ray's and Ray Data's usage reports are
    off unless the environment turns them on (a cluster's own are set where it was started: ``ray start``).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_USAGE_DISABLED", "1")
    quiet: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": True}
    if address is None:
        ray.init(address="local", _node_ip_address="127.0.0.1", **quiet)  # never an instance found running
        return
    if address != "auto":
        parts = urllib.parse.urlsplit(address if "://" in address else f"tcp://{address}")
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            host, port = None, None
        if not host or not port:
            raise PreflightError(f"--ray {address}: give auto, host:port or ray://host:port.")
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            raise PreflightError(f"No Ray cluster answers at {address} ({exc}); start one with `ray start --head` "
                                 "on that machine, or fix --ray. Nothing was queued.") from exc
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        raise PreflightError(f"Cannot join the Ray cluster at {address} ({exc}); start one with "
                             "`ray start --head`, or fix --ray. Nothing was queued.") from exc


def _alive_nodes(ray: Any) -> dict[str, str]:
    """Node id -> "hostname id8" (as actors name their node) of every node alive now."""
    return {n["NodeID"]: f"{n.get('NodeManagerHostname') or n['NodeManagerAddress']} {n['NodeID'][:8]}"
            for n in ray.nodes() if n.get("Alive")}


def _actor_count(ray: Any, placement: RayPlacement) -> int:
    if placement.actors is not None:
        return placement.actors
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if placement.num_gpus <= 0 or gpus < placement.num_gpus:
        raise PreflightError(f"The Ray cluster has {gpus:g} GPU(s), not enough for one actor of "
                             f"{placement.num_gpus:g}; add GPU nodes, or give --ray-actors N (with "
                             "--ray-gpus-per-actor 0 to run on CPUs).")
    return int(gpus // placement.num_gpus)


def _inputs(jobs: Sequence[Job]) -> list[dict[str, bytes]]:
    """One row per job: the job and its sketch's bytes (the sketch file is on the driver only)."""
    sketches: dict[Path, bytes] = {}
    rows = []
    for job in jobs:
        if job.sketch not in sketches:
            sketches[job.sketch] = job.sketch.read_bytes()
        rows.append({"job": pickle.dumps((job, sketches[job.sketch]))})
    return rows


def run_ray_batch(settings: BatchSettings, jobs: Sequence[Job], placement: RayPlacement,
                  bad_rows: Sequence[BadRow] = ()) -> BatchResult:
    """Render every job not rendered yet on Ray; see the module docstring.

    Raises:
        PreflightError: the cluster does not answer, or an actor's ComfyUI refuses the jobs' graphs.
        SketchRagError: Ray is not installed.
    """
    ray = import_ray()
    result, todo, extra_rows = plan_batch(settings, jobs, bad_rows)
    if not todo:
        return end_batch(settings, result, extra_rows)
    connect(ray, placement.address)
    try:
        run_on_ray(ray, settings, todo, placement, result)
    finally:
        ray.shutdown()
    return end_batch(settings, result, extra_rows)


def run_on_ray(ray: Any, settings: BatchSettings, todo: Sequence[Job], placement: RayPlacement,
               result: BatchResult) -> None:
    """Feed ``todo`` through the actor pool on the connected cluster; every ended job is recorded in ``result``."""
    from ray.data import ActorPoolStrategy, DataContext

    DataContext.get_current().enable_progress_bars = False  # the batch's own bar counts jobs
    size = _actor_count(ray, placement)
    nodes_at_start = _alive_nodes(ray)
    dataset = ray.data.from_items(_inputs(todo), override_num_blocks=len(todo)).map_batches(
        ComfyActor, batch_size=1,
        # ``slots`` jobs in flight per actor, as per server with --server: its ComfyUI never waits for the next.
        compute=ActorPoolStrategy(size=size, max_concurrent_calls_per_actor=max(1, settings.slots)),
        # The actors score nothing (the driver does): the CLIP model, if any, stays here.
        fn_constructor_kwargs={"settings": dataclasses.replace(settings, embedder=None), "jobs": list(todo),
                               "comfy": placement.comfy},
        num_gpus=placement.num_gpus or None, num_cpus=placement.num_cpus, resources=placement.resources or None)
    by_id = {job.job_id: job for job in todo}
    progress = Progress(settings, result, len(todo))
    started = time.monotonic()
    per_node: dict[str, list[float]] = {}
    try:
        for outcome in _outcomes(dataset):
            job = by_id.pop(outcome.job_id, None)
            if job is None:
                logger.error("Sketch RAG batch: job %s came back twice; the second is ignored.", outcome.job_id)
                continue
            if outcome.refused:
                raise PreflightError(f"{len(outcome.refused)} problem(s) found before queueing on node "
                                     f"{outcome.node}; it queued nothing:\n  " + "\n  ".join(outcome.refused))
            assert outcome.manifest is not None
            manifest = finish_job(settings, job, outcome.manifest, outcome.fetched)
            write_manifest(settings, job, manifest)
            progress.record(manifest)
            per_node.setdefault(outcome.node, []).append(time.monotonic() - started)
    except PreflightError:
        raise
    except Exception as exc:  # Ray gave up (e.g. no node left for an actor): the rest stays unfinished
        logger.error("Sketch RAG batch: Ray ended the batch early: %s", exc)
    finally:
        progress.close()
    result.unfinished = list(by_id)
    alive = _alive_nodes(ray)
    lost = {name for node_id, name in nodes_at_start.items() if node_id not in alive}
    result.nodes = node_table(per_node, lost)


def _outcomes(dataset: Any) -> Iterator[Outcome]:
    for row in dataset.iter_rows():
        yield pickle.loads(row["outcome"])


def node_table(per_node: dict[str, list[float]], lost: set[str]) -> list[dict[str, Any]]:
    """Per node: jobs it ended, jobs/min over its time from the batch's start to its last job, whether lost."""
    rows = []
    for node in sorted(set(per_node) | lost):
        ends = per_node.get(node, [])
        rate = 60.0 * len(ends) / max(ends) if ends and max(ends) > 0 else 0.0
        rows.append({"node": node, "jobs": len(ends), "jobs_per_min": round(rate, 2), "lost": node in lost})
    return rows


def format_node_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'node':<32} {'jobs':>6} {'jobs/min':>9}  state"]
    lines.extend(f"{r['node']:<32} {r['jobs']:>6} {r['jobs_per_min']:>9.2f}  {'LOST' if r['lost'] else 'ok'}"
                 for r in rows)
    return "\n".join(lines)
