"""Where the pack may read and write, and which store servers it may call: the one trust-boundary rule.

ComfyUI confines what a ``POST /prompt`` caller can touch through its own nodes (LoadImage reads
input/, SaveImage writes output/), but a pack's folder and URL inputs are outside those checks. On a
ComfyUI started with ``--listen`` for a team, a node that opens any path is a file read and write
anywhere the server user can reach, and one that opens any URL makes the server call any host. So
every path or URL a node (or a route) receives goes through an :class:`AccessPolicy`:

- allowed roots are ComfyUI's user, input, output and models folders (readable and writable), the
  shipped style library (read-only) and the folders the user lists in ``user/sketch_rag/config.json``;
- every path is made absolute (``~`` expanded, a relative path joined to a base the caller documents)
  and its ``..`` and symlinks are resolved *before* it is compared, so neither a ``..`` nor a link
  inside an allowed folder leads out of it; the resolved path is what the caller then uses;
- the deepest root that holds a path decides whether it may be written (the read-only shipped
  library stays read-only inside a writable folder); the config file itself is never writable;
- store URLs are allowed only when listed in the same config file, compared by scheme, host and port.

The config file (JSON, read again whenever it changes, so no restart is needed)::

    {
      "allowed_folders": [
        {"path": "/srv/styles", "writable": false},
        {"path": "/srv/sketch-rag-store", "writable": true}
      ],
      "allowed_store_urls": ["http://chroma.local:8000"]
    }

A plain string in ``allowed_folders`` is a read-only folder. The CLI runs as the user and uses
:meth:`AccessPolicy.for_cli`, which accepts every path (the shipped library stays read-only).
This module imports nothing from ComfyUI: the nodes pass in ComfyUI's folders.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import AccessDeniedError, ConfigFileError, InvalidParameterError

logger = logging.getLogger(__name__)

CONFIG_FOLDER = "sketch_rag"
CONFIG_NAME = "config.json"
"""The config file is ``<ComfyUI user folder>/sketch_rag/config.json``."""
FOLDERS_KEY = "allowed_folders"
URLS_KEY = "allowed_store_urls"
MAX_CONFIG_BYTES = 1 << 20
"""A config file larger than this is refused rather than parsed (it is a short hand-written list)."""
SHIPPED_SOURCE = "the shipped style library (pack updates replace it)"
COMFYUI_SOURCE = "ComfyUI's folders"
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4000
"""Limits of common file systems (a name; a whole path, under Linux's 4096), checked so the error is ours."""
DEFAULT_PORTS = {"http": 8000, "https": 443}
"""The port a store URL without one means: Chroma's own default for http (as its client assumes), 443 for https."""


@dataclass(frozen=True)
class AllowedRoot:
    """One folder the pack may use, resolved, and where the permission came from (for error messages)."""

    path: Path
    writable: bool
    source: str
    locked: bool = False
    """Read-only whatever else is listed (the shipped library: pack updates replace it)."""


@dataclass(frozen=True)
class AccessConfig:
    """The validated content of the config file: extra folders and listed store servers."""

    folders: tuple[AllowedRoot, ...] = ()
    store_urls: frozenset[str] = frozenset()


@dataclass(frozen=True)
class AccessPolicy:
    """The folders and store servers one caller may use. Build it with a classmethod, not directly.

    ``roots`` empty and ``unrestricted`` false means nothing is allowed; ``unrestricted`` (the
    CLI) allows every path and URL except writes under a read-only root.
    """

    roots: tuple[AllowedRoot, ...]
    store_urls: frozenset[str] = frozenset()
    config_path: Path | None = None
    unrestricted: bool = False
    protected: frozenset[Path] = field(default_factory=frozenset)
    """Files never written through the policy even inside a writable root (the config file)."""

    @classmethod
    def for_comfyui(
        cls,
        *,
        writable: Iterable[str | os.PathLike[str]],
        read_only: Iterable[str | os.PathLike[str]],
        user_dir: str | os.PathLike[str],
    ) -> AccessPolicy:
        """The policy of a ComfyUI server: its own folders plus what ``<user_dir>/sketch_rag/config.json`` lists.

        The config file is read only when it changed since the last call (one ``stat`` otherwise),
        so calling this per node execution is cheap and sees edits without a restart.

        Raises:
            ConfigFileError: the config file exists but is not valid (the message names the file and the entry).
        """
        config_path = Path(user_dir) / CONFIG_FOLDER / CONFIG_NAME
        config = load_config(config_path)
        roots = [AllowedRoot(_resolved(p), True, COMFYUI_SOURCE) for p in writable]
        roots += [AllowedRoot(_resolved(p), False, SHIPPED_SOURCE, locked=True) for p in read_only]
        return cls(
            roots=(*roots, *config.folders),
            store_urls=config.store_urls,
            config_path=config_path,
            protected=frozenset({_resolved(config_path)}),
        )

    @classmethod
    def for_cli(cls, read_only: Iterable[str | os.PathLike[str]] = ()) -> AccessPolicy:
        """The CLI's policy: the user's own paths and servers are all allowed; ``read_only`` folders are not written."""
        roots = tuple(AllowedRoot(_resolved(p), False, SHIPPED_SOURCE, locked=True) for p in read_only)
        return cls(roots=roots, unrestricted=True)

    # -- paths ---------------------------------------------------------------------------------

    def readable(self, value: str | os.PathLike[str], *, input_name: str, base: Path) -> Path:
        """``value`` made absolute against ``base`` and fully resolved, if this policy lets it be read.

        Raises:
            InvalidParameterError: an empty path or one with a NUL character.
            AccessDeniedError: the resolved path is in no allowed folder.
        """
        path = resolve_path(value, input_name=input_name, base=base)
        if self.unrestricted or self._root_of(path) is not None:
            return path
        raise AccessDeniedError(self._denied(value, path, input_name, write=False))

    def writable(self, value: str | os.PathLike[str], *, input_name: str, base: Path) -> Path:
        """Like :meth:`readable`, for a path that will be written (created, replaced, or a folder written into).

        Raises:
            InvalidParameterError: an empty path or one with a NUL character.
            AccessDeniedError: the resolved path is in no writable folder, under a read-only one, or protected.
        """
        path = resolve_path(value, input_name=input_name, base=base)
        if path in self.protected:
            raise AccessDeniedError(
                f"The {input_name} {str(value)!r} is Sketch RAG's own config file ({path}), which nodes never "
                "write; choose another file or folder."
            )
        if self.can_write(path):
            return path
        raise AccessDeniedError(self._denied(value, path, input_name, write=True))

    def can_write(self, path: Path) -> bool:
        """Whether an already resolved path may be written: its deepest allowed root is writable."""
        if path in self.protected or any(r.locked and path.is_relative_to(r.path) for r in self.roots):
            return False
        root = self._root_of(path)
        return self.unrestricted if root is None else root.writable

    def listed_writable(self, path: Path) -> bool:
        """Whether an already resolved path lies in a folder the config file lists as writable (and may be written).

        The Style Library routes write only into such folders and Sketch RAG's own libraries, not into
        whatever ComfyUI folder a caller names (input/, output/).
        """
        root = self._root_of(path)
        return root is not None and root.source not in (COMFYUI_SOURCE, SHIPPED_SOURCE) and self.can_write(path)

    def listed_folders(self) -> tuple[Path, ...]:
        """The folders the config file lists (for callers that must not show them to a remote client)."""
        return tuple(r.path for r in self.roots if r.source not in (COMFYUI_SOURCE, SHIPPED_SOURCE))

    def _root_of(self, path: Path) -> AllowedRoot | None:
        """The deepest allowed root holding ``path`` (a read-only folder inside a writable one wins)."""
        holding = [r for r in self.roots if path.is_relative_to(r.path)]
        return max(holding, key=lambda r: len(r.path.parts), default=None)

    def _denied(self, value: str | os.PathLike[str], path: Path, input_name: str, *, write: bool) -> str:
        start = f"The {input_name} {str(value)!r} resolves to {path}, which"
        where = str(self.config_path) if self.config_path else f"<ComfyUI user folder>/{CONFIG_FOLDER}/{CONFIG_NAME}"
        own = "use a folder inside ComfyUI's user, input, output or models folder"
        locked = next((r for r in self.roots if r.locked and path.is_relative_to(r.path)), None)
        inside = self._root_of(path)
        if write and locked is not None:
            return f"{start} is inside {locked.path}, {locked.source}, which is never written; {own} instead."
        if write and inside is not None:
            return (
                f"{start} is inside {inside.path}, listed read-only ({inside.source}). To allow writing, set "
                f'"writable": true on its entry, or {own}.'
            )
        verb = "write" if write else "read"
        allowed = ", ".join(str(r.path) for r in self.roots if r.writable or not write) or "none"
        entry = json.dumps({"path": str(path), "writable": True} if write else {"path": str(path)})
        return (
            f"{start} is outside the folders Sketch RAG may {verb} here ({allowed}). To allow it, add {entry} "
            f'to "{FOLDERS_KEY}" in {where}, or {own}.'
        )

    # -- store servers -------------------------------------------------------------------------

    def store_url(self, value: str, *, input_name: str) -> str:
        """The normalised ``scheme://host:port`` of a store server URL, if this policy lists that server.

        Raises:
            InvalidParameterError: not an http(s) URL of a server (a path, credentials, a query are refused).
            AccessDeniedError: the server is not listed in the config file.
        """
        url = normalise_url(value, input_name=input_name)
        if self.unrestricted or url in self.store_urls:
            return url
        where = str(self.config_path) if self.config_path else f"<ComfyUI user folder>/{CONFIG_FOLDER}/{CONFIG_NAME}"
        listed = ", ".join(sorted(self.store_urls)) or "none"
        raise AccessDeniedError(
            f"The {input_name} {value!r} is the server {url}, which is not a store server this ComfyUI may use "
            f'(listed: {listed}). To allow it, add "{url}" to "{URLS_KEY}" in {where}, or leave {input_name} '
            "empty for the local store."
        )


def resolve_path(value: str | os.PathLike[str], *, input_name: str, base: Path) -> Path:
    """``value`` with ``~`` expanded, joined to ``base`` if relative, and ``..`` and symlinks resolved.

    Raises:
        InvalidParameterError: an empty path, a NUL character, an over-long name, or a path the OS cannot resolve.
    """
    text = os.fspath(value)
    if not text.strip():
        raise InvalidParameterError(f"The {input_name} is empty; give a folder path.")
    if "\x00" in text:
        raise InvalidParameterError(
            f"The {input_name} {text!r} contains a NUL character, which no file name can hold; remove it."
        )
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = Path(base) / path
    try:
        resolved = Path(os.path.realpath(path))
        encoded = [os.fsencode(part) for part in resolved.parts]
    except (OSError, ValueError) as exc:  # UnicodeEncodeError: a lone surrogate from JSON, say
        raise InvalidParameterError(f"The {input_name} {text!r} cannot be resolved ({exc}); check the path.") from exc
    if any(len(part) > MAX_NAME_BYTES for part in encoded) or sum(map(len, encoded)) > MAX_PATH_BYTES:
        raise InvalidParameterError(
            f"The {input_name} {text[:80]!r}... is longer than file systems allow ({MAX_NAME_BYTES} bytes a name, "
            f"{MAX_PATH_BYTES} a path); use a shorter path."
        )
    return resolved


def normalise_url(value: str, *, input_name: str) -> str:
    """``scheme://host:port`` of a server URL: lower-case scheme and host, the port made explicit.

    Raises:
        InvalidParameterError: not http(s), no host, a bad port, or credentials, a path, query or fragment.
    """
    text = value.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidParameterError(f"The {input_name} {value!r} is not a valid URL ({exc}); use http://host:port.") \
            from exc
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise InvalidParameterError(
            f"The {input_name} {value!r} is not an http:// or https:// server URL; use http://host:port."
        )
    if parts.username is not None or parts.password is not None or parts.path not in ("", "/") \
            or parts.query or parts.fragment or any(c.isspace() or ord(c) < 32 for c in text):
        raise InvalidParameterError(
            f"The {input_name} {value!r} carries more than a server address (credentials, a path, a query or "
            "control characters); use only scheme://host:port."
        )
    host = parts.hostname.lower().rstrip(".")
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    return f"{scheme}://{host}:{port if port is not None else DEFAULT_PORTS[scheme]}"


# -- the config file -------------------------------------------------------------------------------

_config_cache: dict[Path, tuple[tuple[int, int, int], AccessConfig]] = {}
_config_lock = threading.Lock()


def load_config(path: Path) -> AccessConfig:
    """The validated config at ``path`` (empty if there is none), parsed again only when the file changed.

    Raises:
        ConfigFileError: unreadable, not JSON, unknown keys, or an entry of the wrong shape.
    """
    try:
        stat = path.stat()
    except FileNotFoundError:
        return AccessConfig()
    except OSError as exc:
        raise ConfigFileError(f"The Sketch RAG config file {path} cannot be read ({exc}); fix or remove it.") from exc
    stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    with _config_lock:
        cached = _config_cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
    config = _parse_config(path, stat.st_size)
    with _config_lock:
        _config_cache[path] = (stamp, config)
    logger.info("Sketch RAG access: %d extra folder(s), %d store server(s) from %s.",
                len(config.folders), len(config.store_urls), path)
    return config


def _parse_config(path: Path, size: int) -> AccessConfig:
    def bad(why: str) -> ConfigFileError:
        return ConfigFileError(
            f"The Sketch RAG config file {path} is not valid: {why}. Expected e.g. "
            f'{{"{FOLDERS_KEY}": [{{"path": "/abs/folder", "writable": true}}], '
            f'"{URLS_KEY}": ["http://host:8000"]}}; fix the file or remove it.'
        )

    if not path.is_file():
        raise bad("it is not a file")
    if size > MAX_CONFIG_BYTES:
        raise bad(f"it is {size} bytes, more than the {MAX_CONFIG_BYTES} a config file may have")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"it cannot be read as JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise bad(f"the top level is a {type(data).__name__}, not an object")
    unknown = sorted(set(data) - {FOLDERS_KEY, URLS_KEY})
    if unknown:
        raise bad(f"unknown key(s) {unknown}; the keys are {FOLDERS_KEY!r} and {URLS_KEY!r}")
    folders = data.get(FOLDERS_KEY, [])
    urls = data.get(URLS_KEY, [])
    if not isinstance(folders, list):
        raise bad(f"{FOLDERS_KEY!r} is a {type(folders).__name__}, not a list")
    if not isinstance(urls, list):
        raise bad(f"{URLS_KEY!r} is a {type(urls).__name__}, not a list")
    source = f"{FOLDERS_KEY} in {path}"
    roots = tuple(AllowedRoot(*_folder_entry(n, entry, bad), source) for n, entry in enumerate(folders))
    store_urls = set()
    for n, url in enumerate(urls):
        if not isinstance(url, str):
            raise bad(f"{URLS_KEY}[{n}] is {url!r}, not a string")
        try:
            store_urls.add(normalise_url(url, input_name=f"{URLS_KEY}[{n}]"))
        except InvalidParameterError as exc:
            raise bad(str(exc)) from exc
    return AccessConfig(folders=roots, store_urls=frozenset(store_urls))


def _folder_entry(n: int, entry: Any, bad: Any) -> tuple[Path, bool]:
    name = f"{FOLDERS_KEY}[{n}]"
    if isinstance(entry, str):
        entry = {"path": entry}
    if not isinstance(entry, Mapping):
        raise bad(f"{name} is {entry!r}; give a path string or an object with \"path\" and \"writable\"")
    extra = sorted(set(entry) - {"path", "writable"})
    if extra:
        raise bad(f"{name} has unknown key(s) {extra}; an entry has \"path\" and optionally \"writable\"")
    raw, writable = entry.get("path"), entry.get("writable", False)
    if not isinstance(raw, str) or not raw.strip() or "\x00" in raw:
        raise bad(f"{name}.path is {raw!r}; give an absolute folder path")
    if not isinstance(writable, bool):
        raise bad(f"{name}.writable is {writable!r}; use true or false")
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise bad(f"{name}.path {raw!r} is relative; give an absolute folder path")
    resolved = _resolved(path)
    if resolved == Path(resolved.anchor):
        raise bad(f"{name}.path {raw!r} is the filesystem root, which would allow every file; list the folders "
                  "you mean")
    return resolved, writable


def _resolved(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))

