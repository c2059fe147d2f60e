"""HTTP routes of the Style Library sidebar tab: list, thumbnails, images, search, add, edit, remove.

An adapter like the nodes: every route resolves its library from the same three parameters as
the Style Library node (``library``, ``store``, ``model`` = ``library_folder``, ``store``,
``embedding_model``) through the engine's ``resolve_location`` under the same :class:`~..access.AccessPolicy`
(``comfy_folders.access_policy``), and gets the very library object (and CLIP) the node uses from
``library_cache.shared_library``. Styles are named by id and looked up among the library's records, never
opened as paths, so no ``..``, absolute path or encoded traversal reaches a file. The contract the tab codes
against is the README's "Style Library tab" section.

Engine calls block (CLIP, Chroma, file I/O), so each runs on a thread of the routes' own pools
(:data:`READS`, :data:`WRITES`), never on ComfyUI's event loop, and reads never queue behind writes.
Uploads are streamed to ComfyUI's temp folder with a byte limit (ComfyUI's own
``--max-upload-size``), and all uploads together may stage at most :data:`STAGING_UPLOADS`
times that (the one over is answered 503 with Retry-After); they are decoded with the pack's image
checks before the library is touched, and the staged files are removed whatever happens.

Reads follow the allowed-roots rule; writes (add, edit, trash) go only to library folders: the
libraries under ``user/sketch_rag`` and folders the config file lists as writable, never any other
ComfyUI folder. Style files are read without following links (:func:`read_style`). Answers never
carry server paths: ComfyUI's folders are named as such (``<user>/...``) and other paths hidden.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import mimetypes
import os
import posixpath
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import folder_paths
from aiohttp import BodyPartReader, ClientPayloadError, web

from ..access import AccessPolicy
from ..errors import (
    AccessDeniedError,
    InvalidImageError,
    InvalidParameterError,
    LibraryError,
    LibraryModelMismatchError,
    ServerBusyError,
    SketchRagError,
    StoreUnavailableError,
    StyleNotFoundError,
    UploadTooLargeError,
)
from ..imaging import decode_image
from ..retrieval import (
    EMBED_SIDE,
    MAX_K,
    MAX_NAME_CHARS,
    SHIPPED_LIBRARY,
    FileRecord,
    StyleLibrary,
    StyleMatch,
    StyleQuery,
    checked_name,
    checked_tags,
    default_name,
    edit_style,
    find_style,
    numbered_names,
    open_rgb,
    open_style,
    read_style,
    resolve_location,
    root_of,
    thumbnail,
    thumbnail_path,
    trash_style,
)
from .comfy_folders import access_policy, library_home, user_dir
from .comfy_host import max_upload_bytes, route_table
from .library_cache import shared_library

logger = logging.getLogger(__name__)

PREFIX = "/sketch_rag/library"
DEFAULT_K = 8
MAX_QUERY_CHARS = 2000
MAX_PARAM_CHARS = 4096
MAX_JSON_BYTES = 64 * 1024
"""A search or edit body is a few hundred bytes; anything far larger is refused unread."""
MAX_FIELD_BYTES = 16 * 1024
MAX_FILES = 64
"""Images one upload may carry; each is decoded and embedded before the request answers."""
UPLOAD_CHUNK = 1 << 16
UPLOAD_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}
"""Pillow formats a library takes, and the extension the saved file gets (never the client's)."""
IMMUTABLE = "public, max-age=31536000, immutable"
STAGING_UPLOADS = 2
"""All uploads together may stage this many times ComfyUI's ``--max-upload-size`` in the temp folder."""
RETRY_AFTER_S = 5
"""What a client refused for a full staging area is told to wait before trying again."""

READS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="sketch_rag_read")
"""Threads of the reading routes (list, thumbnails, images, search): enough that a screenful of thumbnails from
several users does not queue, and their own, so they never wait behind ComfyUI's default pool (six threads on a
two-core machine) or behind writes waiting for the write lock."""
WRITES = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sketch_rag_write")
"""Threads of the writing routes; they take turns on the write lock anyway."""

