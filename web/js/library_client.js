// The Style Library routes (/sketch_rag/library/...), as small async functions.
//
// Every call goes through ComfyUI's api.fetchApi, so the server's base URL, its /api prefix and the
// Comfy-User header are right wherever ComfyUI is mounted. A failed call throws LibraryRequestError
// carrying the server's own message ({"error": "..."}), which the tab shows to the user as it is.

import { api } from "../../../scripts/api.js";

const PREFIX = "/sketch_rag/library";

export class LibraryRequestError extends Error {
  constructor(message, status) {
    super(message);
    this.name = "LibraryRequestError";
    this.status = status;
  }
}

async function errorMessage(response, what) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === "string" && body.error) return body.error;
  } catch {
    // Not JSON (a proxy's page, a crash): fall through to the status line.
  }
  const detail = text.trim().slice(0, 200);
  return `${what} failed: HTTP ${response.status} ${response.statusText}${detail ? ` (${detail})` : ""}`;
}

async function call(what, route, options = {}) {
  let response;
  try {
    response = await api.fetchApi(PREFIX + route, options);
  } catch (error) {
    throw new LibraryRequestError(
      `${what} failed: the ComfyUI server did not answer (${error.message}); check that it is running.`, 0);
  }
  if (!response.ok) throw new LibraryRequestError(await errorMessage(response, what), response.status);
  return response.json();
}

function jsonBody(method, body) {
  return { method, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
}

/** Every style of the library: {styles, tags, writable, count}. */
export function listStyles() {
  return call("Listing the styles", "/styles");
}

/** Rank the styles for a text query, as the CLIP Style Retriever node does: {results, ms}. */
export function searchStyles(query, { k, tags, textWeight } = {}) {
  const body = { query };
  if (k) body.k = k;
  if (tags && tags.length) body.tags = tags;
  if (textWeight) body.text_weight = textWeight;
  return call("Searching the styles", "/search", jsonBody("POST", body));
}

/** Add image files to the user's library: {added}. ``name`` names a single file; ``tags`` is "a, b". */
export function addStyles(files, { name, tags } = {}) {
  const form = new FormData();
  for (const file of files) form.append("file", file, file.name);
  if (name && files.length === 1) form.append("name", name);
  if (tags) form.append("tags", tags);
  // No Content-Type header: the browser writes the multipart boundary itself.
  return call("Adding styles", "/styles", { method: "POST", body: form });
}

/** Change a user style's name and/or tags: {style}. */
export function editStyle(id, { name, tags }) {
  return call("Saving the style", "/styles", jsonBody("PATCH", { id, name, tags }));
}

/** Move a user style to the trash folder: {trashed}. */
export function trashStyle(id) {
  return call("Removing the style", `/styles?id=${encodeURIComponent(id)}`, { method: "DELETE" });
}

/** A URL the routes returned (relative to the server root) as one the browser can load. */
export function mediaURL(url) {
  if (/^(https?:|data:|blob:)/.test(url)) return url;
  const path = url.startsWith("/") ? url : `/${url}`;
  return path.startsWith("/api/") ? api.fileURL(path) : api.apiURL(path);
}
