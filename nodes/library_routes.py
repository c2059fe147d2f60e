"""HTTP routes of the Style Library sidebar tab: list, thumbnails, images, search, add, edit, remove.

An adapter like the nodes: every route resolves its library from the same three parameters as
the Style Library node (``library``, ``store``, ``model`` = ``library_folder``, ``store``,
``embedding_model``) through the engine's ``resolve_location`` under the same :class:`~..access.AccessPolicy`
(``comfy_folders.access_policy``), and gets the very library object (and CLIP) the node uses from
``retrieval_nodes.shared_library``. Styles are named by id and looked up among the library's records, never
opened as paths, so no ``..``, absolute path or encoded traversal reaches a file. The contract the tab codes
against is the README's "Style Library tab" section.

Engine calls block (CLIP, Chroma, file I/O), so each runs in a worker thread, never on ComfyUI's
event loop. Uploads are streamed to ComfyUI's temp folder with a byte limit (ComfyUI's own
``--max-upload-size``) and decoded with the pack's image checks before the library is touched.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import posixpath
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import folder_paths
from aiohttp import BodyPartReader, web

from ..access import AccessPolicy
from ..errors import (
    AccessDeniedError,
    InvalidImageError,
    InvalidParameterError,
    LibraryError,
    LibraryModelMismatchError,
    SketchRagError,
    StyleNotFoundError,
    UploadTooLargeError,
)
from ..imaging import decode_image
from ..retrieval import (
    EMBED_SIDE,
    MAX_K,
    MAX_NAME_CHARS,
    FileRecord,
    StyleLibrary,
    StyleMatch,
    StyleQuery,
    checked_name,
    checked_tags,
    content_hash,
    default_name,
    edit_style,
    find_style,
    numbered_names,
    open_rgb,
    resolve_location,
    root_of,
    style_file,
    thumbnail,
    trash_style,
)
from .comfy_folders import access_policy, library_home, user_dir
from .retrieval_nodes import shared_library

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

_write_lock = threading.Lock()
"""Additions, edits and removals from the tab one at a time (the library's file lock covers other processes)."""
_registered = False


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


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_errors(handler: Handler) -> Handler:
    """Our errors as JSON with the status the contract gives them; anything else is a bug (500, logged)."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
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
    while chunk := await request.content.read(UPLOAD_CHUNK):
        data += chunk
        if len(data) > limit:
            raise UploadTooLargeError(f"The request body is over {limit} bytes; this route takes at most {limit}.")
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
        library = open_library_for(params, policy, sync=True)  # a sync picks up files dropped into the folder by hand
        records = library.entries()
        good = [r for r in records if r.error is None]
        return {
            "styles": [style_json(r, library, params) for r in good],
            "tags": sorted({t for r in good for t in r.meta.tags}),
            "writable": any(r.writable for r in library.roots),
            "count": len(good),
            "skipped": [{"id": r.item_id, "error": r.error} for r in records if r.error is not None],
        }

    return web.json_response(await asyncio.to_thread(work))


def _served_file(params: LibraryParams, item_id: str, policy: AccessPolicy) -> tuple[Path, FileRecord]:
    library = open_library_for(params, policy, sync=False)
    record = find_style(library, item_id)
    path = style_file(library, record)
    policy.readable(path, input_name=f"image of the style {item_id!r}", base=path.parent)
    return path, record


@json_errors
async def get_thumbnail(request: web.Request) -> web.StreamResponse:
    params = LibraryParams.from_query(request.query)
    item_id = _required_id(request.query)

    def work() -> tuple[Path, str]:
        policy = access_policy()
        path, record = _served_file(params, item_id, policy)
        sha256 = content_hash(path, record)
        cache = policy.writable(user_dir() / "thumbnails", input_name="thumbnail folder", base=user_dir())
        return thumbnail(path, sha256, cache), sha256

    thumb, sha256 = await asyncio.to_thread(work)
    cache = IMMUTABLE if request.query.get("v") == sha256[:16] else "no-cache"
    return web.FileResponse(thumb, headers={"Cache-Control": cache, "Content-Type": "image/jpeg",
                                            "X-Content-Type-Options": "nosniff"})


@json_errors
async def get_image(request: web.Request) -> web.StreamResponse:
    params = LibraryParams.from_query(request.query)
    item_id = _required_id(request.query)

    def work() -> tuple[Path, str]:
        path, record = _served_file(params, item_id, access_policy())
        return path, content_hash(path, record)

    path, sha256 = await asyncio.to_thread(work)
    cache = IMMUTABLE if request.query.get("v") == sha256[:16] else "no-cache"
    return web.FileResponse(path, headers={"Cache-Control": cache, "X-Content-Type-Options": "nosniff"})


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
        records = library.synced_records()
        return {"results": [_result_json(m, records[m.item_id], library, params) for m in matches], "ms": elapsed}

    return web.json_response(await asyncio.to_thread(work))


# -- writing -------------------------------------------------------------------------------------


def upload_limit() -> int:
    """Bytes one upload may have: ComfyUI's own ``--max-upload-size`` (its aiohttp ``client_max_size``)."""
    from comfy.cli_args import args

    return round(float(args.max_upload_size) * 1024 * 1024)


@dataclass
class Upload:
    """One received file part: where it was staged, and the name the client gave it (display only)."""

    path: Path
    filename: str


async def _receive(request: web.Request, staging: Path, limit: int) -> tuple[list[Upload], dict[str, str]]:
    """Stream the multipart body into ``staging``: the files, and the ``name``/``tags`` fields as text."""
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

    def writable_library() -> tuple[StyleLibrary, AccessPolicy]:
        policy = access_policy()
        library = open_library_for(params, policy, sync=False)
        try:
            library.write_root()
        except LibraryError as exc:  # the shipped styles alone, or a folder the config lists read-only
            raise AccessDeniedError(str(exc)) from exc
        return library, policy

    # A library this caller may not write is refused before a byte of the upload is read.
    library, policy = await asyncio.to_thread(writable_library)
    staging_root = Path(folder_paths.get_temp_directory())
    staging_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sketch_rag_upload_", dir=staging_root) as staging:
        uploads, form = await _receive(request, Path(staging), upload_limit())

        def work() -> dict[str, Any]:
            names = _upload_names(uploads, form.get("name", ""))
            tags = checked_tags(form.get("tags", ""))
            files = [checked_upload(u) for u in uploads]  # every file checked before the library is touched
            with _write_lock:
                added = library.add_many(files, names, tags, access=policy)
            records = library.synced_records()
            return {"added": [style_json(records[m.item_id], library, params) for m in added]}

        return web.json_response(await asyncio.to_thread(work))


@json_errors
async def edit_styles(request: web.Request) -> web.StreamResponse:
    params = LibraryParams.from_query(request.query)
    body = await _json_body(request)
    item_id = body.get("id")
    if not isinstance(item_id, str) or not item_id:
        raise InvalidParameterError(f"The id is {item_id!r}; give the id of a style from the style list.")

    def work() -> dict[str, Any]:
        policy = access_policy()
        library = open_library_for(params, policy, sync=False)
        with _write_lock:
            record = edit_style(library, item_id, name=body.get("name"), tags=body.get("tags"), access=policy)
        return {"style": style_json(record, library, params)}

    return web.json_response(await asyncio.to_thread(work))


@json_errors
async def remove_style(request: web.Request) -> web.StreamResponse:
    params = LibraryParams.from_query(request.query)
    item_id = _required_id(request.query)

    def work() -> dict[str, Any]:
        policy = access_policy()
        library = open_library_for(params, policy, sync=False)
        user = Path(folder_paths.get_user_directory()).resolve()
        with _write_lock:
            trashed = trash_style(library, item_id, user_dir() / "trash", access=policy)
        return {
            "trashed": trashed.folder.relative_to(user).as_posix(),
            "files": [f.relative_to(user).as_posix() for f in trashed.files],
        }

    return web.json_response(await asyncio.to_thread(work))


def register_routes(routes: web.RouteTableDef | None = None) -> None:
    """Add the routes to ComfyUI's table (once), before ComfyUI adds the table to its app.

    Called from ``comfy_entrypoint``: ComfyUI loads custom nodes before ``PromptServer.add_routes``,
    which also serves every route under ``/api``.
    """
    global _registered
    if _registered:
        return
    if routes is None:
        from server import PromptServer

        routes = PromptServer.instance.routes
    routes.get(f"{PREFIX}/styles")(list_styles)
    routes.post(f"{PREFIX}/styles")(add_styles)
    routes.patch(f"{PREFIX}/styles")(edit_styles)
    routes.delete(f"{PREFIX}/styles")(remove_style)
    routes.get(f"{PREFIX}/thumbnail")(get_thumbnail)
    routes.get(f"{PREFIX}/image")(get_image)
    routes.post(f"{PREFIX}/search")(search_styles)
    _registered = True
