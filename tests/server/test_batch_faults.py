"""Faults injected into real batch runs: a poison sketch, a job that fails on the server, a server that hangs,
and the batch client itself killed and re-run. Every job ends once; nothing is rendered twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

import sketch_rag
from sketch_rag.cli.batch import BatchSettings, read_manifests, run_batch
from sketch_rag.cli.batch_jobs import read_jobs
from sketch_rag.cli.batch_worker import UPLOAD_SUBFOLDER
from sketch_rag.cli.comfyui_client import ComfyClient
from sketch_rag.cli.main import main
from sketch_rag.cli.workflows import load_api_workflow, load_ui_workflow

FAST_ARGS = ["--tiny-models", "--steps", "2", "--resolution", "64", "--style-resolution", "64", "--height", "64",
             "--no-progress"]


def _history(comfy: ComfyClient) -> dict[str, Any]:
    return comfy.all_history()


def _server_renders(base: Path, job_id: str) -> int:
    """How many times the server's SaveImage wrote this job's render (a second render gets a second file)."""
    return len(list((base / "output" / UPLOAD_SUBFOLDER).glob(f"{job_id}_*.png")))


def _copy(sketch: Path, folder: Path, name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (name or sketch.name)
    target.write_bytes(sketch.read_bytes())
    return target


def _settings(out: Path, fields: dict[str, Any], **limits: Any) -> BatchSettings:
    return BatchSettings(workflow=load_api_workflow(), out_dir=out, ui_workflow=load_ui_workflow(), common=fields,
                         slots=2, progress=False, **limits)


def test_a_truncated_sketch_stops_the_batch_before_queueing_and_skip_bad_renders_the_rest(
        comfy: ComfyClient, tmp_path: Path, example_sketches: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "sketches"
    good = [_copy(s, folder) for s in example_sketches[:2]]
    data = good[0].read_bytes()
    (folder / "poison.png").write_bytes(data[: len(data) // 2])  # opens fine, half its pixels missing
    path = tmp_path / "jobs.csv"
    path.write_text("sketch,prompt\n" + "".join(f"sketches/{p.name},poison test\n" for p in good)
                    + "sketches/poison.png,poison test\n")
    out = tmp_path / "out"
    before = len(_history(comfy))

    assert main(["batch", str(path), "--out", str(out), "--server", comfy.url, *FAST_ARGS]) == 2
    err = capsys.readouterr().err
    assert "1 bad row(s); nothing was queued" in err and "line 4: sketch" in err and "damaged or truncated" in err
    assert len(_history(comfy)) == before and not out.exists()

    assert main(["batch", str(path), "--out", str(out), "--server", comfy.url, "--skip-bad", *FAST_ARGS]) == 1
    captured = capsys.readouterr()
    summary = json.loads(captured.out.splitlines()[0])
    assert (summary["done"], summary["failed"], summary["bad_rows"], summary["unfinished"]) == (2, 0, 1, 0)
    assert "skipped: line 4: sketch" in captured.err
    report = json.loads((out / "batch.json").read_text())
    assert [r["status"] for r in report] == ["done", "done", "skipped_bad_row"]
    assert report[2]["line"] == 4 and report[2]["sketch"].endswith("poison.png")
    assert len(_history(comfy)) == before + 2


def test_a_job_that_fails_on_the_server_fails_alone_with_its_reason_and_the_server_stays_in_use(
        comfy: ComfyClient, tmp_path: Path, example_sketches: list[Path], fast_fields: dict[str, Any]) -> None:
    folder = tmp_path / "sketches"
    for sketch in example_sketches[:2]:
        _copy(sketch, folder)
    wide = Image.new("L", (4096, 64), 255)  # a fine image; at height 64 the render would be 4096 px wide
    ImageDraw.Draw(wide).line((0, 32, 4095, 32), fill=0, width=3)
    wide.save(folder / "a_banner.png")  # sorts first: it fails while the others still wait
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps({"sketch": "sketches", "prompt": "server failure test"}) + "\n")
    out = tmp_path / "out"

    result = run_batch(_settings(out, fast_fields), read_jobs(path).jobs, [comfy.url])

    assert len(result.done) == 2 and len(result.failed) == 1 and not result.unfinished and not result.ok
    assert result.dead_servers == []
    failed = result.failed[0]
    assert Path(failed["sketch"]).name == "a_banner.png" and failed["status"] == "failed"
    assert "SketchRAGHybridSampler" in failed["error"] and "outside 64-2048 pixels a side" in failed["error"]
    on_disk = {m["job_id"]: m for m in read_manifests(out)}
    assert on_disk[failed["job_id"]]["error"] == failed["error"] and on_disk[failed["job_id"]]["output"] is None


def test_jobs_past_their_timeout_are_interrupted_and_removed_from_the_queue_then_failed(
        comfy: ComfyClient, tmp_path: Path, example_sketches: list[Path], fast_fields: dict[str, Any]) -> None:
    for sketch in example_sketches[:2]:
        _copy(sketch, tmp_path / "sketches")
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps({"sketch": "sketches", "prompt": "timeout test"}) + "\n")
    slow = {**fast_fields, "steps": 500}  # far longer than the 2 s the jobs are given

    result = run_batch(_settings(tmp_path / "out", slow, job_timeout=2.0), read_jobs(path).jobs, [comfy.url])

    assert len(result.failed) == 2 and not result.done and result.dead_servers == []
    for manifest in result.failed:
        assert "did not finish within 2 s" in manifest["error"] and "removed from" in manifest["error"]
    assert any("interrupted and removed" in m["error"] for m in result.failed)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (comfy.queue()["queue_running"] or comfy.queue()["queue_pending"]):
        time.sleep(0.1)
    assert comfy.queue() == {"queue_running": [], "queue_pending": []}, "a timed-out job is still on the server"
    for manifest in result.failed:  # neither ran to its end: interrupted, or never started
        entry = comfy.history(manifest["prompt_id"])
        assert entry is None or entry["status"]["status_str"] == "error"


@pytest.mark.slow
def test_a_server_that_hangs_mid_job_is_given_up_and_its_jobs_finish_on_the_other(
        comfy: ComfyClient, extra_server_factory: Any, tmp_path: Path, example_sketches: list[Path],
        fast_fields: dict[str, Any]) -> None:
    path = tmp_path / "jobs.jsonl"
    for sketch in example_sketches[:3]:
        _copy(sketch, tmp_path / "sketches")
    path.write_text(json.dumps({"sketch": "sketches", "prompt": "hang test"}) + "\n")
    out = tmp_path / "out"
    hung = extra_server_factory("hung")
    stopped: list[float] = []

    def stop_when_running() -> None:
        client, deadline = ComfyClient(hung.url, timeout=5), time.monotonic() + 240
        while time.monotonic() < deadline and not client.queue().get("queue_running"):
            time.sleep(0.02)
        hung.process.send_signal(signal.SIGSTOP)  # alive, port open, answers nothing
        stopped.append(time.monotonic())

    watcher = threading.Thread(target=stop_when_running, daemon=True)
    watcher.start()
    try:
        result = run_batch(_settings(out, fast_fields, request_timeout=3.0, job_timeout=120.0), read_jobs(path).jobs,
                           [hung.url, comfy.url])
        ended = time.monotonic()
        watcher.join()
    finally:
        hung.process.kill()  # a stopped process still dies of SIGKILL: it never finishes its job afterwards
        hung.process.wait(10)
    assert stopped and result.dead_servers == [hung.url]
    assert result.ok and len(result.done) == 3 and {m["server"] for m in read_manifests(out)} == {comfy.url}
    # Given up after a 3 s request timeout and a failed /system_stats; the rest is rendering on the other server.
    assert ended - stopped[0] < 60, f"the batch ended {ended - stopped[0]:.0f} s after the server hung"


def test_the_batch_client_killed_and_re_run_collects_what_it_had_queued_and_renders_nothing_twice(
        comfy: ComfyClient, comfy_base_dir: Path, tmp_path: Path, example_sketches: list[Path],
        fast_fields: dict[str, Any]) -> None:
    folder = tmp_path / "sketches"
    for sketch in example_sketches[:2]:
        _copy(sketch, folder)
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps({"sketch": "sketches", "prompt": p}) + "\n"
                            for p in ("client kill test, ink", "client kill test, wash")))
    jobs = read_jobs(path).jobs
    out = tmp_path / "out"
    before = set(_history(comfy))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(sketch_rag.__file__).parent.parent), os.environ.get("PYTHONPATH", "")])}
    log = tmp_path / "client.log"
    with log.open("wb") as log_file:
        client = subprocess.Popen([sys.executable, "-m", "sketch_rag.cli.main", "batch", str(path), "--out",
                                   str(out), "--server", comfy.url, *FAST_ARGS], env=env, stdout=log_file,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and client.poll() is None:
            on_server = comfy.queue()
            if list(out.glob("manifests/*.json")) and (on_server["queue_running"] or on_server["queue_pending"]):
                break  # one job collected, another still on the server
            time.sleep(0.02)
        killed_with = len(list(out.glob("manifests/*.json")))
    finally:
        client.kill()  # SIGKILL: no cleanup, jobs left queued or rendered on the server
        client.wait(10)
    assert 1 <= killed_with < 4, log.read_text()

    result = run_batch(_settings(out, fast_fields), jobs, [comfy.url])

    assert result.ok and len(result.done) + len(result.skipped) == 4
    assert result.resumed, "the re-run must collect what the killed client had queued"
    for job in jobs:
        assert _server_renders(comfy_base_dir, job.job_id) == 1, f"{job.job_id} rendered more than once"
    assert len(set(_history(comfy)) - before) == 4

