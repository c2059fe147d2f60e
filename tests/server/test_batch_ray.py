"""``sketch-rag batch --ray`` on a real Ray multi-node test cluster, real ComfyUI servers and the tiny models.

Ray's own ``ray.cluster_utils.Cluster``: a head (no CPUs: nothing of the batch runs there) and two worker
nodes, all on 127.0.0.1 with no dashboard. Each worker node's actor finds its own ComfyUI on the port its
node names (``SKETCH_RAG_COMFYUI_PORT``), so the servers' histories can be read after the batch. Sized for
a 2-core machine: each worker node has 2 logical CPUs for its 1-CPU actor, so Ray's own tasks find room.
The tests of this module run in order on one cluster; the last one removes a worker node.
"""

from __future__ import annotations

import os

# Every Ray address on 127.0.0.1: Ray otherwise replaces a loopback address by the machine's own IP.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# No usage reports (Ray's would go outside; Ray Data's asks a Prometheus on localhost:9090).
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_DATA_USAGE_DISABLED"] = "1"

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

import sketch_rag
from sketch_rag.cli.batch import BatchSettings, read_manifests
from sketch_rag.cli.batch_jobs import read_jobs
from sketch_rag.cli.batch_ray import PORT_ENV, RayPlacement, run_ray_batch
from sketch_rag.cli.comfyui_client import ComfyClient
from sketch_rag.cli.comfyui_install import install_comfyui
from sketch_rag.cli.comfyui_server import ComfyServer, free_port, link_pack, start_server
from sketch_rag.cli.main import main
from sketch_rag.cli.workflows import load_api_workflow, load_ui_workflow
from sketch_rag.errors import PreflightError

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = [pytest.mark.comfy, pytest.mark.slow]

FAST_ARGS = ["--tiny-models", "--steps", "2", "--resolution", "64", "--style-resolution", "64", "--height", "64",
             "--no-progress"]
NODE: dict[str, Any] = {"num_cpus": 2, "node_ip_address": "127.0.0.1", "object_store_memory": 150 * 1024 * 1024}


COMFYUI_HOME = Path(__file__).resolve().parents[2] / ".comfyui"


