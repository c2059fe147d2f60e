"""Batch job files: CSV or JSONL rows of sketch × prompt (+ optional seed, style query, k, scales).

Every row is checked before anything is queued and every bad row is reported at once, with its line
number, so a 500-row file is fixed in one pass. A row's ``sketch`` may name a folder: the row then
expands to one job per image in it ("a folder of sketches × prompts").
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import JobFileError
from ..rendering.render_request import MAX_SEED
from ..retrieval.hashing import sha256_file

SKETCH_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}

_NUMBER_FIELDS: dict[str, Callable[[Any], Any]] = {
    "seed": int, "k": int, "controlnet_scale": float, "ip_adapter_scale": float,
}
FIELDS = ("sketch", "prompt", "seed", "style_query", "k", "controlnet_scale", "ip_adapter_scale", "negative_prompt")


@dataclass(frozen=True)
class Job:
    """One render: what the user asked for, and the stable id its output and manifest are named by."""

    sketch: Path
    prompt: str
    seed: int
    style_query: str | None = None
    k: int | None = None
    controlnet_scale: float | None = None
    ip_adapter_scale: float | None = None
    negative_prompt: str | None = None

    @functools.cached_property
    def job_id(self) -> str:
        """Same sketch file content + same fields = same id, so a re-run recognises finished work."""
        digest = sha256_file(self.sketch)[:16]
        key = json.dumps({**self.fields(), "sketch": digest}, sort_keys=True)
        return f"{self.sketch.stem[:40]}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"

    def fields(self) -> dict[str, Any]:
        """The fields bound into the workflow (sketch excluded: it is uploaded first)."""
        return {k: v for k, v in asdict(self).items() if k != "sketch" and v is not None}


def _default_seed(sketch: Path, prompt: str) -> int:
    # Deterministic, so a re-run of a seedless row renders (and skips) the same job.
    return int(hashlib.sha256(f"{sketch.name}\n{prompt}".encode()).hexdigest()[:8], 16)


def read_jobs(path: Path) -> list[Job]:
    """Jobs from a ``.csv`` (with a header row) or ``.jsonl`` file; relative sketch paths are relative to it.

    Raises:
        JobFileError: the file is missing or of an unknown kind, or any row is bad (all bad rows listed).
    """
    if not path.is_file():
        raise JobFileError(f"Job file {path} does not exist; give a .csv or .jsonl file of sketch, prompt rows.")
    rows: list[tuple[int, Any]] = []
    problems: list[str] = []
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        missing = {"sketch", "prompt"} - set(reader.fieldnames or [])
        if missing:
            raise JobFileError(
                f"{path}: the header {reader.fieldnames} lacks {sorted(missing)}; the first line must name the "
                f"columns, e.g. 'sketch,prompt,seed' (known: {', '.join(FIELDS)})."
            )
        rows = [(n + 2, row) for n, row in enumerate(reader)]
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                problems.append(f"line {n}: not JSON ({exc.msg}): {line[:80]!r}")
    else:
        raise JobFileError(f"Job file {path} is neither .csv nor .jsonl; rename it or convert it.")
    jobs: list[Job] = []
    for number, row in rows:
        try:
            jobs.extend(_row_jobs(row, path.parent))
        except ValueError as exc:
            problems.append(f"line {number}: {exc}")
    if problems:
        raise JobFileError(f"{path} has {len(problems)} bad row(s); nothing was queued:\n  " + "\n  ".join(problems))
    if not jobs:
        raise JobFileError(f"{path} has no jobs; add rows with at least sketch and prompt.")
    return jobs


def _row_jobs(row: Any, base: Path) -> list[Job]:
    if not isinstance(row, dict):
        raise ValueError(f"expected an object with sketch and prompt, got {row!r}")
    values: dict[str, Any] = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k is not None}
    values = {k: v for k, v in values.items() if v not in ("", None)}
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}; known: {', '.join(FIELDS)}")
    for name in ("sketch", "prompt"):
        if not isinstance(values.get(name), str):
            raise ValueError(f"{name} is missing or not text ({values.get(name)!r})")
    for name, convert in _NUMBER_FIELDS.items():
        if name in values:
            try:
                number = convert(values[name])
                if convert is int and float(values[name]) != number:
                    raise ValueError
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a {convert.__name__}, got {values[name]!r}") from None
            values[name] = number
    if not 0 <= values.get("seed", 0) <= MAX_SEED:
        raise ValueError(f"seed {values['seed']} is outside 0..{MAX_SEED}")
    if "k" in values and not 1 <= values["k"] <= 64:
        raise ValueError(f"k {values['k']} is outside 1..64")
    for name in ("controlnet_scale", "ip_adapter_scale"):
        if name in values and not 0.0 <= values[name] <= 5.0:
            raise ValueError(f"{name} {values[name]} is outside 0..5")
    sketch = Path(values.pop("sketch")).expanduser()
    sketch = sketch if sketch.is_absolute() else base / sketch
    if sketch.is_dir():
        sketches = sorted(p for p in sketch.iterdir() if p.suffix.lower() in SKETCH_EXTENSIONS)
        if not sketches:
            raise ValueError(f"sketch folder {sketch} has no images ({', '.join(sorted(SKETCH_EXTENSIONS))})")
    elif sketch.is_file():
        sketches = [sketch]
    else:
        raise ValueError(f"sketch {sketch} does not exist")
    return [Job(sketch=s, seed=values.get("seed", _default_seed(s, values["prompt"])),
                **{k: v for k, v in values.items() if k != "seed"}) for s in sketches]
