"""``sketch-rag batch`` end to end on the real ComfyUI with the tiny models."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sketch_rag.cli.batch import BatchSettings, read_manifests, run_batch
from sketch_rag.cli.batch_jobs import read_jobs
from sketch_rag.cli.comfyui_client import ComfyClient
from sketch_rag.cli.main import main
from sketch_rag.cli.workflows import load_api_workflow, load_ui_workflow, resolved
from sketch_rag.errors import JobFileError, PreflightError

PROMPTS = ["a watercolor painting", "an ink drawing"]


def history_size(comfy: ComfyClient) -> int:
    return len(comfy._json("GET", "/history"))


def write_job_file(folder: Path, sketches: list[Path], prompts: list[str]) -> Path:
    """A JSONL job file over a folder of ``sketches`` × ``prompts``.

    Tests that share a server use prompts of their own: a job the server already rendered (same graph, same
    prompt id) is collected from its history, not rendered again.
    """
    (folder / "sketches").mkdir(parents=True, exist_ok=True)
    for sketch in sketches:
        (folder / "sketches" / sketch.name).write_bytes(sketch.read_bytes())
    path = folder / "jobs.jsonl"
    path.write_text("".join(json.dumps({"sketch": "sketches", "prompt": p}) + "\n" for p in prompts))
    return path


@pytest.fixture
def job_file(tmp_path: Path, example_sketches: list[Path]) -> Path:
    return write_job_file(tmp_path, example_sketches[:3], PROMPTS)  # a folder of 3 sketches × 2 prompts = 6 jobs


def cli_args(job_file: Path, out: Path, *servers: str) -> list[str]:
    return ["batch", str(job_file), "--out", str(out), *[a for s in servers for a in ("--server", s)],
            "--tiny-models", "--steps", "2", "--resolution", "64", "--style-resolution", "64", "--height", "64",
            "--no-progress"]


@pytest.mark.slow
def test_batch_renders_3_sketches_by_2_prompts_with_manifests_scores_and_report(
        comfy: ComfyClient, comfy_base_dir: Path, job_file: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    clip = comfy_base_dir / "models" / "style_clip" / "tiny-random-clip"
    assert main([*cli_args(job_file, out, comfy.url), "--clip-model", str(clip)]) == 0
    manifests = read_manifests(out)
    assert len(manifests) == 6 and len(list((out / "renders").glob("*.png"))) == 6
    assert {(Path(m["sketch"]).name, m["prompt"]) for m in manifests} == {
        (s.name, p) for s in (job_file.parent / "sketches").iterdir() for p in PROMPTS}
    for manifest in manifests:
        assert manifest["error"] is None and manifest["styles"] and len(manifest["style_scores"]) == 1
        assert 0.0 <= manifest["structure_fidelity"] <= 1.0 and -1.0 <= manifest["style_similarity"] <= 1.0
        assert manifest["timings"]["render_s"] > 0
        with Image.open(out / manifest["reference_file"]) as reference:
            assert reference.size == (64, 64)
        with Image.open(out / manifest["output"]) as png:
            prompt, workflow = json.loads(png.info["prompt"]), json.loads(png.info["workflow"])
        sampler = next(n for n in prompt.values() if n["class_type"] == "SketchRAGHybridSampler")
        assert resolved(prompt, sampler["inputs"]["prompt"]) == manifest["prompt"]  # through the one prompt node
        assert sampler["inputs"]["seed"] == manifest["seed"]
        ui_prompt = next(n for n in workflow["nodes"] if n.get("title") == "prompt")
        assert ui_prompt["widgets_values"] == [manifest["prompt"]]  # reopens in ComfyUI as this very job
    assert (out / "contact_sheet.png").is_file() and len(json.loads((out / "batch.json").read_text())) == 6
    capsys.readouterr()

    before = history_size(comfy)
    assert main(cli_args(job_file, out, comfy.url)) == 0  # resumed: nothing left to render
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["skipped"] == 6
    assert history_size(comfy) == before


def test_malformed_job_file_lists_every_bad_row_and_queues_nothing(
        comfy: ComfyClient, tmp_path: Path, example_sketches: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "jobs.csv"
    path.write_text(f"sketch,prompt,seed,k\n{example_sketches[0]},fine,1,1\nmissing.png,a,2,1\n"
                    f"{example_sketches[0]},,3,1\n{example_sketches[0]},b,three,1\n{example_sketches[0]},c,4,0\n")
    before = history_size(comfy)
    with pytest.raises(JobFileError) as err:
        read_jobs(path)
    text = str(err.value)
    assert "4 bad row(s)" in text and "line 3: sketch" in text and "missing.png does not exist" in text
    assert "line 4: prompt is missing" in text and "line 5: seed must be a int, got 'three'" in text
    assert "line 6: k 0 is outside 1..64" in text
    assert main(cli_args(path, tmp_path / "out", comfy.url)) == 2
    assert "4 bad row(s)" in capsys.readouterr().err
    assert history_size(comfy) == before


def test_unknown_model_is_reported_before_anything_is_queued(
        comfy: ComfyClient, job_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = history_size(comfy)
    assert main([*cli_args(job_file, tmp_path / "out", comfy.url), "--checkpoint", "sd_xl_base_1.0.safetensors",
                 "--image-encoder", "nope.safetensors"]) == 2
    err = capsys.readouterr().err
    assert "nothing was queued" in err and "checkpoint 'sd_xl_base_1.0.safetensors' is not on the server" in err
    assert "image_encoder 'nope.safetensors' is not on the server; it has: none, tiny-CLIP-ViT-H-14" in err
    assert history_size(comfy) == before and not (tmp_path / "out" / "renders").exists()


def _settings(out: Path, fields: dict[str, Any]) -> BatchSettings:
    return BatchSettings(workflow=load_api_workflow(), out_dir=out, ui_workflow=load_ui_workflow(), common=fields,
                         slots=1, progress=False, job_timeout=120)


def _finished_on(out: Path, url: str) -> int:
    found = 0
    for path in (out / "manifests").glob("*.json"):
        try:
            found += json.loads(path.read_text())["server"] == url
        except (OSError, ValueError):
            pass  # being replaced right now
    return found


def _kill_after(out: Path, server: Any, done: int) -> threading.Thread:
    """Kill ``server`` once it has finished ``done`` jobs of the batch writing to ``out``."""
    def watch() -> None:
        deadline = time.monotonic() + 240
        while _finished_on(out, server.url) < done and time.monotonic() < deadline:
            time.sleep(0.1)
        server.process.kill()  # a crash, not a shutdown

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _kill_when_other_is_idle(out: Path, server: Any, other: ComfyClient) -> threading.Thread:
    """Kill ``server`` while it has a job and ``other`` has finished its own and has none, so only ``other``'s
    idle workers can take the jobs back."""
    def watch() -> None:
        client, deadline = ComfyClient(server.url, timeout=5), time.monotonic() + 240
        while time.monotonic() < deadline:
            mine, theirs = client.queue(), other.queue()
            if (mine.get("queue_running") and not theirs.get("queue_running") and not theirs.get("queue_pending")
                    and _finished_on(out, other.url) >= 1):
                break
            time.sleep(0.02)
        server.process.kill()  # a crash, not a shutdown

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_server_killed_mid_batch_then_restarted_and_rerun_renders_each_job_exactly_once(
        extra_server_factory: Any, job_file: Path, tmp_path: Path, fast_fields: dict[str, Any]) -> None:
    jobs = read_jobs(job_file).jobs
    out = tmp_path / "out"
    server = extra_server_factory("crashy")
    port = int(server.url.rsplit(":", 1)[1])
    watcher = _kill_after(out, server, done=2)
    first = run_batch(_settings(out, fast_fields), jobs, [server.url])
    watcher.join()
    assert 2 <= len(first.done) < 6 and first.unfinished and first.dead_servers == [server.url]

    server = extra_server_factory("crashy", port=port)  # same base directory and port: a restart
    second = run_batch(_settings(out, fast_fields), jobs, [server.url])
    assert second.ok and sorted(second.skipped) == sorted(m["job_id"] for m in first.done)
    assert len(second.done) == 6 - len(first.done)
    assert history_size(ComfyClient(server.url)) == len(second.done)  # nothing rendered twice
    renders = sorted(p.stem for p in (out / "renders").glob("*.png"))
    assert renders == sorted(job.job_id for job in jobs) and len(renders) == 6


@pytest.mark.slow
def test_a_server_killed_with_jobs_in_its_queue_while_the_other_is_idle_hands_them_all_to_the_other(
        comfy: ComfyClient, extra_server_factory: Any, tmp_path: Path, example_sketches: list[Path],
        fast_fields: dict[str, Any]) -> None:
    jobs = read_jobs(write_job_file(tmp_path, example_sketches[:3], ["a pastel study of it"])).jobs
    out = tmp_path / "out"
    doomed = extra_server_factory("doomed")
    settings = _settings(out, fast_fields)
    settings.slots = 2  # doomed takes two jobs (one running, one queued), the live server one
    watcher = _kill_when_other_is_idle(out, doomed, comfy)
    result = run_batch(settings, jobs, [doomed.url, comfy.url])
    watcher.join()
    assert result.ok and len(result.done) == 3 and result.dead_servers == [doomed.url] and not result.unfinished
    # The doomed server died with jobs in its queue: they, and all the others, finished on the live one.
    assert {m["server"] for m in read_manifests(out)} == {comfy.url}
    assert len(list((out / "renders").glob("*.png"))) == 3


def test_no_live_server_is_a_preflight_error(job_file: Path, tmp_path: Path, fast_fields: dict[str, Any]) -> None:
    with pytest.raises(PreflightError, match="No ComfyUI server answered"):
        run_batch(_settings(tmp_path / "out", fast_fields), read_jobs(job_file).jobs, ["http://127.0.0.1:9"])


def test_preflight_asks_only_for_the_workflows_node_types_and_names_one_the_server_lacks(
        comfy: ComfyClient, job_file: Path, tmp_path: Path, fast_fields: dict[str, Any]) -> None:
    info = comfy.node_info(["SaveImage", "SketchRAGHybridSampler", "NoSuchNode", "SaveImage"])
    assert sorted(info) == ["SaveImage", "SketchRAGHybridSampler"]  # an unknown type is absent, not an error
    assert info["SaveImage"] == comfy.object_info()["SaveImage"]
    settings = _settings(tmp_path / "out", fast_fields)
    settings.workflow["99"] = {"class_type": "NoSuchNode", "inputs": {}}
    before = history_size(comfy)
    with pytest.raises(PreflightError, match="node 99 \\(NoSuchNode\\): the server has no node type 'NoSuchNode'"):
        run_batch(settings, read_jobs(job_file).jobs, [comfy.url])
    assert history_size(comfy) == before
