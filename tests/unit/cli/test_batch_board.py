"""The job board: a job handed back by a dying server is taken by a server whose workers had nothing to do."""

from __future__ import annotations

import threading
from pathlib import Path

from sketch_rag.cli.batch_board import JobBoard
from sketch_rag.cli.batch_jobs import Job


def _jobs(n: int) -> list[Job]:
    return [Job(sketch=Path(f"s{i}.png"), prompt="p", seed=i, sketch_sha256=f"{i:064x}") for i in range(n)]


def test_an_idle_servers_worker_waits_and_takes_the_job_a_dying_server_hands_back() -> None:
    job = _jobs(1)[0]
    board = JobBoard([job], ["http://a", "http://b"])
    assert board.take("http://b") == job  # b has the only job; a has nothing to do right now
    taken: list[Job | None] = []
    idle = threading.Thread(target=lambda: taken.append(board.take("http://a")))
    idle.start()
    idle.join(0.2)
    assert idle.is_alive(), "a's worker must wait while a job is still out on b, not leave"

    assert board.server_down("http://b", job) is True
    idle.join(5)
    assert taken == [job] and board.take("http://b") is None
    assert board.finish(job) and board.take("http://a") is None and board.unfinished() == []


def test_jobs_held_for_a_server_go_to_it_first_and_to_the_others_when_it_dies() -> None:
    first, second, third = _jobs(3)
    board = JobBoard([first, second, third], ["http://a", "http://b"], held={third.job_id: "http://b"})
    assert board.take("http://b") == third and board.take("http://a") == first
    board.server_down("http://b", third)
    assert board.take("http://a") == third and board.take("http://a") == second


def test_every_server_down_leaves_the_rest_unfinished_and_a_job_ends_only_once() -> None:
    first, second = _jobs(2)
    board = JobBoard([first, second], ["http://a"])
    job = board.take("http://a")
    assert job is not None and board.finish(job) and not board.finish(job)
    board.server_down("http://a")
    assert board.take("http://a") is None and board.unfinished() == [second.job_id]
    assert board.down() == ["http://a"]
