"""A team's ComfyUI under load: the Style Library tab, editors, renders and a batch at once, then an audit.

One ComfyUI (``.comfyui/ComfyUI``, CPU, the tiny models, loopback only) with the pack, for a bounded
time (``--duration``, default 180 s; every loop below is bounded in count and in time):

- 6 tab users: list a library, fetch a screenful of thumbnails, open one style's image, search;
- 2 editors: add styles to a user library (``team``), retag them, trash some;
- 2 render users: upload a sketch and queue a small render, wait for it;
- one ``sketch-rag batch`` of 20 jobs against the same server;
- bad input among the load: truncated and zero-byte uploads, a 200 MB upload, ``..`` ids, a PATCH racing a
  DELETE of the same style, a client hanging up mid-upload; each must get its own 4xx.

Printed: requests per route with p50/p95, answers by status, renders done, the server's RSS (start, after
the first minute, peak, end), the search p95 under load against its p95 on the idle server (same run),
the bad-input verdicts, the batch's outcome, and the library audit (every added, untrashed style listed
and found first by an image query for itself; every trashed style in the trash with its record; no
orphan file; every thumbnail served; index count = folder count = record count). The last line is JSON.

    python bench/load.py                  # 3 minutes
    python bench/load.py --duration 60    # quicker

Latency figures depend on what else the machine runs (the load average is printed with them).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import numpy as np
import requests
from PIL import Image

if __package__ in (None, ""):  # run as a script: make the pack importable as sketch_rag
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

PREFIX = "/sketch_rag/library"
MODEL = "tiny-random-clip"
TEAM = "team"
"""The user library the editors change (user/sketch_rag/libraries/team)."""
TAB_USERS, EDITORS, RENDER_USERS = 6, 2, 2
BATCH_JOBS = 20
MAX_ROUNDS = 10_000
"""Upper bound of any user's loop, whatever the duration."""
REQUEST_TIMEOUT_S = 120
IDLE_SEARCHES = 30
SEARCH_P95_RATIO = 4.0
RSS_GROWTH_MB = 200.0
MB = 1024 * 1024
PROMPTS = (
    "a watercolour harbour at dawn", "ukiyo-e waves", "ink wash mountains", "swirling expressionist sky",
    "pencil cathedral", "flat colour poster", "gilded portrait", "impressionist lilies", "candle-lit interior",
    "abstract circles",
)


def noise_png(seed: int, size: int = 48) -> bytes:
    """A PNG of smooth random colour, different for every seed (so each style embeds apart from the others)."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    small.resize((size, size), Image.Resampling.BICUBIC).save(buffer, format="PNG")
    return buffer.getvalue()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


@dataclass
class Stats:
    """Every request's route, status and latency, from all threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    server_errors: list[str] = field(default_factory=list)

    def record(self, route: str, status: int, seconds: float, text: str = "") -> None:
        with self.lock:
            self.latencies[route].append(seconds * 1000)
            self.statuses[route][status] += 1
            if status >= 500:
                self.server_errors.append(f"{route} {status}: {text[:300]}")

    def table(self) -> dict[str, dict[str, Any]]:
        return {route: {"count": len(ms), "p50_ms": round(percentile(ms, 0.5), 1),
                        "p95_ms": round(percentile(ms, 0.95), 1),
                        "statuses": dict(sorted(self.statuses[route].items()))}
                for route, ms in sorted(self.latencies.items())}


class Client:
    """HTTP calls of one simulated user, each timed and recorded under its route name."""

    def __init__(self, url: str, stats: Stats) -> None:
        self.url, self.stats, self.session = url, stats, requests.Session()

    def call(self, method: str, route: str, path: str, **kwargs: Any) -> requests.Response:
        start = time.perf_counter()
        response = self.session.request(method, f"{self.url}{path}", timeout=REQUEST_TIMEOUT_S, **kwargs)
        self.stats.record(route, response.status_code, time.perf_counter() - start, response.text[:300]
                          if response.status_code >= 500 else "")
        return response

    def styles(self, library: str) -> requests.Response:
        return self.call("GET", "GET styles", f"{PREFIX}/styles", params=_params(library))

    def search(self, library: str, prompt: str) -> requests.Response:
        return self.call("POST", "POST search", f"{PREFIX}/search", params=_params(library),
                         json={"query": prompt, "k": 8})

    def add(self, library: str, data: bytes, name: str, tags: str) -> requests.Response:
        return self.call("POST", "POST styles", f"{PREFIX}/styles", params=_params(library),
                         files=[("file", (f"{name}.png", data, "image/png"))], data={"name": name, "tags": tags})

    def edit(self, library: str, item_id: str, tags: list[str]) -> requests.Response:
        return self.call("PATCH", "PATCH styles", f"{PREFIX}/styles", params=_params(library),
                         json={"id": item_id, "tags": tags})

    def remove(self, library: str, item_id: str) -> requests.Response:
        return self.call("DELETE", "DELETE styles", f"{PREFIX}/styles", params={**_params(library), "id": item_id})


