"""The batch's job board: which server takes which job next, and when the batch is over.

One condition variable over three facts: the jobs waiting (shared, or held for the server that already
has them from an earlier run), the jobs not yet ended, and the servers that stopped answering. Workers
wait while jobs are still out on other servers, because a dying server hands its job back: the batch
is over only when every job has ended, not when the waiting line is momentarily empty.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable, Mapping

from .batch_jobs import Job

logger = logging.getLogger(__name__)


class JobBoard:
    """Hands out jobs to server workers; each job ends exactly once, or stays unfinished when no server is left."""

    def __init__(self, jobs: Iterable[Job], servers: Iterable[str], held: Mapping[str, str] | None = None) -> None:
        """``held`` maps a job id to the server that already has that job (queued or rendered by an earlier run)."""
        held = held or {}
        self._changed = threading.Condition()
        self._shared: deque[Job] = deque()
        self._held: dict[str, deque[Job]] = {url: deque() for url in servers}
        self._outstanding: dict[str, Job] = {}
        self._down: set[str] = set()
        for job in jobs:
            self._outstanding[job.job_id] = job
            url = held.get(job.job_id)
            (self._held[url] if url in self._held else self._shared).append(job)

    def take(self, url: str) -> Job | None:
        """The next job for a worker of ``url``; blocks while jobs are out elsewhere; None when there is no more work.

        None also when ``url`` is down: its workers stop.
        """
        with self._changed:
            while True:
                if url in self._down or not self._outstanding:
                    return None
                if self._held[url]:
                    return self._held[url].popleft()
                if self._shared:
                    return self._shared.popleft()
                self._changed.wait()

    def finish(self, job: Job) -> bool:
        """Mark ``job`` ended (done or failed); False (and a log line) if it had ended already."""
        with self._changed:
            if self._outstanding.pop(job.job_id, None) is None:
                logger.error("Sketch RAG batch: job %s ended twice; the second end is ignored.", job.job_id)
                return False
            self._changed.notify_all()
            return True

    def server_down(self, url: str, job: Job | None = None) -> bool:
        """``url`` stopped answering: its held jobs, and ``job`` (its job in flight), go to the other servers.

        Returns whether this call is the one that marked it down (so it is reported once).
        """
        with self._changed:
            first = url not in self._down
            self._down.add(url)
            if job is not None and job.job_id in self._outstanding:
                self._shared.appendleft(job)
            self._shared.extend(self._held[url])
            self._held[url].clear()
            self._changed.notify_all()
            return first

    def is_down(self, url: str) -> bool:
        with self._changed:
            return url in self._down

    def down(self) -> list[str]:
        with self._changed:
            return sorted(self._down)

    def unfinished(self) -> list[str]:
        """Ids of the jobs that never ended (every server went down first)."""
        with self._changed:
            return list(self._outstanding)
