"""What a worker makes of what a server sends: garbled websocket frames and the history entry's verdict."""

from __future__ import annotations

import pytest

from sketch_rag.cli.batch_worker import _event
from sketch_rag.cli.comfyui_client import JobFailed, finished_entry


@pytest.mark.parametrize("frame", ["", "not json {", "[1, 2]", '"text"', '{"type": "progress", "data": [1]}',
                                   '{"type": "executing"}'])
def test_a_garbled_websocket_frame_reads_as_no_event(frame: str) -> None:
    assert _event(frame) == (None, {})


def test_a_well_formed_frame_gives_its_type_and_data() -> None:
    assert _event('{"type": "executing", "data": {"node": null, "prompt_id": "p"}}') == (
        "executing", {"node": None, "prompt_id": "p"})


def test_the_history_entry_decides_done_still_running_or_failed_with_the_servers_reason() -> None:
    assert finished_entry("p", None) is None
    assert finished_entry("p", {"status": None}) is None
    done = {"status": {"status_str": "success", "completed": True, "messages": []}, "outputs": {}}
    assert finished_entry("p", done) is done
    error = {"status": {"status_str": "error", "completed": False, "messages": [
        ["execution_start", {}], ["execution_error", {"node_type": "KSampler", "exception_message": "boom"}]]}}
    with pytest.raises(JobFailed, match="failed in KSampler: boom"):
        finished_entry("p", error)
    interrupted = {"status": {"status_str": "error", "completed": False, "messages": [
        ["execution_interrupted", {"node_type": "SketchRAGHybridSampler"}]]}}
    with pytest.raises(JobFailed, match="interrupted on the server"):
        finished_entry("p", interrupted)
