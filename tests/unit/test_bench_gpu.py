"""bench/gpu.py in --tiny mode, as on a GPU machine without diffusers: it must bring diffusers along as a wheel.

The GPU check runs where torch and transformers are installed but diffusers is not. Here the installed
diffusers is hidden from the child interpreter (an import finder refuses it from site-packages), and a wheel
of it, packed from the installed files as its RECORD lists them (what ``pip download`` would fetch, with no
network), is the only diffusers it can find. The run must import that copy, render through both sides and
report its figures; without the wheel the same child cannot import diffusers at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu.py"

HIDING = """
import importlib.abc, importlib.machinery, os, runpy, sys
SITE, SCRIPT = {site!r}, {script!r}

class HideInstalled(importlib.abc.MetaPathFinder):
    # The installed diffusers is not there: only a copy outside site-packages imports.
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] != "diffusers":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and os.path.realpath(spec.origin or "").startswith(SITE):
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden from site-packages)", name=name)
        return spec

sys.meta_path.insert(0, HideInstalled())
if SCRIPT:
    sys.argv = [SCRIPT, *sys.argv[1:]]
    runpy.run_path(SCRIPT, run_name="__main__")
else:
    import diffusers
"""


def wheel_of_installed(name: str, target: Path) -> Path:
    """A pure-Python wheel of an installed distribution: its RECORD's files at their paths in site-packages."""
    dist = distribution(name)
    wheel = target / f"{name}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in dist.files or []:
            if file.parts[0] == ".." or "__pycache__" in file.parts:
                continue  # console scripts outside site-packages, bytecode
            archive.write(Path(str(dist.locate_file(file))), file.as_posix())
    return wheel


def child(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}  # the bench puts the pack on sys.path itself
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def site() -> str:
    return str(Path(str(distribution("diffusers").locate_file(""))).resolve())


def test_without_its_wheel_the_child_has_no_diffusers(site: str, tmp_path: Path) -> None:
    done = child(HIDING.format(site=site, script=""), cwd=tmp_path)
    assert done.returncode != 0 and "No module named 'diffusers' (hidden from site-packages)" in done.stderr


def test_the_tiny_gpu_check_runs_on_carried_diffusers_and_reports_both_sides(site: str, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    carried = wheel_of_installed("diffusers", wheels)
    done = child(HIDING.format(site=site, script=str(SCRIPT)), "--tiny", "--device", "cpu", "--steps", "2",
                 "--repeats", "2", "--wheels", str(wheels), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["carried"] == [carried.name]
    assert not str(Path(report["diffusers_from"]).resolve()).startswith(site)  # the unpacked wheel, not site
    assert report["tiny"] and report["steps"] == 2 and report["size"] == 64
    assert report["overhead_ratio"] > 0 and len(report["overhead_ratio_halves"]) == 2
    for side in ("ours", "plain"):
        figures = report[side]
        assert figures["s_per_image"] > 0 and figures["it_per_s"] > 0
        assert figures["decodes"] == 3 and figures["every_decode_finite"] and figures["images_finite"]
        assert figures["weights_mb"] > 0
    # The two sides load the same files: the same weights, byte for byte in size.
    assert report["ours"]["weights_mb"] == report["plain"]["weights_mb"]
    assert "s/image" in done.stdout and "plain diffusers" in done.stdout