_write_lock = threading.Lock()
"""Additions, edits and removals from the tab one at a time (the library's file lock covers other processes)."""
_registered = False
T = TypeVar("T")


class StagingBudget:
    """Bytes staged by all uploads in flight, under one cap: a burst of uploads cannot fill the temp folder."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.staged = 0

    def take(self, count: int, cap: int) -> None:
        """Count ``count`` more staged bytes, or refuse them (ServerBusyError) if the total would pass ``cap``."""
        with self._lock:
            if self.staged + count > cap:
                raise ServerBusyError(
                    f"The server is receiving other uploads ({cap} bytes in all at most); try again in "
                    f"{RETRY_AFTER_S} s."
                )
            self.staged += count

    def give_back(self, count: int) -> None:
        with self._lock:
            self.staged -= count


staging_budget = StagingBudget()


class UploadInterruptedError(InvalidParameterError):
    """The client stopped sending the body part-way (disconnected, or a truncated request)."""


@dataclass(frozen=True)
class LibraryParams:
    """The Style Library node's three inputs, as a route receives them in its query string."""

    library: str = ""
    store: str = ""
    model: str = ""

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> LibraryParams:
        values = {}
        for name in ("library", "store", "model"):
            value = query.get(name, "")
            if len(value) > MAX_PARAM_CHARS:
                raise InvalidParameterError(f"The {name} parameter is {len(value)} characters; use a shorter path.")
            values[name] = value
        return cls(**values)

    def query(self) -> dict[str, str]:
        """The non-empty parameters, for URLs that must open the same library."""
        return {k: v for k, v in (("library", self.library), ("store", self.store), ("model", self.model)) if v}


def open_library_for(params: LibraryParams, policy: AccessPolicy, *, sync: bool) -> StyleLibrary:
    """The node's library for these parameters, resolved and checked exactly as the node does.

    ``policy`` is built once per request (``comfy_folders.access_policy``, which sees config edits at once)
    and used for every check of that request.
    """
    location = resolve_location(params.library, params.store, params.model, policy=policy, home=library_home())
    # The node's cache is keyed by its embedding_model input, whose default is the first CLIP folder.
    return shared_library(location, params.model.strip() or location.model, sync=sync)


def writable_library(params: LibraryParams, policy: AccessPolicy) -> StyleLibrary:
    """The library for a write route, refused unless every folder it writes is a library folder.

    Library folders are Sketch RAG's own (``user/sketch_rag/styles`` and ``user/sketch_rag/libraries/...``)
    and those the config file lists as writable; any other writable ComfyUI folder (``input/``,
    ``output/``) is readable through the routes but never changed by them.

    Raises:
        AccessDeniedError: a library with no writable folder, or one outside the library folders.
    """
    library = open_library_for(params, policy, sync=False)
    try:
        library.write_root()
    except LibraryError as exc:  # the shipped styles alone, or a folder the config lists read-only
        raise AccessDeniedError(str(exc)) from exc
    if not in_write_scope(library, policy):
        raise AccessDeniedError(
            f"The library {params.library!r} is not a style library folder, so the Style Library tab does not change "
            "it: styles are added, edited and removed only in user/sketch_rag/styles, user/sketch_rag/libraries/"
            "<name>, and folders listed with \"writable\": true under allowed_folders in "
            "user/sketch_rag/config.json. Copy the images into such a library, or list the folder there."
        )
    return library


def in_write_scope(library: StyleLibrary, policy: AccessPolicy) -> bool:
    """Whether every writable folder of ``library`` is a library folder the routes may change."""
    home = Path(os.path.realpath(user_dir()))
    for root in (r for r in library.roots if r.writable):
        path = Path(os.path.realpath(root.path))
        if not (path == home / "styles" or path.is_relative_to(home / "libraries") or policy.listed_writable(path)):
            return False
    return True


