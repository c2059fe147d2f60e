"""``sketch-rag library`` end to end with the tiny CLIP, in-process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sketch_rag.cli import library_cmd
from sketch_rag.cli.main import main
from sketch_rag.retrieval.library import SHIPPED_LIBRARY


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = main(list(argv))
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1]) if code == 0 else {}


def test_library_commands(tmp_path: Path, tiny_models_dir: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(library_cmd, "HOME", tmp_path / "home")
    folder = tmp_path / "lib"
    shutil.copytree(SHIPPED_LIBRARY, folder)
    common = ["--folder", str(folder), "--models-dir", str(tiny_models_dir), "--store", str(tmp_path / "store"),
              "--json"]
    code, synced = run(capsys, "library", "sync", *common)
    assert code == 0 and synced["total"] == 15 and synced["embedded"] == 15
    code, again = run(capsys, "library", "sync", *common)
    assert again["embedded"] == 0 and again["added"] == []
    code, added = run(capsys, "library", "add", str(folder / "mucha_dance.jpg"), "--name", "Poster",
                      "--tags", "Art Nouveau, my poster", "--filename", "mine/poster.jpg", *common)
    assert code == 0 and added["id"] == "mine/poster.jpg" and (folder / "mine" / "poster.json").is_file()
    code, found = run(capsys, "library", "query", "flowing poster", "-k", "2", "--tags", "MY poster", *common)
    assert [r["id"] for r in found["results"]] == ["mine/poster.jpg"]
    code, found = run(capsys, "library", "query", "浮世絵の波", "-k", "20", *common)
    assert len(found["results"]) == 16 and sum(r["weight"] for r in found["results"]) == pytest.approx(1, abs=1e-4)
    assert [r["percentile"] for r in found["results"]][:2] == [100.0, pytest.approx(100 * 14 / 15, abs=0.01)]
    assert found["results"][0]["z_score"] > found["results"][-1]["z_score"]
    code, by_words = run(capsys, "library", "query", "Poster. art nouveau, my poster", "-k", "1", "--text-weight", "1",
                         *common)
    assert [r["id"] for r in by_words["results"]] == ["mine/poster.jpg"] and by_words["results"][0]["score"] > 0.999
    code, listed = run(capsys, "library", "list", *common)
    names = {s["name"] for s in listed["styles"]}
    assert "Ukiyo-e woodblock print" in names and "Poster" in names
    assert main(["library", "query", "", *common]) == 2
    assert "style query is empty" in capsys.readouterr().err
