"""``--ray`` without the ray extra installed fails at once, with the one install line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sketch_rag.cli.main import main


def test_ray_missing_fails_at_once_with_the_install_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    jobs = tmp_path / "jobs.csv"  # never read: the missing extra is found first
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--ray"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "sketch-rag[ray]"' in err and "--ray needs Ray" in err
    assert not (tmp_path / "out").exists()
