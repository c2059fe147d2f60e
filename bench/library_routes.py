"""Style Library tab benchmark: what the tab waits for, measured through the real routes of a real ComfyUI.

A ComfyUI (``.comfyui/ComfyUI``, CPU, the tiny CLIP) with the pack linked in, a fresh base folder,
and two libraries: the shipped styles (the default library) and a generated one of ``--styles``
images (640×480 JPEGs of smooth noise, so thumbnails cost what photos cost). For each:

- ``open_sync_s``: the first list, which opens the library and embeds every image (once per server);
- ``list_ms``: the list route again (a sync of an unchanged folder, then the JSON);
- ``tab_open_uncached_ms`` / ``tab_open_cached_ms``: list + fetch every thumbnail with 6 parallel
  connections (a browser's per-host limit), before and after the thumbnails exist in the server's cache
  (a browser that has seen them fetches none: their URLs are versioned and marked immutable);
- ``first_screen_cached_ms``: list + the first :data:`FIRST_SCREEN` thumbnails, what a tab that loads
  images lazily waits for before its first screenful is shown;
- ``search_ms_median`` / ``search_ms_p90``: round trip of the search route over ``--calls`` prompts
  (after one warm-up), with ``search_engine_ms_median``, the engine's own share the route reports.

    python bench/library_routes.py              # shipped + 2,000 styles
    python bench/library_routes.py --styles 300 # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import numpy as np
import requests
from PIL import Image

if __package__ in (None, ""):  # run as a script: make the pack importable as sketch_rag
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

PREFIX = "/sketch_rag/library"
MODEL = "tiny-random-clip"
PARALLEL = 6
FIRST_SCREEN = 48
"""Thumbnails in a first screenful of the tab's grid (e.g. 4 columns x 12 rows of a tall sidebar)."""
PROMPTS = (
    "a watercolour painting of a quiet harbour at dawn", "ukiyo-e woodblock print of waves",
    "an ink wash landscape with mountains", "expressionist oil painting, swirling sky",
    "a pencil sketch of a cathedral", "flat colour poster, bold shapes", "a gilded portrait with patterns",
    "impressionist water lilies", "a dark candle-lit interior", "abstract composition with circles",
)


def write_styles(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` photo-sized JPEGs of smooth random colour (a 8×6 noise image scaled up), one per style."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        small.resize((640, 480), Image.Resampling.BICUBIC).save(folder / f"style_{i:05d}.jpg", quality=88)


def fetch_all(session_urls: list[str]) -> float:
    """Milliseconds to fetch every URL with :data:`PARALLEL` connections; every answer must be a 200 image."""
    sessions = [requests.Session() for _ in range(PARALLEL)]

    def get(args: tuple[int, str]) -> int:
        n, url = args
        response = sessions[n % PARALLEL].get(url, timeout=300)
        if response.status_code != 200 or not response.headers["Content-Type"].startswith("image/"):
            raise RuntimeError(f"{url}: {response.status_code} {response.text[:200]}")
        return len(response.content)

    start = time.perf_counter()
    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(get, enumerate(session_urls)))
    return (time.perf_counter() - start) * 1000


def measure(url: str, library: str, calls: int) -> dict[str, Any]:
    params = {"model": MODEL, **({"library": library} if library else {})}

    def listing() -> dict[str, Any]:
        response = requests.get(f"{url}{PREFIX}/styles", params=params, timeout=1800)
        response.raise_for_status()
        return response.json()

    start = time.perf_counter()
    styles = listing()
    open_sync_s = time.perf_counter() - start
    start = time.perf_counter()
    styles = listing()
    list_ms = (time.perf_counter() - start) * 1000

    def tab_open(first: int | None = None) -> float:
        start = time.perf_counter()
        shown = listing()["styles"][:first]
        fetch_all([f"{url}{s['thumbnail']}" for s in shown])
        return (time.perf_counter() - start) * 1000

    uncached, cached, first_screen = tab_open(), tab_open(), tab_open(FIRST_SCREEN)
    session = requests.Session()

    def search(prompt: str) -> tuple[float, float]:
        start = time.perf_counter()
        response = session.post(f"{url}{PREFIX}/search", params=params, json={"query": prompt, "k": 8}, timeout=300)
        response.raise_for_status()
        return (time.perf_counter() - start) * 1000, float(response.json()["ms"])

    search(PROMPTS[0])
    rounds = [search(PROMPTS[n % len(PROMPTS)]) for n in range(calls)]
    totals = sorted(r[0] for r in rounds)
    return {
        "count": styles["count"],
        "open_sync_s": round(open_sync_s, 2),
        "list_ms": round(list_ms, 1),
        "tab_open_uncached_ms": round(uncached, 1),
        "tab_open_cached_ms": round(cached, 1),
        "first_screen_cached_ms": round(first_screen, 1),
        "search_ms_median": round(statistics.median(totals), 2),
        "search_ms_p90": round(totals[int(0.9 * (len(totals) - 1))], 2),
        "search_engine_ms_median": round(statistics.median(r[1] for r in rounds), 2),
    }


def main() -> None:
    from sketch_rag.cli.comfyui_install import install_comfyui
    from sketch_rag.cli.comfyui_server import free_port, link_pack, start_server
    from sketch_rag.tiny_models.files import write_tiny_models

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--styles", type=int, default=2000, help="size of the generated library")
    parser.add_argument("--calls", type=int, default=30, help="search calls per library (median of these)")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="bench_library_routes_") as tmp:
        base = Path(tmp)
        link_pack(base)
        for folder in ("input", "output", "user", "temp"):
            (base / folder).mkdir()
        write_tiny_models(base / "models")
        start = time.perf_counter()
        write_styles(base / "user" / "sketch_rag" / "libraries" / "generated", args.styles)
        generate_s = time.perf_counter() - start
        comfy_dir = install_comfyui(repo / ".comfyui", requirements=False)
        server = start_server(comfy_dir, port=free_port(), cpu=True, log_path=base / "comfyui.log",
                              extra_args=("--base-directory", str(base), "--database-url", "sqlite:///:memory:"),
                              env={"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
        try:
            shipped = measure(server.url, "", args.calls)
            generated = measure(server.url, "generated", args.calls)
        finally:
            server.stop()
    # The load average says how much the figures are inflated by other work on the machine.
    print(json.dumps({"bench": "library_routes", "parallel_fetches": PARALLEL, "search_calls": args.calls,
                      "cpu_count": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 1),
                      "generate_s": round(generate_s, 1), "shipped": shipped, f"generated_{args.styles}": generated}))


if __name__ == "__main__":
    main()