def style_json(record: FileRecord, library: StyleLibrary, params: LibraryParams) -> dict[str, Any]:
    """One style as the tab shows it; its URLs carry the library parameters and a content-hash ``v``."""
    query = {**params.query(), "id": record.item_id, "v": record.sha256[:16]}
    return {
        "id": record.item_id,
        "name": record.meta.name,
        "tags": list(record.meta.tags),
        "text": dict(record.meta.text),
        "writable": root_of(library, record).writable,
        "thumbnail": f"{PREFIX}/thumbnail?{urlencode(query)}",
        "image": f"{PREFIX}/image?{urlencode(query)}",
    }


async def in_thread(pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
    """``fn()`` on one of ``pool``'s threads (engine calls block: CLIP, Chroma, file I/O), never on the event loop."""
    return await asyncio.get_running_loop().run_in_executor(pool, fn)


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": public_message(message)}, status=status, headers=headers)


def public_message(message: str) -> str:
    """``message`` with server paths replaced: ComfyUI's folders by their role, any other listed folder hidden.

    A remote client of a shared ComfyUI knows the folders by their role (``<user>``, ``<input>``); where
    they live on the server, and which other folders the config lists, is not theirs to learn.
    """
    named: dict[str, str] = {}
    try:
        named.update({
            folder_paths.get_user_directory(): "<user>", folder_paths.get_input_directory(): "<input>",
            folder_paths.get_output_directory(): "<output>", folder_paths.get_temp_directory(): "<temp>",
            folder_paths.models_dir: "<models>", str(SHIPPED_LIBRARY): "<shipped styles>",
            folder_paths.base_path: "<ComfyUI>", str(Path(__file__).resolve().parents[1]): "<sketch_rag>",
        })
        named.update({str(p): "<listed folder>" for p in access_policy().listed_folders()})
    except SketchRagError:
        pass  # a broken config file: ComfyUI's own folders are still replaced
    variants = {}
    for path, label in named.items():
        for form in {path, os.path.realpath(path), os.path.abspath(path)}:
            variants[form.rstrip("/")] = label
    for path in sorted(variants, key=len, reverse=True):
        if len(path) > 1:
            message = message.replace(path, variants[path])
    return message


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_errors(handler: Handler) -> Handler:
    """Our errors as JSON with the status the contract gives them; anything else is a bug (500, logged)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except ServerBusyError as exc:
            return _error(503, str(exc), headers={"Retry-After": str(RETRY_AFTER_S)})
        except StoreUnavailableError as exc:
            return _error(503, str(exc))
        except UploadInterruptedError as exc:
            logger.info("Style Library route %s %s: %s", request.method, request.path, exc)
            return _error(400, str(exc))
        except StyleNotFoundError as exc:
            return _error(404, str(exc))
        except AccessDeniedError as exc:
            return _error(403, str(exc))
        except UploadTooLargeError as exc:
            return _error(413, str(exc))
        except LibraryModelMismatchError as exc:
            return _error(409, str(exc))
        except SketchRagError as exc:
            return _error(400, str(exc))
        except Exception as exc:
            logger.exception("Style Library route %s %s failed.", request.method, request.path)
            # The detail (which may hold server paths) goes to the log, not to the client.
            return _error(500, f"Sketch RAG failed on {request.method} {request.path} ({type(exc).__name__}); "
                               "this is a bug, please report it with the ComfyUI log, which has the details.")

    return wrapped


def _required_id(query: Mapping[str, str]) -> str:
    item_id = query.get("id", "")
    if not item_id:
        raise InvalidParameterError("The id parameter is missing; give the id of a style from the style list.")
    return item_id


async def _read_limited(request: web.Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes, with or without a Content-Length."""
    if request.content_length is not None and request.content_length > limit:
        raise UploadTooLargeError(
            f"The request body is {request.content_length} bytes; this route takes at most {limit}."
        )
    data = bytearray()
    try:
        while chunk := await request.content.read(UPLOAD_CHUNK):
            data += chunk
            if len(data) > limit:
                raise UploadTooLargeError(f"The request body is over {limit} bytes; this route takes at most {limit}.")
    except (ClientPayloadError, ConnectionError, asyncio.IncompleteReadError) as exc:
        raise UploadInterruptedError(f"The request body was cut off ({type(exc).__name__}); send it again.") from exc
    return bytes(data)


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await _read_limited(request, MAX_JSON_BYTES)
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidParameterError(f"The request body is not JSON ({exc}); send a JSON object.") from exc
    if not isinstance(body, dict):
        raise InvalidParameterError(f"The request body is a JSON {type(body).__name__}; send a JSON object.")
    return body


# -- reading -------------------------------------------------------------------------------------


@json_errors
async def list_styles(request: web.Request) -> web.StreamResponse:
    params = LibraryParams.from_query(request.query)

    def work() -> dict[str, Any]:
        policy = access_policy()
        library = open_library_for(params, policy, sync=False)
        library.sync_if_changed()  # picks up files dropped into the folder by hand; one stat per folder if none
        records = library.entries()
        good = [r for r in records if r.error is None]
        return {
            "styles": [style_json(r, library, params) for r in good],
            "tags": sorted({t for r in good for t in r.meta.tags}),
            "writable": any(r.writable for r in library.roots) and in_write_scope(library, policy),
            "count": len(good),
            "skipped": [{"id": r.item_id, "error": r.error} for r in records if r.error is not None],
        }

    return web.json_response(await in_thread(READS, work))


def _served_file(params: LibraryParams, item_id: str, policy: AccessPolicy) -> tuple[Path, bytes, str]:
    """(path, bytes, content sha256) of a style's image, read without following links (see :func:`read_style`)."""
    library = open_library_for(params, policy, sync=False)
    record = find_style(library, item_id)
    path = library.path_of(record)
    policy.readable(root_of(library, record).path, input_name=f"folder of the style {item_id!r}", base=path.parent)
    read = read_style(library, record)
    same = (read.size, read.mtime_ns) == (record.size, record.mtime_ns)
    # A file changed since the last sync never gets the old content's hash (nor its cached thumbnail).
    return path, read.data, record.sha256 if same else hashlib.sha256(read.data).hexdigest()


@json_errors
async def get_thumbnail(request: web.Request) -> web.StreamResponse:
    params = LibraryParams.from_query(request.query)
    item_id = _required_id(request.query)

    def work() -> tuple[Path, str]:
        policy = access_policy()
        library = open_library_for(params, policy, sync=False)
        record = find_style(library, item_id)
        policy.readable(root_of(library, record).path, input_name=f"folder of the style {item_id!r}",
                        base=library.path_of(record).parent)
        cache = policy.writable(user_dir() / "thumbnails", input_name="thumbnail folder", base=user_dir())
        with open_style(library, record) as opened:  # no link followed, even for a cached thumbnail
            info = os.fstat(opened.fileno())
            if (info.st_size, info.st_mtime_ns) == (record.size, record.mtime_ns):
                cached = thumbnail_path(cache, record.sha256)
                if cached.is_file():
                    return cached, record.sha256  # the common case: no byte of the image is read
            data = opened.read()
        same = (info.st_size, info.st_mtime_ns) == (record.size, record.mtime_ns)
        sha256 = record.sha256 if same else hashlib.sha256(data).hexdigest()
        return thumbnail(library.path_of(record), sha256, cache, data=data), sha256

    thumb, sha256 = await in_thread(READS, work)
    cache = IMMUTABLE if request.query.get("v") == sha256[:16] else "no-cache"
    return web.FileResponse(thumb, headers={"Cache-Control": cache, "Content-Type": "image/jpeg",
                                            "X-Content-Type-Options": "nosniff"})


@json_errors
async def get_image(request: web.Request) -> web.StreamResponse:
    params = LibraryParams.from_query(request.query)
    item_id = _required_id(request.query)
    path, data, sha256 = await in_thread(READS, lambda: _served_file(params, item_id, access_policy()))
    cache = IMMUTABLE if request.query.get("v") == sha256[:16] else "no-cache"
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return web.Response(body=data, content_type=content_type,
                        headers={"Cache-Control": cache, "X-Content-Type-Options": "nosniff"})


def _search_query(body: Mapping[str, Any]) -> StyleQuery:
    text, k, tags = body.get("query"), body.get("k", DEFAULT_K), body.get("tags", [])
    if not isinstance(text, str) or not text.strip():
        raise InvalidParameterError(f"The search query is {text!r}; give a text such as 'ink wash landscape'.")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidParameterError(f"The search query is {len(text)} characters; use at most {MAX_QUERY_CHARS}.")
    # JSON's true/false would pass as the numbers 1/0; StyleQuery checks the ranges, as for the node.
    if isinstance(k, bool):
        raise InvalidParameterError(f"k is {k!r}; ask for 1 to {MAX_K} styles.")
    weight = body.get("text_weight", 0.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise InvalidParameterError(
            f"text_weight is {weight!r}; use 0 (style images only) to 1 (style names, tags and descriptions only)."
        )
    return StyleQuery(text=text, k=k, tags=checked_tags(tags), text_weight=float(weight))


def _result_json(match: StyleMatch, record: FileRecord, library: StyleLibrary,
                 params: LibraryParams) -> dict[str, Any]:
    style = style_json(record, library, params)
    result = {"id": match.item_id, "name": match.name, "score": match.score, "weight": match.weight,
              "tags": style["tags"], "thumbnail": style["thumbnail"], "image": style["image"]}
    # The score relative to the library for this query: raw cosines are not comparable across queries, these are.
    result["relative"] = {"z_score": match.z_score, "percentile": match.percentile}
    return result


@json_errors
async def search_styles(request: web.Request) -> web.StreamResponse:
    params = LibraryParams.from_query(request.query)
    query = _search_query(await _json_body(request))

    def work() -> dict[str, Any]:
        library = open_library_for(params, access_policy(), sync=False)
        start = time.perf_counter()
        matches = library.query(query)  # the CLIP Style Retriever's own call: the same ranking
        elapsed = (time.perf_counter() - start) * 1000
        # Each match carries the record it was ranked from: a sync since then cannot make its lookup fail.
        return {"results": [_result_json(m, m.record, library, params) for m in matches if m.record is not None],
                "ms": elapsed}

    return web.json_response(await in_thread(READS, work))


# -- writing -------------------------------------------------------------------------------------


def upload_limit() -> int:
    """Bytes one upload may have: ComfyUI's own ``--max-upload-size`` (its aiohttp ``client_max_size``)."""
    return max_upload_bytes()


@dataclass
class Upload:
    """One received file part: where it was staged, and the name the client gave it (display only)."""

    path: Path
    filename: str


async def _receive(request: web.Request, staging: Path, limit: int,
                   staged: list[int]) -> tuple[list[Upload], dict[str, str]]:
    """Stream the multipart body into ``staging``: the files, and the ``name``/``tags`` fields as text.

    Every byte written is counted in :data:`staging_budget` (and in ``staged[0]``, which the caller gives back
    once the folder is removed). A body cut off part-way is an :class:`UploadInterruptedError`.
    """
    try:
        return await _receive_parts(request, staging, limit, staged)
    except (ClientPayloadError, ConnectionError, asyncio.IncompleteReadError) as exc:
        raise UploadInterruptedError(
            f"The upload was cut off before its end ({type(exc).__name__}); nothing was added. Send it again."
        ) from exc
    except ValueError as exc:  # aiohttp's multipart parser on a malformed body
        if isinstance(exc, SketchRagError):
            raise
        raise InvalidParameterError(f"The upload is not valid multipart/form-data ({exc}); send it again.") from exc


async def _receive_parts(request: web.Request, staging: Path, limit: int,
                         staged: list[int]) -> tuple[list[Upload], dict[str, str]]:
    if request.content_length is not None and request.content_length > limit:
        raise UploadTooLargeError(
            f"The upload is {request.content_length} bytes; this server takes at most {limit} bytes per upload "
            "(ComfyUI's --max-upload-size). Add fewer or smaller images at a time."
        )
    if not request.content_type.startswith("multipart/"):
        raise InvalidParameterError(
            f"The upload is {request.content_type or 'untyped'}; send multipart/form-data with one or more "
            "'file' parts."
        )
    reader = await request.multipart()
    uploads: list[Upload] = []
    fields_: dict[str, str] = {}
    total = 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise InvalidParameterError("The upload holds a nested multipart part; send flat 'file' parts.")
        if part.name == "file":
            if len(uploads) >= MAX_FILES:
                raise InvalidParameterError(f"The upload has more than {MAX_FILES} files; add them in smaller groups.")
            path = staging / f"upload_{len(uploads)}"
            with path.open("wb") as out:
                while chunk := await part.read_chunk(UPLOAD_CHUNK):
                    total += len(chunk)
                    if total > limit:
                        raise UploadTooLargeError(
                            f"The upload is over {limit} bytes, the most this server takes per upload (ComfyUI's "
                            "--max-upload-size); add fewer or smaller images at a time."
                        )
                    staging_budget.take(len(chunk), STAGING_UPLOADS * limit)
                    staged[0] += len(chunk)
                    out.write(chunk)
            uploads.append(Upload(path, part.filename or ""))
        elif part.name in ("name", "tags"):
            data = bytearray()
            while chunk := await part.read_chunk(UPLOAD_CHUNK):
                data += chunk
                if len(data) > MAX_FIELD_BYTES:
                    raise InvalidParameterError(f"The {part.name} field is over {MAX_FIELD_BYTES} bytes; shorten it.")
            try:
                fields_[part.name] = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidParameterError(f"The {part.name} field is not UTF-8 text ({exc}).") from exc
        else:
            raise InvalidParameterError(
                f"The upload has an unknown field {str(part.name)[:80]!r}; the fields are 'file', 'name' and 'tags'."
            )
    if not uploads:
        raise InvalidParameterError("The upload has no 'file' part; attach one or more images.")
    return uploads, fields_


def checked_upload(upload: Upload) -> Path:
    """The staged file, decoded with the pack's image checks and renamed to its real format's extension.

    Raises:
        InvalidImageError: empty, not an image, a format a library does not take, too large, or damaged.
    """
    shown = upload.filename[:120] or upload.path.name
    try:
        image_format = decode_image(upload.path, lambda opened: opened.format, "uploaded image")
        suffix = UPLOAD_FORMATS.get(str(image_format))
        if suffix is None:
            raise InvalidImageError(
                f"it is a {image_format} file; a style library takes {', '.join(UPLOAD_FORMATS)} images"
            )
        open_rgb(upload.path, EMBED_SIDE)  # decode the pixels too: a truncated file fails here
    except InvalidImageError as exc:
        # The checks name the staged file; the user knows only the name they uploaded.
        reason = str(exc).replace(str(upload.path), shown).replace(upload.path.name, shown)
        raise InvalidImageError(f"The uploaded file {shown!r} cannot be added: {reason}") from exc
    final = upload.path.with_suffix(suffix)
    upload.path.rename(final)
    return final


def _upload_names(uploads: list[Upload], name: str) -> list[str]:
    """The Add node's rule: one file takes the name; several take 'name 1', 'name 2'; else the file's name."""
    if name.strip():
        return numbered_names(checked_name(name), len(uploads))
    names = []
    for upload in uploads:
        stem = posixpath.basename(upload.filename.replace("\\", "/"))
        names.append(checked_name(default_name(stem)[:MAX_NAME_CHARS]) if stem.strip(" ._-") else "uploaded style")
    return names


@json_errors
async def add_styles(request: web.Request) -> web.StreamResponse:
    params = LibraryParams.from_query(request.query)

    def writable() -> tuple[StyleLibrary, AccessPolicy]:
        policy = access_policy()
        return writable_library(params, policy), policy

    # A library this caller may not write is refused before a byte of the upload is read.
    library, policy = await in_thread(READS, writable)
    staging_root = Path(folder_paths.get_temp_directory())
    staging_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="sketch_rag_upload_", dir=staging_root))
    staged = [0]

    def remove_staged() -> None:
        shutil.rmtree(staging, ignore_errors=True)
        staging_budget.give_back(staged[0])

    try:
        uploads, form = await _receive(request, staging, upload_limit(), staged)
    except BaseException:  # refused, cut off, or cancelled: nothing may stay staged
        remove_staged()
        raise

    def work() -> dict[str, Any]:
        try:
            names = _upload_names(uploads, form.get("name", ""))
            tags = checked_tags(form.get("tags", ""))
            files = [checked_upload(u) for u in uploads]  # every file checked before the library is touched
            with _write_lock:
                added = library.add_many(files, names, tags, access=policy)
            # Each match carries the record the add wrote: the answer says what was added, as it was added.
            return {"added": [style_json(m.record, library, params) for m in added if m.record is not None]}
        finally:
            remove_staged()  # here, not in the handler: a client gone meanwhile must not pull the files away

    return web.json_response(await in_thread(WRITES, work))


