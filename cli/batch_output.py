"""What a batch leaves on disk: one manifest per ended job, the renders, ``batch.json`` and the contact sheet.

Every file is written beside its name and renamed into place, so a crash never leaves half a file where a
re-run would read it. A job's manifest is written last: its presence (without an error, with its render
on disk) is what makes a re-run skip the job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from .batch_scores import contact_sheet
from .workflows import Graph


def manifest_path(out_dir: Path, job_id: str) -> Path:
    return out_dir / "manifests" / f"{job_id}.json"


def is_done(out_dir: Path, job_id: str) -> bool:
    """Finished earlier: a manifest without error whose output file exists."""
    path = manifest_path(out_dir, job_id)
    if not path.is_file():
        return False
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(manifest, dict) and not manifest.get("error") and bool(manifest.get("output"))
            and (out_dir / manifest["output"]).is_file())


def write_png(path: Path, image: Image.Image, graph: Graph, ui: dict[str, Any] | None) -> None:
    """The render with ComfyUI's text chunks, so dropping it on ComfyUI reopens the exact job.

    Written at zlib level 1: a batch writes many PNGs, and level 6 (Pillow's default) costs several times
    the time for a few percent of size.
    """
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(graph))
    if ui is not None:
        info.add_text("workflow", json.dumps(ui))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    image.save(tmp, format="PNG", pnginfo=info, compress_level=1)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_manifests(out_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((out_dir / "manifests").glob("*.json"))]


def write_report(out_dir: Path, extra_rows: Sequence[dict[str, Any]] = ()) -> Path:
    """``batch.json`` (every manifest, best structure first, then ``extra_rows``) and ``contact_sheet.png``.

    ``extra_rows`` are what has no manifest: bad rows skipped by ``--skip-bad``, jobs left unfinished. They
    are listed in ``batch.json`` (with their ``status``) but not drawn on the contact sheet.
    """
    rows = sorted(read_manifests(out_dir), key=lambda r: -(r.get("structure_fidelity") or 0.0))
    write_json(out_dir / "batch.json", [*rows, *extra_rows])
    return contact_sheet(rows, out_dir, out_dir / "contact_sheet.png")
