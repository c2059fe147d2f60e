"""Style retrieval benchmark: search latency and recall against exact numpy search, end to end, sync.

Everything in one run, ending with one JSON line. Data is CLIP-like: 512-d unit vectors in
clusters, with text-like queries shifted by a shared "modality gap" direction (text→image
queries are out of distribution, which is what makes HNSW recall hard). A 10% tag marks items
for the filtered measure, answered the way the library answers it (exact, over cached vectors).

    python -m sketch_rag.bench.retrieval            # 1k / 10k / 100k (takes minutes: the 100k ingest)
    python bench/retrieval.py --quick               # 1k / 5k, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import numpy as np

if __package__ in (None, ""):  # run as a script: make the pack importable as sketch_rag
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DIM = 512
K = 5
QUERIES = 200
SEED_E2E_MS = 200.0


def clip_like(n: int, rng: np.random.Generator, clusters: int = 256) -> np.ndarray:
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32)
    data = centres[rng.integers(0, clusters, n)] + 0.9 * rng.standard_normal((n, DIM)).astype(np.float32)
    return data / np.linalg.norm(data, axis=1, keepdims=True)


def text_like(data: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    gap = rng.standard_normal(DIM).astype(np.float32)
    gap /= np.linalg.norm(gap)
    picks = data[rng.integers(0, len(data), m)]
    q = picks + 0.6 * gap + 0.5 * rng.standard_normal((m, DIM)).astype(np.float32) / np.sqrt(DIM) * 8
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def percentiles(times: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(times) * 1000
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_search(n: int, workdir: Path, rng: np.random.Generator) -> dict[str, Any]:
    from sketch_rag.retrieval.index import ChromaIndex
    from sketch_rag.retrieval.query import exact_top_k

    data = clip_like(n, rng)
    ids = [f"s{i}" for i in range(n)]
    tagged = rng.random(n) < 0.10
    queries = text_like(data, QUERIES, rng)
    index = ChromaIndex(workdir / f"chroma_{n}", f"bench-{n}", "bench@0", DIM).open()
    _, ingest_s = timed(lambda: index.put(ids, data, [{"t": bool(t)} for t in tagged]))
    index.refresh()  # as a fresh process would open it
    index.query(queries[0], K)  # first query loads the index

    search_times, numpy_times, recalls, f_times, f_recalls = [], [], [], [], []
    tagged_ids = [i for i, t in zip(ids, tagged, strict=True) if t]
    tagged_rows = data[tagged]
    for q in queries:
        start = time.perf_counter()
        hits = index.query(q, K)
        search_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        exact = np.argpartition(-(data @ q), K)[:K]
        numpy_times.append(time.perf_counter() - start)
        recalls.append(len({h.item_id for h in hits} & {ids[i] for i in exact}) / K)
        start = time.perf_counter()
        fhits = exact_top_k(tagged_rows, tagged_ids, q, K)
        f_times.append(time.perf_counter() - start)
        scores = np.where(tagged, data @ q, -np.inf)
        truth = {ids[i] for i in np.argsort(-scores)[:K]}
        f_recalls.append(len({h.item_id for h in fhits} & truth) / K)
    p50, p99 = percentiles(search_times)
    f50, f99 = percentiles(f_times)
    return {
        "n": n, "ingest_s": ingest_s, "search_p50_ms": p50, "search_p99_ms": p99,
        "recall_at_5": float(np.mean(recalls)), "filtered_p50_ms": f50, "filtered_p99_ms": f99,
        "filtered_recall_at_5": float(np.mean(f_recalls)), "numpy_p50_ms": percentiles(numpy_times)[0],
        "_index": index, "_queries": queries,
    }


def bench_e2e(index: Any, runs: int) -> float:
    """Text encode with a full-size ViT-B/32 CLIP (random weights, CPU) + index search, p50 ms."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from sketch_rag.retrieval.tiny_clip import byte_level_vocab

    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig()).eval()  # the defaults are openai/clip-vit-base-patch32's architecture
    vocab = byte_level_vocab()
    prompt = "a watercolour painting of a quiet harbour at dawn, soft light, loose brushwork"
    token_ids = [vocab["<|startoftext|>"]] + [vocab.get(c, 0) for c in prompt][:75] + [vocab["<|endoftext|>"]]
    ids = torch.tensor([token_ids])
    times = []
    for _ in range(runs + 3):
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.get_text_features(input_ids=ids)
        vec = getattr(out, "pooler_output", out)[0].numpy()
        vec = vec[:DIM] / np.linalg.norm(vec[:DIM])
        index.query(vec.astype(np.float32), K)
        times.append(time.perf_counter() - start)
    return percentiles(times[3:])[0]


