// The "Style Library" sidebar tab: browse, search, add, tag and remove the styles the retriever picks from.
//
// A custom sidebar tab (app.extensionManager.registerSidebarTab, type "custom"): the frontend calls
// render(element) each time the tab opens and destroy() when it closes, so each opening builds a fresh
// StyleLibraryPanel that reads the library anew. All data comes from the pack's routes (library_client.js);
// shipped styles are read-only, additions and edits go to the user's library, removals go to its trash.

import { app } from "../../../scripts/app.js";
import * as client from "./library_client.js";
import { el, renderDetail } from "./style_detail.js";

const TAB_ID = "sketch-rag-style-library";
const STYLESHEET = new URL("../css/style_library_tab.css", import.meta.url).href;
const SEARCH_K = 16;

function loadStylesheet() {
  if (document.querySelector(`link[href="${STYLESHEET}"]`)) return;
  document.head.append(el("link", { rel: "stylesheet", href: STYLESHEET }));
}

function toast(severity, detail) {
  const life = severity === "error" ? 10000 : 4000;
  app.extensionManager?.toast?.add({ severity, summary: "Style Library", detail, life });
}

function plural(n, noun) {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}

function splitTags(text) {
  return text.split(",").map((t) => t.trim()).filter(Boolean);
}

const RELATIVE_LABELS = { z_score: "z", percentile: "percentile" };

/** The score relative to the library for this query (the route's ``relative``: z-score, percentile). */
function formatRelative(relative) {
  if (!relative || typeof relative !== "object") return "";
  return Object.entries(relative)
    .filter(([, v]) => typeof v === "number")
    .map(([k, v]) => `${RELATIVE_LABELS[k] ?? k} ${k === "percentile" ? Math.round(v) : v.toFixed(2)}`)
    .join(" · ");
}

class StyleLibraryPanel {
  constructor(root) {
    this.root = root;
    this.styles = [];
    this.byId = new Map();
    this.results = null; // ranked search results, or null when browsing
    this.staged = []; // files dropped or picked, waiting for "Add to library"
    this.build();
    this.refresh();
  }

  build() {
    this.root.classList.add("srl-tab");
    this.root.replaceChildren();
    this.count = el("span", { class: "srl-count" });
    this.query = el("input", { type: "search", name: "query", placeholder: "Search by text, e.g. ink wash",
                               "aria-label": "Search styles by text" });
    this.tagFilter = el("select", { name: "tag", "aria-label": "Filter by tag" });
    this.tagFilter.addEventListener("change", () => (this.results ? this.search() : this.renderGrid()));
    // The retriever node's text_weight: how much the styles' words (name, tags, description) count.
    this.textWeight = el("input", { type: "range", name: "text_weight", min: 0, max: 1, step: 0.05, value: 0,
                                    "aria-label": "Weight of the styles' words (name, tags, description)" });
    const shownWeight = el("output", {}, "0.00");
    this.textWeight.addEventListener("input", () => { shownWeight.textContent = this.weight().toFixed(2); });
    this.textWeight.addEventListener("change", () => { if (this.results) this.search(); });
    const words = el("label", { class: "srl-weight", title: "0 = style images only (the node's default)" },
                     "Words", this.textWeight, shownWeight);
    const search = el("form", { class: "srl-search", role: "search" }, this.query, this.tagFilter, words,
                      el("button", { type: "submit" }, "Search"),
                      el("button", { type: "button", onclick: () => this.clearSearch() }, "Clear"));
    search.addEventListener("submit", (event) => { event.preventDefault(); this.search(); });
    this.status = el("p", { class: "srl-status", role: "status", "aria-live": "polite" });
    this.grid = el("div", { class: "srl-grid", role: "list", "aria-label": "Styles" });
    this.detail = el("section", { class: "srl-detail", hidden: true, "aria-label": "Style details" });
    this.browse = el("div", { class: "srl-browse" }, this.buildAddForm(), this.grid);
    this.root.append(el("header", { class: "srl-header" }, el("h2", {}, "Style Library"), this.count),
                     search, this.status, this.browse, this.detail);
    for (const type of ["dragenter", "dragover"]) this.root.addEventListener(type, (e) => this.onDragOver(e));
    this.root.addEventListener("dragleave", (event) => {
      if (!this.root.contains(event.relatedTarget)) this.root.classList.remove("srl-dragging");
    });
    this.root.addEventListener("drop", (event) => this.onDrop(event));
  }

