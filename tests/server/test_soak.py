"""A shorter run of ``bench/load.py`` in the suite: the whole team at once for about 45 s, then the audit.

Tab users, editors, render users, a small batch and every kind of bad input against the session's
server, all at once. No answer may be a 5xx, every bad input gets its 4xx, every answer about a
change tells the truth, every batch job is done exactly once, and the library audit is clean (every
added style listed and found by its own image, every trashed one in the trash with its record, no
orphan, every thumbnail served, index = folder = records). Latency and memory targets are the
benchmark's (figures, not tests); their values are printed here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from sketch_rag.bench.load import Server, run_load
from sketch_rag.cli.comfyui_server import ComfyServer

pytestmark = [pytest.mark.comfy, pytest.mark.slow]

SOAK_S = 45.0
BATCH_JOBS = 4


def test_a_team_at_once_for_45_s_loses_nothing_and_gets_no_server_error(
    comfy_server: ComfyServer, comfy_base_dir: Path, example_sketches: list[Path], tmp_path: Path
) -> None:
    server = Server(comfy_server.url, comfy_server.process.pid, comfy_base_dir / "comfyui.log", comfy_base_dir)
    figures = run_load(server, SOAK_S, BATCH_JOBS, example_sketches[:2], tmp_path)
    logging.getLogger(__name__).info("soak figures: %s", json.dumps(
        {k: figures[k] for k in ("routes", "statuses", "rss_mb", "search_p95_ratio")}))
    targets = figures["targets"]
    assert targets["no_5xx"], figures["server_errors"]
    assert targets["bad_input_answered"], figures["bad_input"]
    assert targets["answers_truthful"], figures["wrong_answers"]
    assert targets["batch_jobs_done_once"], figures["batch"]
    assert targets["audit_clean"], figures["audit"]["findings"]
    assert figures["renders_done"] > 0 and figures["audit"]["added"] > 0