def bench_sync(n: int, workdir: Path) -> float:
    """Seconds to reopen an unchanged n-image library (stat + state + verification, no embedding)."""
    from PIL import Image

    from sketch_rag.retrieval.folder import LibraryRoot
    from sketch_rag.retrieval.library import open_library

    class ColourEmbedder:
        """Cheap embedder (a fixed random projection of the pixels): the sync cost is what is measured."""

        model_key = "bench-colour@0"
        dim = 64
        _proj = np.random.default_rng(1).standard_normal((8 * 8 * 3, 64)).astype(np.float32)

        def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
            raise NotImplementedError

        def embed_images(self, images: Sequence[Any], **_: Any) -> np.ndarray:
            rows = np.stack([np.asarray(i.convert("RGB").resize((8, 8)), dtype=np.float32).ravel() for i in images])
            out = rows @ self._proj
            return out / np.linalg.norm(out, axis=1, keepdims=True)

    folder = workdir / f"library_{n}"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"style_{i:05d}.png")
    roots = [LibraryRoot(folder, "")]
    open_library(roots, ColourEmbedder(), workdir / "sync_store")
    (_, report), seconds = timed(lambda: open_library(roots, ColourEmbedder(), workdir / "sync_store"))
    assert report.embedded == 0 and report.total == n, report.to_json()
    return float(seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1k and 5k items, 1k-image sync: a smoke run")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads for the text encoder (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sizes = (1_000, 5_000) if args.quick else (1_000, 10_000, 100_000)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sketch-rag-bench-") as tmp:
        workdir = Path(tmp)
        for n in sizes:
            row = bench_search(n, workdir, rng)
            rows.append(row)
            print(f"n={n:>7}: ingest {row['ingest_s']:.1f} s, search p50 {row['search_p50_ms']:.2f} ms "
                  f"p99 {row['search_p99_ms']:.2f} ms, recall@5 {row['recall_at_5']:.3f}, filtered p50 "
                  f"{row['filtered_p50_ms']:.2f} ms recall@5 {row['filtered_recall_at_5']:.3f}, numpy p50 "
                  f"{row['numpy_p50_ms']:.2f} ms", flush=True)
        last = rows[-1]
        e2e = bench_e2e(last["_index"], 10 if args.quick else 30)
        print(f"end to end (ViT-B/32 text encode on CPU + search at n={last['n']}): p50 {e2e:.1f} ms "
              f"({SEED_E2E_MS / e2e:.1f}x the seed's ~{SEED_E2E_MS:.0f} ms)", flush=True)
        sync_n = 1_000 if args.quick else 10_000
        sync_s = bench_sync(sync_n, workdir)
        print(f"unchanged {sync_n}-image library sync: {sync_s:.3f} s", flush=True)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "n": last["n"], "search_p50_ms": round(last["search_p50_ms"], 3),
        "search_p99_ms": round(last["search_p99_ms"], 3), "recall_at_5": round(last["recall_at_5"], 4),
        "filtered_recall_at_5": round(last["filtered_recall_at_5"], 4),
        "numpy_p50_ms": round(last["numpy_p50_ms"], 3), "e2e_p50_ms": round(e2e, 2),
        ("sync_unchanged_10k_s" if not args.quick else "sync_unchanged_1k_s"): round(sync_s, 3),
        "rss_mb": round(rss_mb, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
