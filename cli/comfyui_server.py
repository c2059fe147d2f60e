"""Start and stop a local ComfyUI with this pack linked into ``custom_nodes/``.

Used by ``sketch-rag serve`` and by the test suite's server fixture, so both run ComfyUI the
same way: CPU or GPU as ComfyUI decides (``cpu=True`` forces CPU), bound to loopback by default,
no browser launch, no cloud API nodes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..errors import SketchRagError

PACK_DIR = Path(__file__).resolve().parent.parent
"""The pack's own folder: what ComfyUI imports from ``custom_nodes/``."""

PACK_LINK_NAME = "sketch_rag"
STARTUP_TIMEOUT_S = 180.0


class ComfyServerError(SketchRagError):
    """ComfyUI did not start or stopped answering; the message carries the end of its log."""


def link_pack(base_dir: Path, pack_dir: Path = PACK_DIR, name: str = PACK_LINK_NAME) -> Path:
    """Symlink the pack into ``base_dir/custom_nodes/name``, replacing a stale link only.

    ``base_dir`` is the ComfyUI folder, or the ``--base-directory`` a server is started with.
    """
    link = base_dir / "custom_nodes" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink():
        if link.resolve() == pack_dir.resolve():
            return link
        link.unlink()
    elif link.exists():
        raise ComfyServerError(
            f"{link} already exists and is not a link to {pack_dir}; move it away to use this checkout."
        )
    link.symlink_to(pack_dir, target_is_directory=True)
    return link


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class ComfyServer:
    """A running ComfyUI process and where to reach it."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def import_failures(self) -> list[str]:
        """Lines where ComfyUI reports a custom-node module that failed to import."""
        return [line for line in self.log_text().splitlines() if "IMPORT FAILED" in line]

    def is_running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server by PID; ComfyUI has no graceful shutdown, so SIGTERM then SIGKILL."""
        if self.is_running():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def start_server(
    comfy_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8188,
    log_path: Path | None = None,
    cpu: bool = False,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    timeout: float = STARTUP_TIMEOUT_S,
    die_with_parent: bool = False,
) -> ComfyServer:
    """Start ``comfy_dir/main.py`` with this Python and wait until it answers HTTP.

    ``die_with_parent``: the server gets SIGTERM when the thread that started it ends, however it ends (on
    Linux; a Ray actor killed with SIGKILL must not leave its ComfyUI running).

    Raises:
        ComfyServerError: the port is taken, or the server exited or did not answer in time.
    """
    if _port_in_use(host, port):
        raise ComfyServerError(f"Port {port} on {host} is already in use; stop that server or pick --port.")
    command = [
        sys.executable, "main.py", "--listen", host, "--port", str(port),
        "--disable-auto-launch", "--disable-api-nodes", *(["--cpu"] if cpu else []), *extra_args,
    ]
    log_path = log_path or comfy_dir / "comfyui.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed by ComfyServer.stop
    process_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(
        command, cwd=comfy_dir, stdout=log_file, stderr=subprocess.STDOUT, env=process_env,
        preexec_fn=_die_with_parent if die_with_parent and sys.platform.startswith("linux") else None,
    )
    server = ComfyServer(process, f"http://{host}:{port}", log_path, log_file)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not server.is_running():
                raise ComfyServerError(f"ComfyUI exited at start (code {process.returncode}):\n{_tail(server)}")
            if _answers(server.url):
                return server
            time.sleep(0.3)
        raise ComfyServerError(f"ComfyUI did not answer on {server.url} within {timeout:.0f} s:\n{_tail(server)}")
    except BaseException:
        # A failed start, Ctrl-C or a SIGTERM turned into SystemExit while waiting: never leave ComfyUI orphaned.
        server.stop()
        raise


def _die_with_parent() -> None:
    """In the child before exec: ask the kernel for SIGTERM when the parent goes (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/system_stats", timeout=2) as response:
            json.load(response)
            return True
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _tail(server: ComfyServer, lines: int = 40) -> str:
    return "\n".join(server.log_text().splitlines()[-lines:])