def start_node_server(base: Path, models: Path) -> ComfyServer:
    """A worker node's ComfyUI: its own base directory (own history, input, output), the shared tiny models."""
    base.mkdir(parents=True)
    link_pack(base)
    for folder in ("input", "output", "user", "temp"):
        (base / folder).mkdir()
    (base / "models").symlink_to(models, target_is_directory=True)
    return start_server(install_comfyui(COMFYUI_HOME, requirements=False), port=free_port(), cpu=True,
                        log_path=base / "comfyui.log",
                        extra_args=("--base-directory", str(base), "--database-url", "sqlite:///:memory:"),
                        env={"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})


class Nodes:
    """The test cluster and, per worker node, the node and its ComfyUI."""

    def __init__(self, cluster: Cluster, workers: list[tuple[Any, ComfyServer]]) -> None:
        self.cluster, self.workers = cluster, workers

    def placement(self, actors: int = 2) -> RayPlacement:
        return RayPlacement(address=self.cluster.address, actors=actors, num_gpus=0, num_cpus=1)

    def histories(self) -> list[dict[str, Any]]:
        return [ComfyClient(server.url).all_history() for _, server in self.workers]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, comfy_base_dir: Path) -> Iterator[Nodes]:
    base = tmp_path_factory.mktemp("ray_nodes")
    servers: list[ComfyServer] = []
    cluster = Cluster(initialize_head=True, head_node_args={
        **NODE, "num_cpus": 0, "include_dashboard": False,
        # Each placement goes to the least-used node: one actor per worker node.
        "_system_config": {"scheduler_spread_threshold": 0.0}})
    try:
        workers = []
        for name in ("a", "b"):
            server = start_node_server(base / name, comfy_base_dir / "models")
            servers.append(server)
            node = cluster.add_node(**NODE, env_vars={PORT_ENV: server.url.rsplit(":", 1)[1]})
            workers.append((node, server))
        cluster.wait_for_nodes()
        yield Nodes(cluster, workers)
    finally:
        cluster.shutdown()
        for server in servers:
            server.stop()


def _settings(out: Path, fields: dict[str, Any]) -> BatchSettings:
    return BatchSettings(workflow=load_api_workflow(), out_dir=out, ui_workflow=load_ui_workflow(), common=fields,
                         progress=False, job_timeout=120)


def _job_file(folder: Path, sketches: list[Path], prompt: str, extra: Path | None = None) -> Path:
    (folder / "sketches").mkdir(parents=True, exist_ok=True)
    for sketch in sketches:
        (folder / "sketches" / sketch.name).write_bytes(sketch.read_bytes())
    rows = [{"sketch": "sketches", "prompt": f"{prompt}, ink"}, {"sketch": "sketches", "prompt": f"{prompt}, wash"}]
    if extra is not None:
        rows.append({"sketch": str(extra), "prompt": prompt})
    path = folder / "jobs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _renders_per_prompt(histories: list[dict[str, Any]], prompt_ids: set[str]) -> dict[str, int]:
    counts = dict.fromkeys(prompt_ids, 0)
    for history in histories:
        for prompt_id, entry in history.items():
            if prompt_id in counts and entry["status"]["status_str"] == "success":
                counts[prompt_id] += 1
    return counts


def test_8_jobs_on_two_worker_nodes_each_rendered_once_and_a_server_side_failure_fails_alone(
        nodes: Nodes, tmp_path: Path, example_sketches: list[Path], fast_fields: dict[str, Any]) -> None:
    banner = tmp_path / "a_banner.png"
    wide = Image.new("L", (4096, 64), 255)  # a fine image; at height 64 the render would be 4096 px wide
    ImageDraw.Draw(wide).line((0, 32, 4095, 32), fill=0, width=3)
    wide.save(banner)
    jobs = read_jobs(_job_file(tmp_path, example_sketches[:4], "two nodes", banner)).jobs
    out = tmp_path / "out"

    result = run_ray_batch(_settings(out, fast_fields), jobs, nodes.placement())

    assert len(result.done) == 8 and len(result.failed) == 1 and not result.unfinished
    failed = result.failed[0]
    assert Path(failed["sketch"]).name == "a_banner.png" and failed["status"] == "failed"
    assert "outside 64-2048 pixels a side" in failed["error"] and failed["output"] is None
    manifests = {m["job_id"]: m for m in read_manifests(out)}
    assert sorted(manifests) == sorted(job.job_id for job in jobs)
    assert manifests[failed["job_id"]]["error"] == failed["error"]
    done_ids = {m["prompt_id"] for m in result.done}
    assert set(_renders_per_prompt(nodes.histories(), done_ids).values()) == {1}  # each job rendered once
    for manifest in result.done:
        assert (out / manifest["output"]).is_file() and manifest["styles"] and manifest["structure_fidelity"] >= 0
    # One actor per worker node, each with its own ComfyUI; the table names both, no node lost.
    assert len({m["server"] for m in result.done}) == 2
    assert len(result.nodes) == 2 and not any(row["lost"] for row in result.nodes)
    assert sum(row["jobs"] for row in result.nodes) == 9
    assert json.loads((out / "batch.json").read_text())[-1]["status"] == "failed"


def test_the_driver_killed_mid_run_and_run_again_skips_finished_jobs_and_renders_each_once(
        nodes: Nodes, tmp_path: Path, example_sketches: list[Path], fast_fields: dict[str, Any]) -> None:
    path = _job_file(tmp_path, example_sketches[4:8], "driver kill")
    jobs = read_jobs(path).jobs
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(sketch_rag.__file__).parent.parent), os.environ.get("PYTHONPATH", "")])}
    log = tmp_path / "driver.log"
    with log.open("wb") as log_file:
        driver = subprocess.Popen(
            [sys.executable, "-m", "sketch_rag.cli.main", "batch", str(path), "--out", str(out), "--ray",
             nodes.cluster.address, "--ray-actors", "2", "--ray-gpus-per-actor", "0", *FAST_ARGS],
            env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None and len(list(out.glob("manifests/*.json"))) < 2:
            time.sleep(0.05)
    finally:
        driver.send_signal(signal.SIGKILL)  # no cleanup: jobs left in flight on the actors and servers
        driver.wait(10)
    killed_with = len(list(out.glob("manifests/*.json")))
    assert 2 <= killed_with < 8, log.read_text()

    first_run = {m["job_id"]: m["prompt_id"] for m in read_manifests(out)}
    result = run_ray_batch(_settings(out, fast_fields), jobs, nodes.placement())

    assert result.ok and sorted(result.skipped) == sorted(first_run) and len(result.done) == 8 - killed_with
    assert sorted(m["job_id"] for m in read_manifests(out)) == sorted(job.job_id for job in jobs)
    renders = _renders_per_prompt(nodes.histories(), {m["prompt_id"] for m in read_manifests(out)})
    assert all(renders[prompt_id] == 1 for prompt_id in first_run.values()), "a finished job was rendered again"
    # A job in flight at the kill ran on to its end on its server; the re-run collects it from there when the
    # same node's actor takes it, and renders it again elsewhere (no actor sees another node's ComfyUI).
    assert all(count >= 1 for count in renders.values())


def test_a_worker_node_removed_mid_batch_its_jobs_end_on_the_survivor_and_the_table_names_it(
        nodes: Nodes, tmp_path: Path, example_sketches: list[Path], fast_fields: dict[str, Any]) -> None:
    jobs = read_jobs(_job_file(tmp_path, example_sketches[8:12], "node loss")).jobs
    out = tmp_path / "out"
    (doomed, doomed_server), (_, survivor_server) = nodes.workers
    removed: list[float] = []
    client = ComfyClient(doomed_server.url, timeout=5)
    before = len(client.all_history())

    def remove_when_rendering() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if len(client.all_history()) > before and client.queue().get("queue_running"):  # one done, one running
                break
            time.sleep(0.05)
        nodes.cluster.remove_node(doomed)
        removed.append(time.monotonic())

    watcher = threading.Thread(target=remove_when_rendering, daemon=True)
    watcher.start()
    result = run_ray_batch(_settings(out, fast_fields), jobs, nodes.placement())
    watcher.join()

    assert removed and result.ok and len(result.done) == 8 and not result.unfinished
    manifests = read_manifests(out)
    assert sorted(m["job_id"] for m in manifests) == sorted(job.job_id for job in jobs)  # none missing, none twice
    assert len(list((out / "renders").glob("*.png"))) == 8
    lost = [row for row in result.nodes if row["lost"]]
    assert len(lost) == 1 and doomed.node_id[:8] in lost[0]["node"]
    on_survivor = [m for m in manifests if m["server"].startswith(survivor_server.url)]
    assert on_survivor and all(m["server"].startswith((survivor_server.url, doomed_server.url)) for m in manifests)


def test_an_unreachable_ray_address_is_a_clear_error_within_30_s(
        tmp_path: Path, example_sketches: list[Path], fast_fields: dict[str, Any]) -> None:
    jobs = read_jobs(_job_file(tmp_path, example_sketches[:1], "unreachable")).jobs
    for address in (f"127.0.0.1:{free_port()}", f"ray://127.0.0.1:{free_port()}"):
        started = time.monotonic()
        with pytest.raises(PreflightError, match="No Ray cluster answers at .*ray start --head"):
            run_ray_batch(_settings(tmp_path / "out", fast_fields), jobs, RayPlacement(address=address))
        assert time.monotonic() - started < 30
    assert not (tmp_path / "out" / "manifests").exists()


def test_a_poison_sketch_is_refused_by_the_preflight_before_ray_is_started(
        tmp_path: Path, example_sketches: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "sketches"
    folder.mkdir()
    data = example_sketches[0].read_bytes()
    (folder / "poison.png").write_bytes(data[: len(data) // 2])  # opens fine, half its pixels missing
    path = tmp_path / "jobs.csv"
    path.write_text("sketch,prompt\nsketches/poison.png,poison test\n")
    assert main(["batch", str(path), "--out", str(tmp_path / "out"), "--ray", "127.0.0.1:9", *FAST_ARGS]) == 2
    err = capsys.readouterr().err
    assert "1 bad row(s); nothing was queued" in err and "damaged or truncated" in err
    assert not (tmp_path / "out").exists()
