"""A ComfyUI client that records, from the websocket's execution events, which nodes ran and which were cached.

ComfyUI tells the client that queued a prompt ``execution_cached`` (the nodes served from its cache) and then
``executing`` for each node it runs, ending with ``executing`` of no node; ComfyUI core's own execution tests
(``tests/execution/test_execution.py``, ``RunResult.did_run``) read caching the same way. The server tier checks
ComfyUI's caching with these events instead of counting log lines or nudging an input to force a re-run.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import websocket

from sketch_rag.cli.comfyui_client import ComfyClient, ComfyClientError
from sketch_rag.cli.comfyui_server import ComfyServer
from tests.helpers.graphs import Graph, Node

END_EVENTS = frozenset({"execution_success", "execution_error", "execution_interrupted"})


@dataclass
class Run:
    """One finished prompt: its ``/history`` entry and what its execution events said."""

    prompt_id: str
    entry: dict[str, Any]
    ran: list[str] = field(default_factory=list)
    """Node ids ComfyUI executed, in order."""
    cached: set[str] = field(default_factory=set)
    """Node ids ComfyUI served from its cache."""

    def did_run(self, node: Node | str) -> bool:
        return _id(node) in self.ran

    def was_cached(self, node: Node | str) -> bool:
        return _id(node) in self.cached

    def outputs(self, node: Node | str) -> dict[str, Any]:
        """The UI outputs ``node`` left in the history entry (``text``, ``images``, ...)."""
        return dict(self.entry.get("outputs", {}).get(_id(node), {}))


def _id(node: Node | str) -> str:
    return node.id if isinstance(node, Node) else node


class RecordingClient(ComfyClient):
    """``ComfyClient`` plus ``run_recorded`` (events per prompt) and the server-wide calls the tests make."""

    def run_recorded(self, graph: Graph | dict[str, Any], timeout: float = 300.0) -> Run:
        """Queue ``graph``, follow its events to the end and return the run.

        Raises:
            JobFailed: the job ended in an execution error or was interrupted (from its history entry).
        """
        api = graph.api() if isinstance(graph, Graph) else graph
        parts = urllib.parse.urlsplit(self.url)
        socket = websocket.create_connection(f"ws://{parts.netloc}/ws?clientId={self.client_id}", timeout=timeout)
        try:
            prompt_id = self.queue_prompt(api)
            ran, cached = self._follow(socket, prompt_id, time.monotonic() + timeout)
        finally:
            socket.close()
        return Run(prompt_id, self.wait(prompt_id, timeout), ran, cached)

    def images(self, run: Run, node: Node | str) -> list[bytes]:
        """The bytes of each image ``node`` saved or previewed in ``run``."""
        return [self.view(image) for image in self.output_images(run.entry, _id(node))]

    def free(self, *, unload_models: bool = True, free_memory: bool = False) -> None:
        """``POST /free``: ComfyUI unloads its models (and with ``free_memory`` drops its cache) once idle."""
        self._json_ok("POST", "/free", {"unload_models": unload_models, "free_memory": free_memory})

    def interrupt(self) -> None:
        """``POST /interrupt``: stop whatever runs now."""
        self._json_ok("POST", "/interrupt", {})

    @staticmethod
    def _follow(socket: websocket.WebSocket, prompt_id: str, deadline: float) -> tuple[list[str], set[str]]:
        ran: list[str] = []
        cached: set[str] = set()
        while True:
            socket.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                frame = socket.recv()
            except websocket.WebSocketTimeoutException as exc:
                raise ComfyClientError(f"Job {prompt_id} sent no end event in time") from exc
            if not isinstance(frame, str):
                continue  # a binary preview image
            message = json.loads(frame)
            data = message.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                continue
            kind = message.get("type")
            if kind == "execution_cached":
                cached.update(str(n) for n in data.get("nodes", []))
            elif kind == "executing" and data.get("node") is not None:
                ran.append(str(data["node"]))
            elif kind in END_EVENTS or (kind == "executing" and data.get("node") is None):
                return ran, cached


def log_mark(server: ComfyServer) -> int:
    """Where ``server``'s log ends now: ``wait_for_log`` looks only past it."""
    return len(server.log_text())


def wait_for_log(server: ComfyServer, text: str, since: int, timeout: float = 30.0) -> None:
    """Wait until ``text`` appears in ``server``'s log past ``since`` (what ``/free`` does happens once idle)."""
    deadline = time.monotonic() + timeout
    while text not in server.log_text()[since:]:
        assert time.monotonic() < deadline, f"{text!r} did not appear in the server's log within {timeout:.0f} s"
        time.sleep(0.2)
