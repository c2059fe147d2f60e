"""Style Library tab benchmark: time from opening the sidebar tab to every thumbnail shown, in a real browser.

Measured inside the page (``performance.now()``): a click on the tab's sidebar button, then every frame until the
grid holds one ``<img>`` per style (the count the tab itself read from the server) and each one in view is
``complete`` with pixels (``*_ms``: what the user sees; the grid loads thumbnails lazily); then every ``<img>`` is
switched to eager loading and the clock runs on until all are complete (``*_all_ms``: as if scrolled to the end).
Each library size is measured three ways:

- ``cold_ms``: the first opening; the server syncs the index and generates every thumbnail.
- ``cached_ms``: a fresh browser page with an empty browser cache; the thumbnails come from the server's cache
  (``user/sketch_rag/thumbnails``). This is the figure a user meets each time they open ComfyUI.
- ``reopen_ms``: the tab closed and opened again in the same page (the browser's memory cache), median of runs.

``list_route_ms`` is the part of each spent in the style list request (the browser's resource timing), so the
rest is the page building the grid and decoding the thumbnails in view.

First for the shipped library, then for one of ``--styles`` styles (the shipped ones plus generated 256 px
JPEGs in the user's styles folder). A real ComfyUI (``.comfyui/``) with the pack copied into custom_nodes,
the tiny CLIP as the embedding model, Debian's chromium headless through Playwright. Ends with one JSON line.

    PYTHONPATH=.pypath .venv/bin/python bench/library_tab.py             # shipped + 2,000 styles (~2 min)
    PYTHONPATH=.pypath .venv/bin/python bench/library_tab.py --styles 300
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

if __package__ in (None, ""):  # run as a script: make the pack importable as sketch_rag
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
PACK_IGNORE = shutil.ignore_patterns(".venv", ".comfyui", ".pypath", ".git", "tests", "test-artifacts", "bench",
                                     "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache")
TAB_BUTTON = ".sketch-rag-style-library-tab-button"
OPEN_TAB_UNTIL_SHOWN = """async ([button, timeoutMs]) => {
    const frame = () => new Promise(resolve => requestAnimationFrame(resolve));
    const shown = i => i.complete && i.naturalWidth > 0;
    performance.clearResourceTimings();  // the buffer (250 entries by default) is full after ComfyUI's own load
    performance.setResourceTimingBufferSize(10000);
    const start = performance.now();
    const until = async (done, what) => {
        while (performance.now() - start < timeoutMs) {
            await frame();
            const result = done();
            if (result) return result;
        }
        throw new Error(`the tab did not show ${what} within ${timeoutMs} ms`);
    };
    document.querySelector(button).click();
    const visible = await until(() => {
        const tab = document.querySelector('.srl-tab');
        const count = parseInt(tab?.querySelector('.srl-count')?.textContent ?? '', 10);
        const images = [...document.querySelectorAll('.srl-tab .srl-grid .srl-card img')];
        if (!(count > 0) || images.length !== count) return null;
        const view = tab.getBoundingClientRect();
        const inView = images.filter(i => {
            const r = i.getBoundingClientRect();
            return r.bottom > view.top && r.top < view.bottom && r.right > view.left && r.left < view.right;
        });
        return inView.length && inView.every(shown) ? {ms: performance.now() - start, count, in_view: inView.length}
                                                     : null;
    }, 'the thumbnails in view');
    // Then every thumbnail, as a user scrolling to the end would load them.
    const images = [...document.querySelectorAll('.srl-tab .srl-grid .srl-card img')];
    for (const image of images) image.loading = 'eager';
    const all = await until(() => images.every(shown) && performance.now() - start, 'every thumbnail');
    const listing = performance.getEntriesByType('resource')
        .filter(e => e.name.includes('/sketch_rag/library/styles') && e.startTime >= start).pop();
    return {visible_ms: visible.ms, all_ms: all, count: visible.count, in_view: visible.in_view,
            list_ms: listing ? listing.duration : null};
}"""
"""Open the tab; wait for the thumbnails in view, then for all of them: times by the page's own clock."""
TIMEOUT_MS = 600_000


