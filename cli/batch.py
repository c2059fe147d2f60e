"""Batch renders through ComfyUI's HTTP API: many sketch × prompt jobs over one or more servers.

What every placement shares is here: which jobs are left to do (``plan_batch``), each job's graph checked
against a server's node types and its deterministic prompt id (``check_jobs``), the progress bar and the
record of ended jobs (``Progress``), and ``batch.json`` at the end (``end_batch``). Two placements use them:
``run_batch`` below (``--server URL...``, servers the user runs) and ``batch_ray.run_ray_batch`` (``--ray``).

``run_batch`` checks everything first (``preflight``: every job's graph against every server, all problems
at once, nothing queued), then hands the jobs to worker threads (``batch_worker``: ``slots`` per server,
two keep a server's queue from running dry between jobs) through a job board (``batch_board``).

Every job ends exactly once: done, failed (the reason in its manifest), or unfinished (only when no server
is left answering). A server that stops answering has its jobs moved to the others; a job's own failure
never marks its server down. The manifest is written last, atomically: its presence is what makes a
re-run skip the job. A job's prompt id is derived from the graph it queues, so a re-run after the client
itself was killed finds the jobs it had already queued in a server's queue or history and collects them
instead of rendering them again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import PreflightError, WorkflowError
from .batch_board import JobBoard
from .batch_jobs import BadRow, Job
from .batch_output import is_done, manifest_path, read_manifests, write_report
from .batch_worker import JOB_TIMEOUT_S, UPLOAD_SUBFOLDER, BatchSettings, ServerDown, Worker, job_graph
from .comfyui_client import ComfyClient, ComfyClientError
from .workflows import nodes_titled, targets, validate_graph

logger = logging.getLogger(__name__)

__all__ = ["JOB_TIMEOUT_S", "UPLOAD_SUBFOLDER", "BatchResult", "BatchSettings", "Progress", "ServerDown",
           "check_jobs", "end_batch", "is_done", "manifest_path", "plan_batch", "preflight", "read_manifests",
           "run_batch", "workflow_types", "write_report"]


@dataclass
class BatchResult:
    done: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    dead_servers: list[str] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)
    """Rows of the job file left out by ``--skip-bad`` (listed in ``batch.json`` too)."""
    resumed: list[str] = field(default_factory=list)
    """Jobs an earlier, killed run had queued, collected from the server instead of queued again."""
    nodes: list[dict[str, Any]] = field(default_factory=list)
    """Ray placement: per node ``{"node", "jobs", "jobs_per_min", "lost"}``."""

    @property
    def ok(self) -> bool:
        """Every job of the job file is done: nothing failed, unfinished or left out."""
        return not self.failed and not self.unfinished and not self.bad_rows


def preflight(settings: BatchSettings, jobs: Sequence[Job], clients: Sequence[ComfyClient]
              ) -> tuple[list[ComfyClient], dict[str, Any], dict[str, str]]:
    """Check every job's graph against every reachable server's ``/object_info``; report all problems at once.

    Returns the reachable clients, one server's object_info and each job's prompt id (a hash of the graph it
    queues). Unreachable servers are dropped with a warning while at least one answers.

    Raises:
        PreflightError: no server answers, or any job's graph does not fit a server.
    """
    live: list[tuple[ComfyClient, dict[str, Any]]] = []
    unreachable = []
    # Only the node types the workflow uses: the full /object_info costs the server ~60 ms per batch.
    class_types = workflow_types(settings)
    for client in clients:
        try:
            live.append((client, client.node_info(class_types)))
        except ComfyClientError as exc:
            unreachable.append(f"{client.url}: {exc}")
    if not live:
        raise PreflightError("No ComfyUI server answered; start one (sketch-rag serve) or fix --server:\n  "
                         + "\n  ".join(unreachable))
    for line in unreachable:
        logger.warning("Sketch RAG batch: skipping a server that does not answer: %s", line)
    prompt_ids, problems = check_jobs(settings, jobs, {client.url: info for client, info in live})
    if problems:
        raise PreflightError(f"{len(problems)} problem(s) found before queueing; nothing was queued:\n  "
                             + "\n  ".join(problems))
    return [c for c, _ in live], live[0][1], prompt_ids


def workflow_types(settings: BatchSettings) -> set[str]:
    """The node types the workflow uses (what a pre-flight asks a server about)."""
    class_types = {str(node.get("class_type")) for node in settings.workflow.values()}
    class_types.update(str(node.get("type")) for node in (settings.ui_workflow or {}).get("nodes", []))
    return class_types


def check_jobs(settings: BatchSettings, jobs: Sequence[Job], infos: Mapping[str, Mapping[str, Any]]
               ) -> tuple[dict[str, str], list[str]]:
    """Each job's prompt id (a hash of the graph it queues), and every problem of every job's graph against
    each server's ``/object_info`` (``infos``: server name -> its node types), each problem once."""
    problems: list[str] = []
    if not nodes_titled(settings.workflow, "SaveImage"):
        problems.append("the workflow has no SaveImage node, so a job would produce no file; add one.")
    prompt_ids: dict[str, str] = {}
    workflow_errors: set[str] = set()
    seen: dict[str, set[str]] = {name: set() for name in infos}
    for job in jobs:
        try:
            graph = job_graph(settings, job)
        except WorkflowError as exc:  # the same for every job: report once
            workflow_errors.add(str(exc))
            continue
        # Same graph, same id: a re-run recognises the job in a server's queue or history (find_earlier_jobs).
        digest = hashlib.sha256(json.dumps(graph, sort_keys=True).encode()).hexdigest()
        prompt_ids[job.job_id] = str(uuid.UUID(digest[:32]))
        skip = targets(graph, "sketch")
        for name, info in infos.items():
            seen[name].update(validate_graph(graph, info, skip_values=skip))
    problems.extend(sorted(workflow_errors))
    for name, found in seen.items():
        problems.extend(f"{name}: {p}" for p in sorted(found))
    return prompt_ids, problems