@json_errors
async def edit_styles(request: web.Request) -> web.StreamResponse:
    params = LibraryParams.from_query(request.query)
    body = await _json_body(request)
    item_id = body.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise InvalidParameterError(f"The id is {item_id!r}; give the id of a style from the style list.")

    def work() -> dict[str, Any]:
        policy = access_policy()
        library = writable_library(params, policy)
        with _write_lock:
            record = edit_style(library, item_id, name=body.get("name"), tags=body.get("tags"), access=policy)
        return {"style": style_json(record, library, params)}

    return web.json_response(await in_thread(WRITES, work))


@json_errors
async def remove_style(request: web.Request) -> web.StreamResponse:
    params = LibraryParams.from_query(request.query)
    item_id = _required_id(request.query)

    def work() -> dict[str, Any]:
        policy = access_policy()
        library = writable_library(params, policy)
        user = Path(folder_paths.get_user_directory()).resolve()
        with _write_lock:
            trashed = trash_style(library, item_id, user_dir() / "trash", access=policy)
        return {
            "trashed": trashed.folder.relative_to(user).as_posix(),
            "files": [f.relative_to(user).as_posix() for f in trashed.files],
        }

    return web.json_response(await in_thread(WRITES, work))


def register_routes(routes: web.RouteTableDef | None = None) -> None:
    """Add the routes to ComfyUI's table (once), before ComfyUI adds the table to its app.

    Called from ``comfy_entrypoint``: ComfyUI loads custom nodes before ``PromptServer.add_routes``,
    which also serves every route under ``/api``.
    """
    global _registered
    if _registered:
        return
    if routes is None:
        routes = route_table()
        if routes is None:  # no server to serve them (comfy_host logged why); the nodes work without the tab
            return
    routes.get(f"{PREFIX}/styles")(list_styles)
    routes.post(f"{PREFIX}/styles")(add_styles)
    routes.patch(f"{PREFIX}/styles")(edit_styles)
    routes.delete(f"{PREFIX}/styles")(remove_style)
    routes.get(f"{PREFIX}/thumbnail")(get_thumbnail)
    routes.get(f"{PREFIX}/image")(get_image)
    routes.post(f"{PREFIX}/search")(search_styles)
    _registered = True
