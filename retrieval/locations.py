"""Where a style library lives: its folders, its store and its embedding model, from what the user typed.

The Style Library node, ``sketch-rag library`` and ``sketch-rag render --library`` all answer this
here, the same way, and every path and URL goes through the caller's :class:`~..access.AccessPolicy`
(ComfyUI's folders plus the config file for the nodes, everything for the CLI):

- library folder: empty = the shipped styles plus ``<home>/styles`` (where additions go); otherwise the
  one folder given, writable when the policy lets it be written;
- store: empty = ``<home>/store``; a folder; or a listed Chroma server ``http(s)://host:port`` (the
  embedding cache and sync state then stay in ``<home>/store``);
- embedding model: empty = the first CLIP folder in the model folders, else :data:`DEFAULT_HUB_MODEL`;
  a name from the model folders, a Hub id, or a folder path.

Relative paths: the CLI reads them against its working directory; the nodes read a relative library
folder as a library in ``<home>/libraries`` and a relative store as ``<home>/stores/<name>``.
"""

from __future__ import annotations

import http.client
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..access import AccessPolicy
from ..errors import LibraryError
from .embedder import DEFAULT_HUB_MODEL, clip_folder_names
from .folder import LibraryRoot
from .library import SHIPPED_LIBRARY, default_roots

STORE_PROBE_TIMEOUT_S = 5.0
"""How long a store server may take to answer before it counts as down (Chroma's own client never times out)."""
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9]$")


@dataclass(frozen=True)
class LibraryHome:
    """The folder a caller keeps its library data in, and how it reads relative paths.

    ``folder`` is ``user/sketch_rag`` in ComfyUI and ``~/.sketch-rag`` for the CLI; ``model_dirs``
    are the folders the embedding-model names refer to; ``relative_base`` is the folder relative
    paths are read against (the CLI's working directory), or None for the nodes' convention.
    """

    folder: Path
    model_dirs: tuple[Path, ...] = ()
    relative_base: Path | None = None


@dataclass(frozen=True)
class InputNames:
    """What the caller calls its three inputs, so an error names the field the user typed into."""

    folder: str = "library_folder"
    store: str = "store"
    model: str = "embedding_model"


NODE_INPUTS = InputNames()


@dataclass(frozen=True)
class LibraryLocation:
    """A library's checked folders, its store folder, its Chroma server (if any) and its model."""

    roots: tuple[LibraryRoot, ...]
    store_dir: Path
    chroma_url: str | None
    model: str


def library_roots(
    folder: str | Path | None, policy: AccessPolicy, home: LibraryHome, names: InputNames = NODE_INPUTS
) -> list[LibraryRoot]:
    """The library's folders, each resolved and allowed by ``policy`` before anything reads it.

    Raises:
        AccessDeniedError: a folder outside what the policy allows.
        InvalidParameterError: a path with a NUL character.
        LibraryError: the folder given is a file.
    """
    value = str(folder).strip() if folder is not None else ""
    if not value:
        shipped, styles = default_roots(home.folder / "styles")
        return [
            LibraryRoot(policy.readable(shipped.path, input_name=names.folder, base=home.folder), shipped.label,
                        writable=False),
            LibraryRoot(policy.writable(styles.path, input_name=names.folder, base=home.folder), styles.label),
        ]
    base = home.relative_base or home.folder / "libraries"
    path = policy.readable(value, input_name=names.folder, base=base)
    if path.exists() and not path.is_dir():
        raise LibraryError(f"The {names.folder} {value!r} ({path}) is a file; give a folder of style images.")
    data = Path(os.path.realpath(home.folder))
    if data.is_relative_to(path):
        # The home holds the store, the thumbnail cache and the trash: as a library they would index themselves.
        raise LibraryError(
            f"The {names.folder} {value!r} ({path}) contains {data}, where Sketch RAG keeps its store, thumbnails "
            f"and trash; give a folder of style images, such as {data / 'styles'} or {data / 'libraries'}/<name>."
        )
    writable = policy.can_write(path) and not path.is_relative_to(SHIPPED_LIBRARY)
    return [LibraryRoot(path, "", writable=writable)]


