"""Chroma's HTTP client with a time limit on every call.

Chroma's own HTTP client sets no timeout on its session (``httpx.Client(timeout=None)``), so a
server that accepts the connection and never answers hangs the caller for good: a ComfyUI worker
in the middle of a prompt, or a route's thread. Chroma offers no setting for it, so here:

- the client is built in a helper thread that is waited for at most :data:`STORE_TIMEOUT_S` (building
  it asks the server for its tenant and database, with no timeout yet);
- its session then gets a timeout for every request (connect, read, write, pool wait);
- a timeout of any later call is turned into :class:`~..errors.StoreUnavailableError` naming the server
  by :func:`bounded_call`, which :class:`~.index.ChromaIndex` wraps around every store call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

from ..errors import StoreUnavailableError

STORE_TIMEOUT_S = 10.0
"""Longest wait for one answer of a Chroma server; a healthy local or LAN server answers in milliseconds."""

T = TypeVar("T")


def unavailable(server: str, what: str, cause: BaseException | None = None) -> StoreUnavailableError:
    reason = f" ({type(cause).__name__})" if cause is not None else ""
    return StoreUnavailableError(
        f"The Chroma server at {server} did not answer {what} within {STORE_TIMEOUT_S:.0f} s{reason}; check that "
        "it is running and not overloaded, or leave the store empty for the local one."
    )


def http_client(server: str, host: str, port: int, ssl: bool, settings: Any) -> Any:
    """A Chroma ``HttpClient`` for ``server`` whose every request times out after :data:`STORE_TIMEOUT_S`.

    Raises:
        StoreUnavailableError: the server did not answer while the client was being built.
    """
    import chromadb

    built: list[Any] = []
    failed: list[BaseException] = []

    def build() -> None:
        try:
            built.append(chromadb.HttpClient(host=host, port=port, ssl=ssl, settings=settings))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which raises it
            failed.append(exc)

    # A daemon thread: if the server never answers, it is left waiting on its socket, not the caller.
    worker = threading.Thread(target=build, name=f"chroma-connect {server}", daemon=True)
    worker.start()
    worker.join(STORE_TIMEOUT_S)
    if worker.is_alive():
        raise unavailable(server, "while connecting")
    if failed:
        if isinstance(failed[0], httpx.TimeoutException):
            raise unavailable(server, "while connecting", failed[0]) from failed[0]
        raise failed[0]
    client = built[0]
    session = getattr(getattr(client, "_server", None), "_session", None)
    if not isinstance(session, httpx.Client):
        raise StoreUnavailableError(
            f"This chromadb version's HTTP client has no session to bound, so calls to {server} could hang; "
            "install the chromadb version the pack pins (requirements.txt)."
        )
    session.timeout = httpx.Timeout(STORE_TIMEOUT_S)
    return client


def bounded_call(server: str | None, what: str, fn: Callable[[], T]) -> T:
    """``fn()``, with an HTTP timeout from a store server turned into an error that names ``server``."""
    try:
        return fn()
    except httpx.TimeoutException as exc:
        if server is None:
            raise
        raise unavailable(server, what, exc) from exc
