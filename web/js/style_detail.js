// One style seen large: its image, its metadata, and (for the user's own styles) the edit and trash controls.
// Also the tiny DOM builder the tab uses, so neither module writes HTML strings (names and tags are user text).

import { mediaURL } from "./library_client.js";

/** Build an element: ``props`` are attributes, ``on*`` functions become listeners, true/false toggle. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else if (value !== false && value !== null && value !== undefined) node.setAttribute(key, String(value));
  }
  node.append(...children.filter((c) => c !== "" && c !== null && c !== undefined));
  return node;
}

const METADATA = [
  ["artist", "Artist"],
  ["title", "Title"],
  ["year", "Year"],
  ["source", "Source"],
  ["license", "Licence"],
  ["description", "Description"],
];

function metadataList(style) {
  const text = style.text || {};
  const rows = METADATA.filter(([key]) => text[key]).flatMap(([key, label]) => [
    el("dt", {}, label),
    el("dd", { "data-field": key }, String(text[key])),
  ]);
  rows.push(el("dt", {}, "Tags"), el("dd", { "data-field": "tags" }, style.tags.join(", ") || "none"));
  return el("dl", { class: "srl-meta" }, ...rows);
}

function editForm(style, save, trash) {
  const name = el("input", { type: "text", name: "name", value: style.name, required: true,
                             "aria-label": "Style name" });
  const tags = el("input", { type: "text", name: "tags", value: style.tags.join(", "),
                             "aria-label": "Style tags, comma separated" });
  const form = el("form", { class: "srl-edit", "aria-label": "Edit this style" },
                  el("label", {}, "Name", name), el("label", {}, "Tags", tags),
                  el("div", { class: "srl-row" },
                     el("button", { type: "submit" }, "Save"),
                     el("button", { type: "button", class: "srl-danger", onclick: trash }, "Move to trash")),
                  el("p", { class: "srl-hint" },
                     "Move to trash moves the image and its metadata to the trash folder in your ComfyUI user " +
                     "directory (user/sketch_rag/trash); nothing is deleted."));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    save(name.value.trim(), tags.value);
  });
  return form;
}

/** Fill ``container`` with the detail view of ``style``; ``actions`` holds back, save(name, tags), trash. */
export function renderDetail(container, style, actions) {
  const controls = style.writable
    ? editForm(style, actions.save, actions.trash)
    : el("p", { class: "srl-hint srl-readonly" },
         "A shipped style: read-only. Add your own images to edit and remove them.");
  container.replaceChildren(
    el("button", { type: "button", class: "srl-back", onclick: actions.back }, "← All styles"),
    el("img", { class: "srl-large", src: mediaURL(style.image), alt: style.name }),
    el("h3", {}, style.name),
    metadataList(style),
    controls,
  );
  container.dataset.id = style.id;
}