  buildAddForm() {
    this.picker = el("input", { type: "file", accept: "image/*", multiple: true, hidden: true,
                                "aria-label": "Image files to add" });
    this.picker.addEventListener("change", () => { this.stage([...this.picker.files]); this.picker.value = ""; });
    this.stagedList = el("ul", { class: "srl-staged", "aria-label": "Images to add" });
    this.newName = el("input", { type: "text", name: "name", placeholder: "Name (for a single image)",
                                 "aria-label": "Name of the new style" });
    this.newTags = el("input", { type: "text", name: "tags", placeholder: "Tags, comma separated",
                                 "aria-label": "Tags of the new style, comma separated" });
    this.addButton = el("button", { type: "submit", disabled: true }, "Add to library");
    this.hint = el("p", { class: "srl-hint" }, "Drop image files here to add them to your library, or ",
                   el("button", { type: "button", class: "srl-link", onclick: () => this.picker.click() },
                      "choose images…"));
    const form = el("form", { class: "srl-add", "aria-label": "Add styles" }, this.hint, this.picker,
                    this.stagedList, this.newName, this.newTags,
                    el("div", { class: "srl-row" }, this.addButton,
                       el("button", { type: "button", onclick: () => this.stage([], true) }, "Cancel")));
    form.addEventListener("submit", (event) => { event.preventDefault(); this.addStaged(); });
    this.addForm = form;
    return form;
  }

  onDragOver(event) {
    if (![...(event.dataTransfer?.types || [])].includes("Files")) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = this.writable ? "copy" : "none";
    this.root.classList.add("srl-dragging");
  }

  onDrop(event) {
    const files = [...(event.dataTransfer?.files || [])];
    if (!files.length) return;
    // Ours alone: ComfyUI's page-wide drop handler would open a dropped PNG as a workflow.
    event.preventDefault();
    event.stopPropagation();
    this.root.classList.remove("srl-dragging");
    if (!this.writable) {
      this.say("error", "This library takes no additions: it has no writable folder.");
      return;
    }
    this.stage(files);
  }

  stage(files, replace = false) {
    this.staged = replace ? files : [...this.staged, ...files];
    this.stagedList.replaceChildren(...this.staged.map((f) => el("li", {}, f.name)));
    this.addButton.disabled = !this.staged.length;
    this.addForm.classList.toggle("srl-has-files", this.staged.length > 0);
    this.newName.disabled = this.staged.length > 1;
    if (this.staged.length) {
      this.detail.hidden = true;
      this.browse.hidden = false;
      this.newName.focus();
    }
  }

  say(severity, message) {
    this.status.textContent = message;
    this.status.dataset.severity = severity;
    if (severity !== "info") toast(severity, message);
  }

  async run(what, work) {
    this.root.setAttribute("aria-busy", "true");
    try {
      return await work();
    } catch (error) {
      this.say("error", error instanceof client.LibraryRequestError ? error.message : `${what}: ${error}`);
      return undefined;
    } finally {
      this.root.removeAttribute("aria-busy");
    }
  }

  async refresh() {
    const listing = await this.run("Listing the styles", () => client.listStyles());
    if (!listing) return;
    this.styles = listing.styles;
    this.byId = new Map(listing.styles.map((s) => [s.id, s]));
    this.writable = Boolean(listing.writable);
    this.count.textContent = plural(listing.count, "style");
    this.addForm.hidden = !this.writable;
    const chosen = this.tagFilter.value;
    this.tagFilter.replaceChildren(el("option", { value: "" }, "All tags"),
                                   ...listing.tags.map((t) => el("option", { value: t }, t)));
    this.tagFilter.value = listing.tags.includes(chosen) ? chosen : "";
    const skipped = listing.skipped || [];
    if (skipped.length && !this.status.textContent) {
      // Files in the folders that are not readable images: said in the tab (never over a fresher message, such
      // as the outcome of an addition), not toasted at every opening.
      this.status.textContent = `${plural(skipped.length, "file")} in the library could not be read: ` +
        skipped.map((s) => `${s.id} (${s.error})`).join("; ");
      this.status.dataset.severity = "warn";
    }
    if (this.results) await this.search();
    else this.renderGrid();
  }

  weight() {
    return Number(this.textWeight.value);
  }

