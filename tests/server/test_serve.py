"""``sketch-rag serve`` as a user starts it: ComfyUI comes up with the pack and stops on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sketch_rag.cli.comfyui_client import ComfyClient, ComfyClientError
from sketch_rag.cli.comfyui_server import free_port
from tests.helpers.paths import COMFYUI_HOME


def test_serve_starts_comfyui_with_the_pack_and_stops_it_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "sketch_rag.cli.main", "serve", "--cpu", "--port", str(port),
             "--comfyui-dir", str(COMFYUI_HOME)],
            stdout=out, stderr=subprocess.STDOUT,
        )
    client = ComfyClient(f"http://127.0.0.1:{port}", timeout=5)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                assert "SketchRAGCannySketchPreprocessor" in client.object_info()
                break
            except ComfyClientError:
                assert serve.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "serve did not bring ComfyUI up"
                time.sleep(0.5)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
    with pytest.raises(ComfyClientError):
        client.object_info()
