"""Batch renders through ComfyUI's HTTP API: many sketch × prompt jobs over one or more servers.

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
from collections.abc import Sequence
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

__all__ = ["JOB_TIMEOUT_S", "UPLOAD_SUBFOLDER", "BatchResult", "BatchSettings", "ServerDown", "is_done",
           "manifest_path", "preflight", "read_manifests", "run_batch", "write_report"]


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
    class_types = {str(node.get("class_type")) for node in settings.workflow.values()}
    class_types.update(str(node.get("type")) for node in (settings.ui_workflow or {}).get("nodes", []))
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
    problems: list[str] = []
    if not nodes_titled(settings.workflow, "SaveImage"):
        problems.append("the workflow has no SaveImage node, so a job would produce no file; add one.")
    prompt_ids: dict[str, str] = {}
    workflow_errors: set[str] = set()
    seen: dict[str, set[str]] = {client.url: set() for client, _ in live}
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
        for client, info in live:
            seen[client.url].update(validate_graph(graph, info, skip_values=skip))
    problems.extend(sorted(workflow_errors))
    for url, found in seen.items():
        problems.extend(f"{url}: {p}" for p in sorted(found))
    if problems:
        raise PreflightError(f"{len(problems)} problem(s) found before queueing; nothing was queued:\n  "
                             + "\n  ".join(problems))
    return [c for c, _ in live], live[0][1], prompt_ids


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
    from tqdm import tqdm

    out_dir = settings.out_dir
    result = BatchResult(bad_rows=list(bad_rows))
    extra_rows: list[dict[str, Any]] = [
        {"status": "skipped_bad_row", "line": row.line, "sketch": row.sketch, "error": row.reason}
        for row in bad_rows]
    unique = list({job.job_id: job for job in jobs}.values())
    todo: list[Job] = []
    for job in unique:
        if is_done(out_dir, job.job_id):
            result.skipped.append(job.job_id)
        else:
            todo.append(job)
    if not todo:
        write_report(out_dir, extra_rows)
        return result
    clients, object_info, prompt_ids = preflight(
        settings, todo, [ComfyClient(url, timeout=settings.request_timeout) for url in servers])
    earlier = find_earlier_jobs(clients, prompt_ids)
    if earlier:
        logger.info("Sketch RAG batch: %d job(s) were already queued or rendered by an earlier run; collecting "
                    "them instead of rendering again.", len(earlier))
    urls = [client.url for client in clients]
    board = JobBoard(todo, urls, {job_id: url for job_id, (url, _) in earlier.items()})
    lock = threading.Lock()
    bar = tqdm(total=len(todo), unit="job", desc="sketch-rag batch", disable=not settings.progress)

    def record(manifest: dict[str, Any]) -> None:
        with lock:
            (result.failed if manifest.get("error") else result.done).append(manifest)
            if manifest.get("resumed_from_server"):
                result.resumed.append(manifest["job_id"])
            bar.update(1)

    def status(text: str) -> None:
        with lock:
            bar.set_postfix_str(text, refresh=True)

    workers: list[Worker] = []
    for url in urls:
        found = {job_id: state for job_id, (where, state) in earlier.items() if where == url}
        workers.extend(Worker(url, settings, object_info, board, prompt_ids, found, record, status)
                       for _slot in range(max(1, settings.slots)))
    threads = [threading.Thread(target=w.run, name=f"sketch-rag-batch-{n}", daemon=True)
               for n, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    bar.close()
    result.dead_servers = board.down()
    result.unfinished = board.unfinished()
    extra_rows.extend({"status": "unfinished", "job_id": job_id, "error": "no server was left to render it; "
                       "re-run the batch when one is up"} for job_id in result.unfinished)
    write_report(out_dir, extra_rows)
    return result