def write_styles(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` distinct 256 px JPEGs (smooth colour fields, so they compress like pictures, not like noise)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(small).resize((256, 256), Image.Resampling.BICUBIC).save(
            folder / f"generated_{i:05d}.jpg", quality=85)


def post_settings(url: str, settings: dict[str, Any]) -> None:
    request = urllib.request.Request(f"{url}/settings", data=json.dumps(settings).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def open_page(browser: Any, url: str) -> Any:
    """A new page in a new context (an empty browser cache), with ComfyUI loaded and our tab registered."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.goto(url, wait_until="domcontentloaded", timeout=120_000)
    page.wait_for_function("() => window.app && window.app.graph", timeout=120_000)
    page.locator(TAB_BUTTON).wait_for(timeout=60_000)
    page.wait_for_timeout(1000)  # let the frontend settle (fonts, node definitions) before the clock starts
    return page


def open_tab(page: Any) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(OPEN_TAB_UNTIL_SHOWN, [TAB_BUTTON, TIMEOUT_MS])
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}


def close_tab(page: Any) -> None:
    page.locator(TAB_BUTTON).click()
    page.locator(".srl-tab").wait_for(state="detached")


def measure(browser: Any, url: str, runs: int) -> dict[str, Any]:
    """Cold, cached-on-server and reopened timings for the library the server has now."""
    page = open_page(browser, url)
    cold = open_tab(page)
    page.context.close()
    page = open_page(browser, url)
    cached = open_tab(page)
    reopen = []
    for _ in range(runs):
        close_tab(page)
        reopen.append(open_tab(page))
    page.context.close()
    return {"styles": cached["count"], "in_view": cached["in_view"],
            "cold_ms": cold["visible_ms"], "cold_all_ms": cold["all_ms"],
            "cached_ms": cached["visible_ms"], "cached_all_ms": cached["all_ms"],
            "reopen_ms": statistics.median(r["visible_ms"] for r in reopen),
            "reopen_all_ms": statistics.median(r["all_ms"] for r in reopen),
            "reopen_runs_ms": [r["visible_ms"] for r in reopen],
            "list_route_ms": {"cold": cold["list_ms"], "cached": cached["list_ms"],
                              "reopen": statistics.median(r["list_ms"] for r in reopen)}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--styles", type=int, default=2000, help="styles in the large library (default 2000)")
    parser.add_argument("--runs", type=int, default=3, help="reopenings measured per library (default 3)")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from sketch_rag.cli.comfyui_install import install_comfyui
    from sketch_rag.cli.comfyui_server import free_port, start_server
    from sketch_rag.tiny_models.files import write_tiny_models

    if not CHROMIUM.exists():
        raise SystemExit("Debian's chromium is not installed: apt-get install -y chromium")
    rows = []
    with tempfile.TemporaryDirectory(prefix="sketch_rag_tab_bench_") as tmp:
        base = Path(tmp)
        shutil.copytree(REPO, base / "custom_nodes" / "sketch_rag", ignore=PACK_IGNORE)
        for folder in ("input", "output", "user", "temp"):
            (base / folder).mkdir()
        write_tiny_models(base / "models")
        server = start_server(install_comfyui(REPO / ".comfyui", requirements=False), port=free_port(), cpu=True,
                              log_path=base / "comfyui.log",
                              extra_args=("--base-directory", str(base), "--database-url", "sqlite:///:memory:"),
                              env={"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
        try:
            post_settings(server.url, {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False})
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                                     args=CHROMIUM_FLAGS)
                try:
                    rows.append({"library": "shipped", **measure(browser, server.url, args.runs)})
                    shipped = rows[0]["styles"]
                    start = time.perf_counter()
                    write_styles(base / "user" / "sketch_rag" / "styles", max(args.styles - shipped, 0))
                    written_s = time.perf_counter() - start
                    rows.append({"library": f"{args.styles}", **measure(browser, server.url, args.runs),
                                 "write_files_s": round(written_s, 1)})
                finally:
                    browser.close()
        finally:
            server.stop()
    for row in rows:
        print(f"{row['library']:>8}: {row['styles']} styles ({row['in_view']} in view); in view / all shown after: "
              f"first open {row['cold_ms']:.0f} / {row['cold_all_ms']:.0f} ms (sync + thumbnails), "
              f"cached {row['cached_ms']:.0f} / {row['cached_all_ms']:.0f} ms, "
              f"reopened {row['reopen_ms']:.0f} / {row['reopen_all_ms']:.0f} ms", file=sys.stderr)
    print(json.dumps({"bench": "library_tab", "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
