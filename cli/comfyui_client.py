"""A small client for ComfyUI's HTTP API: upload, queue, wait, download.

Standard library only, so it works in any environment that can reach a server. The test suite
and the batch runner both talk to ComfyUI through it.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import SketchRagError


class ComfyClientError(SketchRagError):
    """The server could not be reached, or a job failed on it."""


class ServerUnreachable(ComfyClientError):
    """The request never got an HTTP answer: connection refused or reset, or no reply within the timeout.

    Only this (never an HTTP error status) can mean the server itself is gone; callers that must tell a
    dead server from a bad job confirm it with ``ComfyClient.alive``.
    """


class PromptRejected(ComfyClientError):
    """``POST /prompt`` refused the workflow (HTTP 400); ``body`` holds ComfyUI's error JSON."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        error = body.get("error", {})
        nodes = {
            node_id: [f"{e.get('details') or e.get('message')}" for e in info.get("errors", [])]
            for node_id, info in body.get("node_errors", {}).items()
        }
        super().__init__(f"ComfyUI rejected the workflow: {error.get('message', body)}; node errors: {nodes}")


class JobFailed(ComfyClientError):
    """A queued job ended in an execution error; ``message`` is ComfyUI's exception text."""

    def __init__(self, prompt_id: str, node_type: str, message: str) -> None:
        self.prompt_id = prompt_id
        self.node_type = node_type
        self.message = message
        super().__init__(f"Job {prompt_id} failed in {node_type}: {message}")


