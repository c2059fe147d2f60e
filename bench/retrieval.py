"""Style retrieval benchmark: search latency and recall against exact numpy search, end to end, sync.

Everything in one run, ending with one JSON line. Everything measured goes through the library
the nodes use (``StyleLibrary``, synced from a folder of image files into Chroma), not a bare index.

Data is CLIP-like: 512-d unit vectors in clusters, with text-like queries shifted by a shared
"modality gap" direction (text→image queries are out of distribution, which is what makes HNSW
recall hard). Each library image is a tiny solid-colour PNG whose colour is its row number, and
the benchmark's embedder maps it back to that row's vector, so the index holds exactly the data
that numpy searches. A 10% tag marks items for the filtered measure. The end-to-end figure encodes
real prompts with a full-size ViT-B/32 text tower (random weights, the shipped CLIP tokenizer)
through ``ClipEmbedder``, at the precision the pack picks for this CPU and at fp32 side by side.

    python bench/retrieval.py            # 1k / 10k / 100k (minutes: the 100k sync)
    python bench/retrieval.py --quick    # 1k / 5k, under a minute
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import numpy as np

if __package__ in (None, ""):  # run as a script: make the pack importable as sketch_rag
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DIM = 512
K = 5
QUERIES = 500
TAG = "tagged"
SEED_E2E_MS = 200.0
PROMPTS = (
    "a watercolour painting of a quiet harbour at dawn, soft light, loose brushwork",
    "brutalist concrete house on a cliff",
    "cozy wooden cabin interior, warm evening light, studio ghibli style",
    "cyberpunk street at night, neon signs, rain",
    "pencil sketch of a cathedral facade",
    "minimalist scandinavian living room, white oak, soft daylight",
    "ukiyo-e woodblock print of waves",
    "industrial loft with exposed brick and steel beams",
)


def clip_like(n: int, rng: np.random.Generator, clusters: int = 256) -> np.ndarray:
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    data = centres[rng.integers(0, clusters, n)] + 0.9 * rng.standard_normal((n, DIM)).astype(np.float32)
    return (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)


def text_like(data: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    gap = rng.standard_normal(DIM).astype(np.float32)
    gap /= np.linalg.norm(gap)
    picks = data[rng.integers(0, len(data), m)]
    q = picks + 0.6 * gap + 0.5 * rng.standard_normal((m, DIM)).astype(np.float32) / np.sqrt(DIM) * 8
    # float32 like a real query vector: a float64 query would make numpy convert the whole matrix per search.
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def percentiles(times: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(times) * 1000
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def full_size_text_encoder(precision: str) -> Any:
    """A ``ClipEmbedder`` with openai/clip-vit-base-patch32's architecture (random weights) and the real tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from sketch_rag.rendering.architectures import CONFIG_DIR
    from sketch_rag.retrieval.embedder import ClipEmbedder

    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    model = CLIPModel(CLIPConfig()).to(dtype).eval()  # type: ignore[arg-type]  # ViT-B/32 is CLIPConfig's default
    tokenizer = CLIPTokenizer.from_pretrained(CONFIG_DIR / "sd15" / "tokenizer")  # the CLIP BPE vocabulary
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer)
    return ClipEmbedder(model=model, processor=processor, name="vit-b-32-random", fingerprint="0" * 64)


class RowEmbedder:
    """Images → the data row their colour encodes; prompts → a full-size CLIP text tower.

    The styles' own words (which the sync embeds too: here their file names, "000123") get a unit
    vector seeded by the text, near the modality gap like a prompt's; encoding 100k of them through
    the full-size tower would time the tower, not the library.
    """

    model_key = "bench-clip-like@0"
    dim = DIM

    def __init__(self, data: np.ndarray, text: Any) -> None:
        self.data = data
        self.text = text

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if all(t in PROMPTS for t in texts):
            out: np.ndarray = self.text.embed_texts(texts)
            return out
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
            vec = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
            rows.append(vec / np.linalg.norm(vec))
        return np.stack(rows)

    def embed_images(self, images: Sequence[Any], **_: Any) -> np.ndarray:
        rows = []
        for image in images:
            r, g, b = image.getpixel((0, 0))
            rows.append((r << 16) | (g << 8) | b)
        return self.data[rows]


