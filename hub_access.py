"""Hugging Face Hub access scoped to our own model loads, never changed for the whole process.

Our loaders read local files only; forcing ``HF_HUB_OFFLINE`` around them turns a forgotten Hub lookup into an
immediate error instead of a multi-minute hang on a dead network. Inside ComfyUI the process is shared with
other packs (and with our own ``allow_download``), so the setting is applied only while one of our loads runs
and put back as it was afterwards. huggingface_hub reads its ``constants.HF_HUB_OFFLINE`` at request time (that
is what makes a run-time change work in a process where it is already imported); the environment variable is
set too, for code that reads it directly.

One lock serialises the scopes: two of our loads on different threads would otherwise restore each other's
values out of order. Keep a scope innermost (take no other lock inside it), so it cannot deadlock.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

_SCOPE_LOCK = threading.RLock()
_ENV_SETTINGS = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def process_is_offline() -> bool:
    """Whether huggingface_hub is in offline mode right now (the process's own setting outside our scopes)."""
    import huggingface_hub.constants

    return bool(huggingface_hub.constants.HF_HUB_OFFLINE)


@contextmanager
def hub_offline() -> Iterator[None]:
    """Run the body with every Hugging Face Hub request refused, then restore the previous setting.

    Usable as a decorator too (``@hub_offline()``). Nested and concurrent scopes are safe: each restores
    exactly what it found, and scopes on different threads run one after the other.
    """
    import huggingface_hub.constants

    with _SCOPE_LOCK:
        previous_constant = huggingface_hub.constants.HF_HUB_OFFLINE
        previous_env = {name: os.environ.get(name) for name in _ENV_SETTINGS}
        huggingface_hub.constants.HF_HUB_OFFLINE = True
        os.environ.update(_ENV_SETTINGS)
        try:
            yield
        finally:
            huggingface_hub.constants.HF_HUB_OFFLINE = previous_constant
            for name, value in previous_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


@contextmanager
def hub_access(allow_download: bool) -> Iterator[None]:
    """Offline (:func:`hub_offline`) unless the user allowed a download; then the process's own setting holds.

    An allowed download does not switch the Hub back on where whoever started the process turned it off
    (``HF_HUB_OFFLINE=1`` in ComfyUI's environment): a node input reaching us through ``POST /prompt`` must not
    override the server owner's choice. It still takes the scope lock, so no offline scope of ours is active
    on another thread while it downloads.
    """
    if not allow_download:
        with hub_offline():
            yield
        return
    with _SCOPE_LOCK:
        yield