def finished_entry(prompt_id: str, entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """``entry`` (a ``/history`` entry) if the job completed, None while it has not ended.

    Raises:
        JobFailed: the job ended in an execution error or an interruption.
    """
    status = (entry or {}).get("status") or {}
    if entry is None or status.get("completed") is None:
        return None
    if status.get("status_str") == "error" or not status.get("completed"):
        for kind, data in status.get("messages", []):
            if kind == "execution_error":
                raise JobFailed(prompt_id, data.get("node_type", "?"), data.get("exception_message", ""))
            if kind == "execution_interrupted":
                raise JobFailed(prompt_id, data.get("node_type", "?"), "interrupted on the server")
        raise JobFailed(prompt_id, "?", f"ended with status {status.get('status_str')!r} and no error message")
    return entry


@dataclass(frozen=True)
class OutputImage:
    filename: str
    subfolder: str
    type: str


class ComfyClient:
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    # -- plain endpoints -------------------------------------------------------------------
    def object_info(self) -> dict[str, Any]:
        return self._json("GET", "/object_info")

    def node_info(self, class_types: Iterable[str]) -> dict[str, Any]:
        """``/object_info`` for only these node types (one ``/object_info/{type}`` each); unknown ones are absent.

        Much cheaper than the full listing, which the server builds for every installed node each time.
        """
        found: dict[str, Any] = {}
        for class_type in sorted(set(class_types)):
            found.update(self._json("GET", f"/object_info/{urllib.parse.quote(class_type, safe='')}"))
        return found

    def upload_image(self, data: bytes, name: str, subfolder: str = "", overwrite: bool = True) -> str:
        """Upload PNG/JPEG bytes to ComfyUI's input folder; returns the name LoadImage takes."""
        boundary = uuid.uuid4().hex
        fields = {"type": "input", "overwrite": "true" if overwrite else "false", "subfolder": subfolder}
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
            for key, value in fields.items()
        ]
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
        )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        content_type = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        result = self._json("POST", "/upload/image", body, content_type)
        return f"{result['subfolder']}/{result['name']}" if result.get("subfolder") else str(result["name"])

    def queue_prompt(self, graph: dict[str, Any], extra_data: dict[str, Any] | None = None,
                     prompt_id: str | None = None) -> str:
        """Queue an API-format workflow; returns its prompt id (``prompt_id`` if given, else the server's).

        Raises:
            PromptRejected: the server's validation refused it (HTTP 400).
        """
        payload: dict[str, Any] = {"prompt": graph, "client_id": self.client_id}
        if prompt_id is not None:
            payload["prompt_id"] = prompt_id
        if extra_data:
            payload["extra_data"] = extra_data
        status, body = self._request("POST", "/prompt", json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})
        decoded = json.loads(body) if body else {}
        if status != 200:
            raise PromptRejected(status, decoded)
        return str(decoded["prompt_id"])

    def queue(self) -> dict[str, Any]:
        """The server's ``queue_running`` and ``queue_pending`` lists."""
        return dict(self._json("GET", "/queue"))

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        entry = self._json("GET", f"/history/{prompt_id}")
        return entry.get(prompt_id)

    def all_history(self) -> dict[str, Any]:
        """Every entry of the server's history, by prompt id."""
        return dict(self._json("GET", "/history"))

    def alive(self, timeout: float = 5.0) -> bool:
        """Whether the server answers ``/system_stats`` within ``timeout`` seconds (its own health check)."""
        probe = ComfyClient(self.url, timeout=timeout)
        try:
            probe._json("GET", "/system_stats")
        except ComfyClientError:
            return False
        return True

    def cancel(self, prompt_id: str) -> bool:
        """Stop ``prompt_id`` on the server: interrupt it if it is the running job, and drop it from the queue.

        ``/interrupt`` is sent only when ``prompt_id`` is running (servers older than 0.3.6x interrupt whatever
        runs, whatever id is given). Returns whether it was running.
        """
        running = any(item[1] == prompt_id for item in self.queue().get("queue_running", []))
        if running:
            self._json_ok("POST", "/interrupt", {"prompt_id": prompt_id})
        self._json_ok("POST", "/queue", {"delete": [prompt_id]})
        return running

    def view(self, image: OutputImage) -> bytes:
        query = urllib.parse.urlencode({"filename": image.filename, "subfolder": image.subfolder, "type": image.type})
        status, body = self._request("GET", f"/view?{query}")
        if status != 200:
            raise ComfyClientError(f"GET /view for {image.filename} answered HTTP {status}.")
        return body

    # -- composite ------------------------------------------------------------------------
    def wait(self, prompt_id: str, timeout: float = 300.0, poll: float = 0.05) -> dict[str, Any]:
        """Poll ``/history`` until the job ends; returns its history entry.

        Raises:
            JobFailed: the job ended with an execution error or was interrupted.
            ComfyClientError: it did not end within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = finished_entry(prompt_id, self.history(prompt_id))
            if entry is not None:
                return entry
            time.sleep(poll)
        raise ComfyClientError(f"Job {prompt_id} did not finish within {timeout:.0f} s.")

    def output_images(self, entry: dict[str, Any], node_id: str) -> list[OutputImage]:
        images = entry.get("outputs", {}).get(node_id, {}).get("images", [])
        return [OutputImage(i["filename"], i.get("subfolder", ""), i.get("type", "output")) for i in images]

    def run(self, graph: dict[str, Any], output_node: str, timeout: float = 300.0) -> list[bytes]:
        """Queue ``graph``, wait for it, and return the bytes of ``output_node``'s images."""
        entry = self.wait(self.queue_prompt(graph), timeout)
        return [self.view(image) for image in self.output_images(entry, output_node)]

    # -- transport ------------------------------------------------------------------------
    def _json_ok(self, method: str, path: str, payload: dict[str, Any]) -> None:
        """Send a JSON body to an endpoint that answers with an empty 200."""
        status, body = self._request(method, path, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        if status != 200:
            raise ComfyClientError(f"{method} {path} answered HTTP {status}: {body[:500]!r}")

    def _json(self, method: str, path: str, data: bytes | None = None,
              headers: dict[str, str] | None = None) -> Any:
        status, body = self._request(method, path, data, headers)
        if status != 200:
            raise ComfyClientError(f"{method} {path} answered HTTP {status}: {body[:500]!r}")
        return json.loads(body)

    def _request(self, method: str, path: str, data: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path, data=data, headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            # Refused, reset, timed out, or a reply cut off mid-way: no answer from the server itself.
            raise ServerUnreachable(f"Cannot reach ComfyUI at {self.url} ({exc}); is the server running?") from exc