  async search() {
    const text = this.query.value.trim();
    if (!text) return this.clearSearch();
    const tags = this.tagFilter.value ? [this.tagFilter.value] : [];
    const options = { k: SEARCH_K, tags, textWeight: this.weight() };
    const found = await this.run("Searching", () => client.searchStyles(text, options));
    if (!found) return;
    this.results = found.results;
    const ranked = plural(found.results.length, "style");
    this.say("info", `${ranked} ranked for “${text}” in ${Math.round(found.ms)} ms.`);
    this.renderGrid();
  }

  clearSearch() {
    this.query.value = "";
    this.results = null;
    this.status.textContent = "";
    this.renderGrid();
  }

  renderGrid() {
    const tag = this.tagFilter.value;
    const items = this.results
      ? this.results.map((r, rank) => ({ ...this.byId.get(r.id), ...r, rank: rank + 1 }))
      : this.styles.filter((s) => !tag || s.tags.includes(tag));
    this.grid.classList.toggle("srl-ranked", Boolean(this.results));
    this.grid.replaceChildren(...items.map((item) => this.card(item)));
    if (!items.length) {
      const empty = this.results ? "No style matches this search." : "No styles here yet: drop images above.";
      this.grid.append(el("p", { class: "srl-empty" }, empty));
    }
  }

  card(item) {
    const score = item.rank
      ? el("span", { class: "srl-score", title: "Cosine similarity to the query (and relative to the library)" },
           `#${item.rank} · cos ${item.score.toFixed(3)}`,
           item.relative ? el("span", { class: "srl-relative" }, ` · ${formatRelative(item.relative)}`) : "")
      : "";
    // Lazy images: a 2,000-style library asks the server only for the thumbnails scrolled into view.
    const button = el("button", { type: "button", class: "srl-card", "data-id": item.id,
                                  "aria-label": `Show ${item.name}`, onclick: () => this.show(item.id) },
                      el("img", { src: client.mediaURL(item.thumbnail), alt: item.name, loading: "lazy",
                                  decoding: "async", width: 256, height: 256 }),
                      el("span", { class: "srl-name" }, item.name),
                      el("span", { class: "srl-tags" }, (item.tags || []).join(", ")),
                      score);
    if (item.rank) button.dataset.score = String(item.score);
    return el("div", { role: "listitem", class: item.writable ? "srl-user" : "srl-shipped" }, button);
  }

  show(id) {
    const style = this.byId.get(id);
    if (!style) return;
    renderDetail(this.detail, style, {
      back: () => this.hideDetail(),
      save: (name, tags) => this.save(style, name, tags),
      trash: () => this.trash(style),
    });
    this.browse.hidden = true;
    this.detail.hidden = false;
    this.detail.querySelector("button")?.focus();
  }

  hideDetail() {
    this.detail.hidden = true;
    this.browse.hidden = false;
  }

  async addStaged() {
    const files = this.staged;
    const name = this.newName.value.trim();
    const added = await this.run("Adding", () => client.addStyles(files, { name, tags: this.newTags.value }));
    if (!added) return;
    this.stage([], true);
    this.newName.value = "";
    this.newTags.value = "";
    const names = added.added.map((s) => `“${s.name}”`).join(", ");
    this.say("success", `Added ${names} to your library.`);
    await this.refresh();
  }

  async save(style, name, tagsText) {
    const edited = await this.run("Saving", () => client.editStyle(style.id, { name, tags: splitTags(tagsText) }));
    if (!edited) return;
    this.say("success", `Saved “${edited.style.name}”.`);
    await this.refresh();
    this.show(edited.style.id);
  }

  async trash(style) {
    const removed = await this.run("Removing", () => client.trashStyle(style.id));
    if (!removed) return;
    this.say("success", `Moved “${style.name}” to the trash folder ${removed.trashed} in ComfyUI's user ` +
                        "directory; move its files back to restore it.");
    this.hideDetail();
    await this.refresh();
  }
}

app.registerExtension({
  name: "sketch_rag.StyleLibraryTab",
  setup() {
    if (!app.extensionManager?.registerSidebarTab) {
      console.warn("[sketch_rag] this ComfyUI frontend has no sidebar tabs; the Style Library tab is off.");
      return;
    }
    loadStylesheet();
    app.extensionManager.registerSidebarTab({
      id: TAB_ID,
      icon: "pi pi-images",
      title: "Style Library",
      tooltip: "Sketch RAG style library: browse, search, add, tag and remove styles",
      label: "Styles",
      type: "custom",
      render: (element) => { new StyleLibraryPanel(element); },
    });
  },
});