def store_location(
    store: str | Path | None, policy: AccessPolicy, home: LibraryHome, names: InputNames = NODE_INPUTS
) -> tuple[Path, str | None]:
    """(local store folder, normalised Chroma server URL or None) for the store input.

    Raises:
        AccessDeniedError: a folder the policy does not let be written, or a server it does not list.
        InvalidParameterError: a malformed URL or a path with a NUL character.
    """
    value = str(store).strip() if store is not None else ""
    local = policy.writable(home.folder / "store", input_name=names.store, base=home.folder)
    if not value:
        return local, None
    if "://" in value or value.lower().startswith(("http:", "https:")):
        return local, policy.store_url(value, input_name=names.store)
    base = home.relative_base or home.folder / "stores"
    return policy.writable(value, input_name=names.store, base=base), None


def embedding_model(
    model: str | Path | None, policy: AccessPolicy, home: LibraryHome, names: InputNames = NODE_INPUTS
) -> str:
    """The model to load: a name in ``home.model_dirs``, a Hub id, or an allowed folder path.

    Empty means the first CLIP folder in the model folders, else :data:`DEFAULT_HUB_MODEL` (one
    rule for the nodes' dropdown default and every CLI command).

    Raises:
        AccessDeniedError: a folder path outside what the policy allows.
    """
    value = str(model).strip() if model is not None else ""
    listed = clip_folder_names(home.model_dirs)
    if not value:
        return listed[0] if listed else DEFAULT_HUB_MODEL
    if value in listed:
        return value
    existing_relative = home.relative_base is not None and (home.relative_base / value).is_dir()
    if _HUB_ID.match(value) and ".." not in value and not existing_relative:
        return value  # a Hub id: the embedder loads it from the Hub cache, or downloads it if allowed
    base = home.relative_base or home.folder
    return str(policy.readable(value, input_name=names.model, base=base))


def resolve_location(
    folder: str | Path | None,
    store: str | Path | None,
    model: str | Path | None,
    *,
    policy: AccessPolicy,
    home: LibraryHome,
    names: InputNames = NODE_INPUTS,
    probe_timeout: float | None = STORE_PROBE_TIMEOUT_S,
) -> LibraryLocation:
    """Everything a library needs, checked: see the module docstring for the rules.

    ``probe_timeout`` (seconds; None skips it) bounds the check that a store server answers, so a
    down or unreachable server is a clear error instead of a hang in Chroma's client.

    Raises:
        AccessDeniedError: a path or server the policy does not allow.
        InvalidParameterError: a malformed path or URL.
        LibraryError: a library folder that is a file, or a store server that does not answer.
    """
    roots = library_roots(folder, policy, home, names)
    store_dir, url = store_location(store, policy, home, names)
    if url is not None and probe_timeout is not None:
        check_store_server(url, timeout=probe_timeout, input_name=names.store)
    return LibraryLocation(tuple(roots), store_dir, url, embedding_model(model, policy, home, names))


def check_store_server(url: str, *, timeout: float, input_name: str = "store") -> None:
    """Ask the Chroma server at ``url`` for its heartbeat; any HTTP answer counts as up.

    Raises:
        LibraryError: ``url`` is not http(s), the connection is refused, times out, or what answers is not an HTTP
            server.
    """
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise LibraryError(f"The {input_name} {url!r} is not an http:// or https:// URL; give a Chroma server's URL.")
    try:
        # Bandit B310 (a URL of any scheme): the scheme is http(s), checked above; the policy allowed the host.
        with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=timeout):  # nosec B310
            pass
    except urllib.error.HTTPError:
        return  # the server answered (an older Chroma without this route, say); its client reports the rest
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, not HTTP
        reason = getattr(exc, "reason", exc)
        raise LibraryError(
            f"The Chroma server at {url} (the {input_name}) does not answer ({reason}); start it with "
            "`chroma run --path DIR --host HOST --port PORT`, or leave the store empty for the local one."
        ) from exc