def _params(library: str) -> dict[str, str]:
    return {"model": MODEL, **({"library": library} if library else {})}


@dataclass
class Ledger:
    """What the editors did, for the audit: styles added (id → the image bytes) and trashed (id → trash folder)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    added: dict[str, bytes] = field(default_factory=dict)
    trashed: dict[str, str] = field(default_factory=dict)
    wrong_answers: list[str] = field(default_factory=list)

    def wrong(self, text: str) -> None:
        with self.lock:
            self.wrong_answers.append(text)


def bounded(deadline: float) -> Iterator[int]:
    """Round numbers until the deadline, and never more than :data:`MAX_ROUNDS`."""
    for n in range(MAX_ROUNDS):
        if time.monotonic() >= deadline:
            return
        yield n


def tab_user(client: Client, deadline: float, seed: int) -> None:
    rng = random.Random(seed)
    for n in bounded(deadline):
        library = TEAM if n % 2 else ""
        listing = client.styles(library)
        if listing.status_code != 200:
            continue
        styles = listing.json()["styles"]
        shown = styles[:12] + rng.sample(styles, min(4, len(styles)))
        for style in shown:
            if time.monotonic() >= deadline:
                return
            client.call("GET", "GET thumbnail", style["thumbnail"])
        if styles:
            client.call("GET", "GET image", rng.choice(styles)["image"])
        client.search(library, rng.choice(PROMPTS))


def editor(client: Client, deadline: float, name: str, ledger: Ledger, seed: int) -> None:
    rng = random.Random(seed)
    mine: list[str] = []
    for n in bounded(deadline):
        data = noise_png(seed * 100_000 + n)
        added = client.add(TEAM, data, f"{name} {n}", f"{name}, load")
        if added.status_code == 200:
            for style in added.json()["added"]:
                with ledger.lock:
                    ledger.added[style["id"]] = data
                mine.append(style["id"])
        else:
            ledger.wrong(f"add {name} {n}: {added.status_code} {added.text[:200]}")
        if mine and n % 2 == 0:
            target, tags = rng.choice(mine), [f"round{n}", name]
            edited = client.edit(TEAM, target, tags)
            if edited.status_code != 200 or edited.json()["style"]["tags"] != tags:
                ledger.wrong(f"edit {target}: {edited.status_code} {edited.text[:200]}")
        if len(mine) > 2 and n % 3 == 2:
            target = mine.pop(rng.randrange(len(mine)))
            removed = client.remove(TEAM, target)
            if removed.status_code == 200:
                with ledger.lock:
                    ledger.trashed[target] = removed.json()["trashed"]
            else:
                ledger.wrong(f"remove {target}: {removed.status_code} {removed.text[:200]}")


def render_user(url: str, client: Client, deadline: float, sketch: Path, seed: int, done: list[int]) -> None:
    from sketch_rag.cli.comfyui_client import ComfyClient
    from sketch_rag.cli.workflows import bind, load_api_workflow, tiny_models

    comfy = ComfyClient(url)
    name = comfy.upload_image(sketch.read_bytes(), f"load_{seed}{sketch.suffix}", subfolder="load")
    workflow = load_api_workflow("sketch_to_render")
    for n in bounded(deadline):
        graph = bind(workflow, {**tiny_models(), "steps": 2, "resolution": 64, "style_resolution": 64,
                                "height": 64, "sketch": name, "prompt": PROMPTS[n % len(PROMPTS)],
                                "seed": seed * 1000 + n, "filename_prefix": f"load/{seed}_{n}"})
        start = time.perf_counter()
        prompt_id = comfy.queue_prompt(graph)
        comfy.wait(prompt_id, timeout=max(5.0, deadline - time.monotonic() + 120))
        client.stats.record("render (queue to done)", 200, time.perf_counter() - start)
        done.append(1)


def _raw_upload(url: str, params: dict[str, str], head_bytes: bytes, announced: int) -> socket.socket:
    parts = urlsplit(url)
    head = b'--x\r\nContent-Disposition: form-data; name="file"; filename="cut.png"\r\n\r\n'
    conn = socket.create_connection((parts.hostname, parts.port), timeout=60)
    conn.sendall(
        f"POST {PREFIX}/styles?{urlencode(params)} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {len(head) + announced + 10}\r\n"
        "Connection: close\r\n\r\n".encode() + head + head_bytes
    )
    return conn


def bad_inputs(client: Client, deadline: float, ledger: Ledger, verdicts: dict[str, str]) -> None:
    """Each kind of bad input once, spread over the run; a verdict per kind ("ok" or what was wrong)."""

    def expect(kind: str, response: requests.Response, *statuses: int) -> None:
        ok = response.status_code in statuses and "error" in response.json()
        verdicts[kind] = "ok" if ok else f"{response.status_code}: {response.text[:200]}"

    def truncated() -> None:
        data = noise_png(7_000_001)
        expect("truncated upload", client.add(TEAM, data[: len(data) // 2], "truncated", ""), 400)

    def zero_byte() -> None:
        expect("zero-byte upload", client.add(TEAM, b"", "empty", ""), 400)

    def dot_dot_ids() -> None:
        answers = [client.call("GET", "GET image", f"{PREFIX}/image", params={**_params(TEAM), "id": bad})
                   for bad in ("../../../../etc/passwd", "..", "a/../../b.png")]
        answers.append(client.remove(TEAM, "../styles/x.png"))
        bad = [f"{r.status_code}" for r in answers if r.status_code != 404]
        verdicts["'..' ids"] = "ok" if not bad else f"answered {bad}"

    def huge() -> None:
        def body() -> Iterator[bytes]:
            yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="huge.png"\r\n\r\n'
            for _ in range(200):
                yield b"\0" * MB
            yield b"\r\n--x--\r\n"

        expect("200 MB upload", client.call("POST", "POST styles", f"{PREFIX}/styles", params=_params(TEAM),
                                            data=body(), headers={"Content-Type": "multipart/form-data; boundary=x"}),
               413)

    def patch_races_delete() -> None:
        added = client.add(TEAM, noise_png(7_000_002), "race", "race")
        if added.status_code != 200:
            verdicts["PATCH racing DELETE"] = f"setup add: {added.status_code}"
            return
        item_id = added.json()["added"][0]["id"]
        answers: dict[str, requests.Response] = {}
        start = threading.Barrier(2)

        def patch() -> None:
            start.wait()
            answers["patch"] = Client(client.url, client.stats).edit(TEAM, item_id, ["raced"])

        def delete() -> None:
            start.wait()
            answers["delete"] = Client(client.url, client.stats).remove(TEAM, item_id)

        threads = [threading.Thread(target=patch), threading.Thread(target=delete)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(REQUEST_TIMEOUT_S)
        patched, deleted = answers.get("patch"), answers.get("delete")
        if deleted is not None and deleted.status_code == 200:
            with ledger.lock:
                ledger.trashed[item_id] = deleted.json()["trashed"]
        clean = (deleted is not None and deleted.status_code == 200 and patched is not None
                 and patched.status_code in (200, 404))
        verdicts["PATCH racing DELETE"] = "ok" if clean else (
            f"patch {getattr(patched, 'status_code', None)}, delete {getattr(deleted, 'status_code', None)}")

    def hang_up() -> None:
        conn = _raw_upload(client.url, _params(TEAM), noise_png(7_000_003) + b"\0" * 65536, 4 * MB)
        time.sleep(0.3)
        conn.close()
        verdicts["client hanging up mid-upload"] = "sent"  # judged by the log and the staging folder at the end

    steps: list[Callable[[], None]] = [truncated, zero_byte, dot_dot_ids, patch_races_delete, hang_up, huge]
    for step in steps:
        if time.monotonic() >= deadline:
            break
        step()
        time.sleep(2)


def run_batch_job(url: str, base: Path, out: Path, sketches: list[Path], jobs: int) -> subprocess.Popen[str]:
    """Start ``sketch-rag batch`` of ``jobs`` jobs (sketches × prompts) against ``url``."""
    job_file = out.parent / "jobs.jsonl"
    rows = [{"sketch": str(sketches[n % len(sketches)]), "prompt": f"batch {PROMPTS[n % len(PROMPTS)]} {n}"}
            for n in range(jobs)]
    job_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    clip = base / "models" / "style_clip" / MODEL
    command = [sys.executable, "-c", "import sys; from sketch_rag.cli.main import main; sys.exit(main())",
               "batch", str(job_file), "--out", str(out), "--server", url, "--tiny-models", "--steps", "2",
               "--resolution", "64", "--style-resolution", "64", "--height", "64", "--no-progress",
               "--clip-model", str(clip)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def batch_outcome(out: Path, jobs: int, proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    manifests = [json.loads(p.read_text()) for p in sorted((out / "manifests").glob("*.json"))] \
        if (out / "manifests").is_dir() else []
    ids = Counter(m["job_id"] for m in manifests)
    done = [m for m in manifests if m.get("error") is None]
    return {"jobs": jobs, "done": len(done), "returncode": proc.returncode,
            "done_once": len(done) == jobs and all(c == 1 for c in ids.values()),
            "renders": len(list((out / "renders").glob("*.png"))) if (out / "renders").is_dir() else 0,
            "output_tail": output[-400:] if proc.returncode else ""}


def audit(url: str, base: Path, ledger: Ledger, stats: Stats) -> dict[str, Any]:
    """The library as the load left it, against what the editors were told; every finding is listed."""
    from sketch_rag.retrieval.embedder import ClipEmbedder
    from sketch_rag.retrieval.folder import IMAGE_EXTENSIONS, LibraryRoot, iter_image_files
    from sketch_rag.retrieval.library import StyleLibrary
    from sketch_rag.retrieval.library_edits import TRASH_RECORD
    from sketch_rag.retrieval.query import StyleQuery

    findings: list[str] = []
    client = Client(url, Stats())  # the audit's own requests are not part of the load figures
    listing = client.styles(TEAM).json()
    listed = {s["id"]: s for s in listing["styles"]}
    alive = {i: d for i, d in ledger.added.items() if i not in ledger.trashed}
    findings += [f"added {i} not listed" for i in alive if i not in listed]
    findings += [f"trashed {i} still listed" for i in ledger.trashed if i in listed]
    for style in listed.values():
        if client.call("GET", "GET thumbnail", style["thumbnail"]).status_code != 200:
            findings.append(f"thumbnail of {style['id']} not served")
    user = base / "user"
    for item_id, folder in ledger.trashed.items():
        record_path = user / folder / TRASH_RECORD
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
        moved = [Path(f["to"]) for f in record.get("files", [])]
        if record.get("id") != item_id or not moved or not all(p.is_file() for p in moved):
            findings.append(f"trashed {item_id} not in the trash with its record ({folder})")
    team = user / "sketch_rag" / "libraries" / TEAM
    images = {p.relative_to(team).as_posix() for p in team.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS}
    for sidecar in team.rglob("*.json"):
        if not any(sidecar.with_suffix(ext).is_file() for ext in IMAGE_EXTENSIONS):
            findings.append(f"orphan sidecar {sidecar.name}")
    findings += [f"file {i} not listed" for i in images if i not in listed]
    embedder = ClipEmbedder.load(base / "models" / "style_clip" / MODEL, device="cpu")
    root = LibraryRoot(team.resolve(), "", writable=False)
    library = StyleLibrary([root], embedder, user / "sketch_rag" / "store")
    library.index.open()
    records = {i: r for i, r in library.synced_records().items() if r.error is None}
    folder_count = sum(1 for _ in iter_image_files(root))
    counts = {"index": library.index.count(), "folder": folder_count, "records": len(records)}
    if len(set(counts.values())) != 1:
        findings.append(f"counts differ: {counts}")
    for item_id, data in alive.items():
        with Image.open(io.BytesIO(data)) as opened:
            pixels = np.asarray(opened.convert("RGB"), dtype=np.float32) / 255.0
        found = library.query(StyleQuery(image=pixels, image_weight=1.0, k=1))
        if not found or found[0].item_id != item_id:
            findings.append(f"{item_id} not found first by its own image ({[m.item_id for m in found]})")
    library.close()
    return {"added": len(ledger.added), "trashed": len(ledger.trashed), "alive": len(alive), **counts,
            "findings": findings, "clean": not findings}


@dataclass
class Server:
    url: str
    pid: int
    log: Path
    base: Path


def run_load(server: Server, duration: float, batch_jobs: int, sketches: list[Path], work: Path) -> dict[str, Any]:
    """The whole load against ``server`` for ``duration`` seconds, then the audit; the figures as a dict."""
    stats, ledger = Stats(), Ledger()
    verdicts: dict[str, str] = {}
    team = server.base / "user" / "sketch_rag" / "libraries" / TEAM
    team.mkdir(parents=True, exist_ok=True)
    for n in range(12):
        (team / f"seed_{n:02d}.png").write_bytes(noise_png(900_000 + n))
    idle = Client(server.url, Stats())
    for library in ("", TEAM):  # open both libraries (first sync, CLIP load) before anything is timed
        assert idle.styles(library).status_code == 200
        idle.search(library, PROMPTS[0])
    idle_ms = []
    for n in range(IDLE_SEARCHES):
        start = time.perf_counter()
        idle.search(TEAM if n % 2 else "", PROMPTS[n % len(PROMPTS)]).raise_for_status()
        idle_ms.append((time.perf_counter() - start) * 1000)

    log_start = server.log.stat().st_size
    rss: list[tuple[float, float]] = []
    stop = threading.Event()
    began = time.monotonic()
    deadline = began + duration

    def sample() -> None:
        while not stop.is_set():
            rss.append((time.monotonic() - began, rss_mb(server.pid)))
            stop.wait(0.5)

    renders: list[int] = []
    batch_out = work / "batch_out"
    batch = run_batch_job(server.url, server.base, batch_out, sketches, batch_jobs)
    threads = [threading.Thread(target=sample, daemon=True)]
    threads += [threading.Thread(target=tab_user, args=(Client(server.url, stats), deadline, n))
                for n in range(TAB_USERS)]
    threads += [threading.Thread(target=editor, args=(Client(server.url, stats), deadline, f"editor{n}", ledger,
                                                       n + 1)) for n in range(EDITORS)]
    threads += [threading.Thread(target=render_user, args=(server.url, Client(server.url, stats), deadline,
                                                           sketches[n % len(sketches)], n + 1, renders))
                for n in range(RENDER_USERS)]
    threads.append(threading.Thread(target=bad_inputs, args=(Client(server.url, stats), deadline, ledger, verdicts)))
    for thread in threads:
        thread.start()
    for thread in threads[1:]:
        thread.join(duration + 600)
    batch_result = batch_outcome(batch_out, batch_jobs, batch, timeout=max(60.0, deadline - time.monotonic() + 600))
    stop.set()
    threads[0].join(5)
    loaded_s = time.monotonic() - began

    with server.log.open("rb") as handle:
        handle.seek(log_start)
        log_text = handle.read().decode("utf-8", "replace")
    staged = list((server.base / "temp").glob("sketch_rag_upload_*"))
    hung_up_clean = "Traceback" not in log_text and "this is a bug" not in log_text and not staged
    if "client hanging up mid-upload" in verdicts:
        verdicts["client hanging up mid-upload"] = "ok" if hung_up_clean else (
            f"staged left: {len(staged)}; traceback in log: {'Traceback' in log_text}")
    audited = audit(server.url, server.base, ledger, stats)

    search_load = stats.latencies.get("POST search", [])
    idle_p95, load_p95 = percentile(idle_ms, 0.95), percentile(search_load, 0.95)
    after_minute = [mb for t, mb in rss if t >= 60] or [mb for _, mb in rss]
    rss_figures = {"start": round(rss[0][1], 1), "after_1_min": round(after_minute[0], 1),
                   "peak": round(max(mb for _, mb in rss), 1), "end": round(rss[-1][1], 1)}
    growth = rss_figures["end"] - rss_figures["after_1_min"]
    statuses: Counter[int] = Counter()
    for counter in stats.statuses.values():
        statuses.update(counter)
    return {
        "duration_s": round(loaded_s, 1), "routes": stats.table(), "statuses": dict(sorted(statuses.items())),
        "server_errors": stats.server_errors[:20], "renders_done": len(renders), "batch": batch_result,
        "rss_mb": rss_figures, "rss_growth_after_1_min_mb": round(growth, 1),
        "search_p95_idle_ms": round(idle_p95, 1), "search_p95_load_ms": round(load_p95, 1),
        "search_p95_ratio": round(load_p95 / idle_p95, 2), "bad_input": verdicts,
        "wrong_answers": ledger.wrong_answers[:20], "audit": audited,
        "targets": {
            "no_5xx": not any(s >= 500 for s in statuses),
            "search_p95_within_4x_idle": load_p95 <= SEARCH_P95_RATIO * idle_p95,
            "rss_growth_within_200_mb": growth <= RSS_GROWTH_MB,
            "audit_clean": audited["clean"],
            "batch_jobs_done_once": batch_result["done_once"],
            "bad_input_answered": all(v == "ok" for v in verdicts.values()),
            "answers_truthful": not ledger.wrong_answers,
        },
    }


def main() -> None:
    from sketch_rag.cli.comfyui_install import install_comfyui
    from sketch_rag.cli.comfyui_server import free_port, link_pack, start_server
    from sketch_rag.cli.workflows import SKETCHES_DIR
    from sketch_rag.tiny_models.files import write_tiny_models

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load (default: %(default)s)")
    parser.add_argument("--batch-jobs", type=int, default=BATCH_JOBS, help="jobs of the sketch-rag batch")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]
    sketches = sorted(SKETCHES_DIR.glob("*.png"))[:2]
    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        base = Path(tmp) / "base"
        base.mkdir()
        link_pack(base)
        for folder in ("input", "output", "user", "temp"):
            (base / folder).mkdir()
        write_tiny_models(base / "models")
        comfy_dir = install_comfyui(repo / ".comfyui", requirements=False)
        log = base / "comfyui.log"
        server = start_server(comfy_dir, port=free_port(), cpu=True, log_path=log,
                              extra_args=("--base-directory", str(base), "--database-url", "sqlite:///:memory:"),
                              env={"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
        try:
            figures = run_load(Server(server.url, server.process.pid, log, base), args.duration, args.batch_jobs,
                               sketches, Path(tmp))
        finally:
            server.stop()
    figures = {"bench": "load", "cpu_count": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 1),
               **figures}
    print_summary(figures)
    print(json.dumps(figures))


def print_summary(figures: dict[str, Any]) -> None:
    print(f"load for {figures['duration_s']} s (load average {figures['load_avg_1min']} on {figures['cpu_count']} "
          "CPUs: latencies include other work on the machine)")
    print(f"{'route':<24}{'count':>7}{'p50 ms':>10}{'p95 ms':>10}  statuses")
    for route, row in figures["routes"].items():
        print(f"{route:<24}{row['count']:>7}{row['p50_ms']:>10}{row['p95_ms']:>10}  {row['statuses']}")
    print(f"answers by status: {figures['statuses']}; renders done: {figures['renders_done']}; "
          f"batch: {figures['batch']['done']}/{figures['batch']['jobs']} done once: {figures['batch']['done_once']}")
    print(f"server RSS MB: {figures['rss_mb']} (growth after the first minute {figures['rss_growth_after_1_min_mb']})")
    print(f"search p95: idle {figures['search_p95_idle_ms']} ms, under load {figures['search_p95_load_ms']} ms "
          f"(x{figures['search_p95_ratio']})")
    print(f"bad input: {figures['bad_input']}")
    audit_ = figures["audit"]
    print(f"audit: added {audit_['added']}, trashed {audit_['trashed']}, index {audit_['index']} = folder "
          f"{audit_['folder']} = records {audit_['records']}; findings: {audit_['findings'][:10] or 'none'}")
    print(f"targets: {figures['targets']}")
    if figures["server_errors"] or figures["wrong_answers"]:
        print(f"server errors: {figures['server_errors']}\nwrong answers: {figures['wrong_answers']}")


if __name__ == "__main__":
    main()