def plan_batch(settings: BatchSettings, jobs: Sequence[Job], bad_rows: Sequence[BadRow]
               ) -> tuple[BatchResult, list[Job], list[dict[str, Any]]]:
    """The result so far (jobs done by an earlier run skipped), the jobs left to do (each once), and the
    ``batch.json`` rows of the bad rows left out."""
    result = BatchResult(bad_rows=list(bad_rows))
    extra_rows: list[dict[str, Any]] = [
        {"status": "skipped_bad_row", "line": row.line, "sketch": row.sketch, "error": row.reason}
        for row in bad_rows]
    todo: list[Job] = []
    for job in {job.job_id: job for job in jobs}.values():
        if is_done(settings.out_dir, job.job_id):
            result.skipped.append(job.job_id)
        else:
            todo.append(job)
    return result, todo, extra_rows


class Progress:
    """The tqdm bar over jobs done/failed, and the one place an ended job is added to the result."""

    def __init__(self, settings: BatchSettings, result: BatchResult, total: int) -> None:
        from tqdm import tqdm

        self.result = result
        self._lock = threading.Lock()
        self._bar = tqdm(total=total, unit="job", desc="sketch-rag batch", disable=not settings.progress)

    def record(self, manifest: dict[str, Any]) -> None:
        with self._lock:
            (self.result.failed if manifest.get("error") else self.result.done).append(manifest)
            if manifest.get("resumed_from_server"):
                self.result.resumed.append(manifest["job_id"])
            self._bar.update(1)
            self._bar.set_postfix(done=len(self.result.done), failed=len(self.result.failed), refresh=False)

    def status(self, text: str) -> None:
        with self._lock:
            self._bar.set_postfix_str(text, refresh=True)

    def close(self) -> None:
        self._bar.close()


def end_batch(settings: BatchSettings, result: BatchResult, extra_rows: list[dict[str, Any]]) -> BatchResult:
    """``batch.json`` and the contact sheet, with the unfinished jobs listed; returns ``result``."""
    extra_rows.extend({"status": "unfinished", "job_id": job_id, "error": "no server was left to render it; "
                       "re-run the batch when one is up"} for job_id in result.unfinished)
    write_report(settings.out_dir, extra_rows)
    return result


def find_earlier_jobs(clients: Sequence[ComfyClient], prompt_ids: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Jobs an earlier run already queued: job id -> (server, "queued" or "rendered").

    A job still in a server's queue, or in its history as completed, is collected from there rather than
    queued again; one that ended in an error is queued again (under the same prompt id).
    """
    by_prompt = {prompt_id: job_id for job_id, prompt_id in prompt_ids.items()}
    found: dict[str, tuple[str, str]] = {}
    for client in clients:
        try:
            queue_now = client.queue()
            history = client.all_history()
        except ComfyClientError as exc:
            logger.warning("Sketch RAG batch: cannot read %s's queue and history (%s); its earlier jobs, if any, "
                           "are queued again.", client.url, exc)
            continue
        for item in [*queue_now.get("queue_running", []), *queue_now.get("queue_pending", [])]:
            if len(item) > 1 and item[1] in by_prompt:
                found[by_prompt[item[1]]] = (client.url, "queued")
        for prompt_id, entry in history.items():
            status = entry.get("status") or {} if isinstance(entry, dict) else {}
            if prompt_id in by_prompt and status.get("completed") and status.get("status_str") == "success":
                found.setdefault(by_prompt[prompt_id], (client.url, "rendered"))
    return found


def run_batch(settings: BatchSettings, jobs: Sequence[Job], servers: Sequence[str],
              bad_rows: Sequence[BadRow] = ()) -> BatchResult:
    """Render every job not rendered yet; see the module docstring.

    ``bad_rows`` are job-file rows left out (``--skip-bad``): they are listed in the result and ``batch.json``.

    Raises:
        PreflightError: before anything is queued (see ``preflight``).
    """
    result, todo, extra_rows = plan_batch(settings, jobs, bad_rows)
    if not todo:
        return end_batch(settings, result, extra_rows)
    clients, object_info, prompt_ids = preflight(
        settings, todo, [ComfyClient(url, timeout=settings.request_timeout) for url in servers])
    earlier = find_earlier_jobs(clients, prompt_ids)
    if earlier:
        logger.info("Sketch RAG batch: %d job(s) were already queued or rendered by an earlier run; collecting "
                    "them instead of rendering again.", len(earlier))
    urls = [client.url for client in clients]
    board = JobBoard(todo, urls, {job_id: url for job_id, (url, _) in earlier.items()})
    progress = Progress(settings, result, len(todo))
    workers: list[Worker] = []
    for url in urls:
        found = {job_id: state for job_id, (where, state) in earlier.items() if where == url}
        workers.extend(Worker(url, settings, object_info, board, prompt_ids, found, progress.record, progress.status)
                       for _slot in range(max(1, settings.slots)))
    threads = [threading.Thread(target=w.run, name=f"sketch-rag-batch-{n}", daemon=True)
               for n, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    progress.close()
    result.dead_servers = board.down()
    result.unfinished = board.unfinished()
    return end_batch(settings, result, extra_rows)