def write_library(folder: Path, n: int, tagged: np.ndarray) -> None:
    """``n`` solid-colour 8×8 PNGs (colour = row number) in folders of 1,000, and a manifest tagging 10%."""
    from PIL import Image

    manifest = []
    for i in range(n):
        relpath = f"{i // 1000:03d}/{i:06d}.png"
        (folder / relpath).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), ((i >> 16) & 255, (i >> 8) & 255, i & 255)).save(folder / relpath)
        if tagged[i]:
            manifest.append({"file": relpath, "tags": [TAG]})
    (folder / "library.json").write_text(json.dumps(manifest))


def row_of(item_id: str) -> int:
    return int(Path(item_id).stem)


def bench_size(n: int, workdir: Path, rng: np.random.Generator, text: Any) -> dict[str, Any]:
    from sketch_rag.retrieval.folder import LibraryRoot
    from sketch_rag.retrieval.library import open_library

    data = clip_like(n, rng)
    tagged = rng.random(n) < 0.10
    queries = text_like(data, QUERIES, rng)
    folder = workdir / f"library_{n}"
    write_library(folder, n, tagged)
    embedder = RowEmbedder(data, text)
    roots = [LibraryRoot(folder, "")]
    (library, report), sync_s = timed(lambda: open_library(roots, embedder, workdir / f"store_{n}"))
    assert report.total == n and report.embedded == n, report.to_json()
    (_, again), unchanged_s = timed(lambda: open_library(roots, embedder, workdir / f"store_{n}"))
    assert again.embedded == 0 and again.total == n, again.to_json()
    library.index.refresh()  # as a fresh process would open it
    library.search(queries[0], K)  # the first search loads the HNSW index
    _, filter_first_s = timed(lambda: library.search(queries[0], K, (TAG,)))  # gathers the tagged rows once

    search_times, numpy_times, recalls, f_times, f_recalls = [], [], [], [], []
    def exact_search(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = data @ q
        return scores, np.argpartition(-scores, K)[:K]

    for q in queries:
        hits, seconds = timed(partial(library.search, q, K))
        search_times.append(seconds)
        (scores, exact), seconds = timed(partial(exact_search, q))
        numpy_times.append(seconds)
        recalls.append(len({row_of(h.item_id) for h in hits} & set(exact.tolist())) / K)
        fhits, seconds = timed(partial(library.search, q, K, (TAG,)))
        f_times.append(seconds)
        truth = set(np.argsort(-np.where(tagged, scores, -np.inf))[:K].tolist())
        f_recalls.append(len({row_of(h.item_id) for h in fhits} & truth) / K)
    p50, p99 = percentiles(search_times)
    f50, f99 = percentiles(f_times)
    return {
        "n": n, "sync_s": sync_s, "sync_unchanged_s": unchanged_s, "search_p50_ms": p50, "search_p99_ms": p99,
        "recall_at_5": float(np.mean(recalls)), "filtered_p50_ms": f50, "filtered_p99_ms": f99,
        "filtered_first_ms": filter_first_s * 1000, "filtered_recall_at_5": float(np.mean(f_recalls)),
        "numpy_p50_ms": percentiles(numpy_times)[0], "_library": library,
    }


def bench_e2e(library: Any, encoders: dict[str, Any], runs: int, text_weight: float = 0.0) -> dict[str, float]:
    """Text queries through ``StyleLibrary.query`` (tokenise, encode, search, look up, score relative to the
    library), p50 ms per encoder; ``text_weight`` > 0 mixes in the styles' words (exact, over both matrices).

    The encoders take turns query by query, so a noisy spell of the machine hits them alike.
    """
    from sketch_rag.retrieval.query import StyleQuery

    times: dict[str, list[float]] = {name: [] for name in encoders}
    for i in range(runs + 3):
        for name, encoder in encoders.items():
            library.embedder.text = encoder
            query = StyleQuery(text=PROMPTS[i % len(PROMPTS)], k=K, text_weight=text_weight)
            _, seconds = timed(partial(library.query, query))
            times[name].append(seconds)
    return {name: percentiles(t[3:])[0] for name, t in times.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1k and 5k items: a smoke run")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads for the text encoder (default: torch's own choice)")
    args = parser.parse_args(argv)
    import torch

    from sketch_rag.retrieval.embedder import auto_precision
    from sketch_rag.retrieval.query import StyleQuery

    if args.threads:
        torch.set_num_threads(args.threads)
    precision = auto_precision("cpu")
    text = full_size_text_encoder(precision)
    sizes = (1_000, 5_000) if args.quick else (1_000, 10_000, 100_000)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sketch-rag-bench-") as tmp:
        workdir = Path(tmp)
        for n in sizes:
            row = bench_size(n, workdir, rng, text)
            rows.append(row)
            print(f"n={n:>7}: sync {row['sync_s']:.1f} s (unchanged {row['sync_unchanged_s']:.3f} s), search p50 "
                  f"{row['search_p50_ms']:.2f} ms p99 {row['search_p99_ms']:.2f} ms, "
                  f"recall@5 {row['recall_at_5']:.3f}; "
                  f"filtered p50 {row['filtered_p50_ms']:.2f} ms (first {row['filtered_first_ms']:.0f} ms) recall@5 "
                  f"{row['filtered_recall_at_5']:.3f}; numpy p50 {row['numpy_p50_ms']:.2f} ms "
                  f"({row['numpy_p50_ms'] / row['search_p50_ms']:.1f}x the index)", flush=True)
        last = rows[-1]
        encoders = {precision: text, "fp32": full_size_text_encoder("fp32") if precision != "fp32" else text}
        e2e_all = bench_e2e(last["_library"], encoders, 10 if args.quick else 40)
        e2e, fp32 = e2e_all[precision], e2e_all["fp32"]
        (_, words_first_s) = timed(lambda: last["_library"].query(StyleQuery(text=PROMPTS[0], k=K, text_weight=0.5)))
        words = bench_e2e(last["_library"], {precision: text}, 10 if args.quick else 40, text_weight=0.5)[precision]
        print(f"  with text_weight 0.5 (image and word scores mixed, exact): p50 {words:.1f} ms "
              f"(first query, gathering the word matrix: {words_first_s * 1000:.0f} ms)", flush=True)
        print(f"end to end at n={last['n']} (ViT-B/32 text encode on CPU, {torch.get_num_threads()} threads, "
              f"+ search): p50 {e2e:.1f} ms at {precision} ({SEED_E2E_MS / e2e:.1f}x faster than the seed's "
              f"~{SEED_E2E_MS:.0f} ms), {fp32:.1f} ms at fp32 ({fp32 / e2e:.2f}x)", flush=True)
    sync_row = next((r for r in rows if r["n"] == 10_000), rows[-1])
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "n": last["n"], "search_p50_ms": round(last["search_p50_ms"], 3),
        "search_p99_ms": round(last["search_p99_ms"], 3), "recall_at_5": round(last["recall_at_5"], 4),
        "filtered_recall_at_5": round(last["filtered_recall_at_5"], 4),
        "numpy_p50_ms": round(last["numpy_p50_ms"], 3), "e2e_p50_ms": round(e2e, 2),
        f"sync_unchanged_{sync_row['n'] // 1000}k_s": round(sync_row["sync_unchanged_s"], 3),
        "rss_mb": round(rss_mb, 1), "e2e_precision": precision, "e2e_fp32_p50_ms": round(fp32, 2),
        "e2e_text_weight_p50_ms": round(words, 2), "text_weight_first_ms": round(words_first_s * 1000, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
