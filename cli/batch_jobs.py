"""Batch job files: CSV or JSONL rows of sketch × prompt (+ optional seed, style query, k, scales).

Every row is checked before anything is queued and every bad row is reported at once, with its line
number, so a 500-row file is fixed in one pass. That includes reading every sketch in full: ComfyUI's
LoadImage accepts a truncated PNG and renders half a drawing, so a damaged, non-image or oversized
sketch is a bad row here. A row's ``sketch`` may name a folder: the row then expands to one job per
image in it ("a folder of sketches × prompts"). Rows that repeat an earlier job exactly (same sketch
content, same fields, so the same job id) run once; the repeats are counted and logged.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidImageError, JobFileError
from ..hashing import sha256_file
from ..imaging import decode_image
from ..rendering import MAX_CONTROLNET_SCALE, MAX_IP_ADAPTER_SCALE, MAX_SEED
from ..retrieval import MAX_K

logger = logging.getLogger(__name__)

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
    sketch_sha256: str | None = field(default=None, compare=False, repr=False)
    """The sketch file's hash when the job file reader already computed it (one hash per file, not per row)."""

    @functools.cached_property
    def job_id(self) -> str:
        """Same sketch file content + same fields = same id, so a re-run recognises finished work."""
        digest = (self.sketch_sha256 or sha256_file(self.sketch))[:16]
        key = json.dumps({**self.fields(), "sketch": digest}, sort_keys=True)
        return f"{self.sketch.stem[:40]}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"

    def fields(self) -> dict[str, Any]:
        """The fields bound into the workflow (sketch excluded: it is uploaded first)."""
        return {k: v for k, v in asdict(self).items() if k not in ("sketch", "sketch_sha256") and v is not None}


@dataclass(frozen=True)
class BadRow:
    """A row (or one image of a row's folder) that cannot be run, and why."""

    line: int
    reason: str
    sketch: str | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class JobFile:
    """What a job file holds: the runnable jobs (each once), the bad rows, and the repeats that were folded."""

    path: Path
    jobs: list[Job]
    bad_rows: list[BadRow]
    duplicate_lines: list[int]


def _default_seed(sketch: Path, prompt: str) -> int:
    # Deterministic, so a re-run of a seedless row renders (and skips) the same job.
    return int(hashlib.sha256(f"{sketch.name}\n{prompt}".encode()).hexdigest()[:8], 16)


def read_jobs(path: Path, *, skip_bad: bool = False) -> JobFile:
    """The jobs of a ``.csv`` (with a header row) or ``.jsonl`` file, ready to queue; relative sketch paths are
    relative to it. With ``skip_bad`` the bad rows are returned beside the good ones instead of refused.

    Raises:
        JobFileError: the file is missing or of an unknown kind, any row is bad (all bad rows listed) and
            ``skip_bad`` is off, or no row is good.
    """
    job_file = read_job_file(path)
    if job_file.bad_rows and not skip_bad:
        raise JobFileError(bad_rows_message(job_file))
    if not job_file.jobs:
        raise JobFileError(f"{path} has no good rows; nothing was queued:\n  "
                           + "\n  ".join(str(row) for row in job_file.bad_rows))
    return job_file


def bad_rows_message(job_file: JobFile) -> str:
    problems = job_file.bad_rows
    return (f"{job_file.path} has {len(problems)} bad row(s); nothing was queued (--skip-bad runs the others):\n  "
            + "\n  ".join(str(p) for p in problems))


def read_job_file(path: Path) -> JobFile:
    """Every row of a job file checked (sketches read in full), bad rows collected rather than raised.

    A UTF-8 byte-order mark and Windows line endings are accepted (spreadsheet exports have both).

    Raises:
        JobFileError: the file is missing, unreadable, of an unknown kind or has no header; or it has no rows.
    """
    if not path.is_file():
        raise JobFileError(f"Job file {path} does not exist; give a .csv or .jsonl file of sketch, prompt rows.")
    rows: list[tuple[int, Any]] = []
    problems: list[BadRow] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError(f"Job file {path} cannot be read as UTF-8 text ({exc}); save it as UTF-8.") from exc
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = {"sketch", "prompt"} - set(reader.fieldnames or [])
        if missing:
            raise JobFileError(
                f"{path}: the header {reader.fieldnames} lacks {sorted(missing)}; the first line must name the "
                f"columns, e.g. 'sketch,prompt,seed' (known: {', '.join(FIELDS)})."
            )
        try:
            for row in reader:  # line_num: where the row ended, so quoted multi-line fields count right
                rows.append((reader.line_num, row))
        except csv.Error as exc:
            problems.append(BadRow(reader.line_num, f"not valid CSV ({exc}); the rows after it were not read"))
    elif path.suffix.lower() in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                problems.append(BadRow(n, f"not JSON ({exc.msg}): {line[:80]!r}"))
    else:
        raise JobFileError(f"Job file {path} is neither .csv nor .jsonl; rename it or convert it.")
    sketches = _SketchChecks()
    jobs: dict[str, Job] = {}
    first_line: dict[str, int] = {}
    duplicates: list[int] = []
    for number, row in rows:
        try:
            found, bad = _row_jobs(row, path.parent, sketches)
        except ValueError as exc:
            problems.append(BadRow(number, str(exc), _sketch_field(row)))
            continue
        problems.extend(BadRow(number, f"sketch {sketch}: {reason}", str(sketch)) for sketch, reason in bad)
        for job in found:
            if job.job_id in jobs:
                duplicates.append(number)
            else:
                jobs[job.job_id] = job
                first_line[job.job_id] = number
    if duplicates:
        shown = ", ".join(str(n) for n in duplicates[:10]) + (", ..." if len(duplicates) > 10 else "")
        logger.warning("Sketch RAG batch: %d row(s) of %s repeat an earlier job exactly (line(s) %s); each job "
                       "runs once.", len(duplicates), path, shown)
    if not jobs and not problems:
        raise JobFileError(f"{path} has no jobs; add rows with at least sketch and prompt.")
    return JobFile(path, list(jobs.values()), problems, duplicates)


def _sketch_field(row: Any) -> str | None:
    value = row.get("sketch") if isinstance(row, dict) else None
    return value if isinstance(value, str) else None


class _SketchChecks:
    """Each sketch file read in full and hashed once, however many rows name it (10,000 rows, 3 files)."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[str | None, str | None]] = {}

    def check(self, sketch: Path) -> tuple[str | None, str | None]:
        """``(sha256, None)`` for a usable sketch, ``(None, reason)`` for one that is not."""
        if sketch not in self._seen:
            self._seen[sketch] = self._read(sketch)
        return self._seen[sketch]

    @staticmethod
    def _read(sketch: Path) -> tuple[str | None, str | None]:
        if sketch.is_dir():
            return None, ("is a folder, not an image file; name the folder without an image extension to render "
                          "every image in it, or point at one image")
        try:
            decode_image(sketch, lambda opened: opened.load(), "sketch")  # load(): decode every pixel
            return sha256_file(sketch), None
        except InvalidImageError as exc:
            return None, str(exc)
        except OSError as exc:
            return None, f"cannot be read ({exc}); check its permissions"


def _row_jobs(row: Any, base: Path, sketches: _SketchChecks) -> tuple[list[Job], list[tuple[Path, str]]]:
    """The row's jobs, and the ``(sketch, reason)`` of each of its sketches that cannot be used.

    Raises:
        ValueError: the row itself is bad (a missing or malformed field, a sketch path that does not exist).
    """
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
    if "k" in values and not 1 <= values["k"] <= MAX_K:
        raise ValueError(f"k {values['k']} is outside 1..{MAX_K}")
    for name, most in (("controlnet_scale", MAX_CONTROLNET_SCALE), ("ip_adapter_scale", MAX_IP_ADAPTER_SCALE)):
        if name in values and not 0.0 <= values[name] <= most:
            raise ValueError(f"{name} {values[name]} is outside 0..{most:g}")
    sketch = Path(values.pop("sketch")).expanduser()
    sketch = sketch if sketch.is_absolute() else base / sketch
    if sketch.is_dir() and sketch.suffix.lower() not in SKETCH_EXTENSIONS:
        paths = sorted(p for p in sketch.iterdir() if p.suffix.lower() in SKETCH_EXTENSIONS)
        if not paths:
            raise ValueError(f"sketch folder {sketch} has no images ({', '.join(sorted(SKETCH_EXTENSIONS))})")
    elif sketch.exists():
        paths = [sketch]
    else:
        raise ValueError(f"sketch {sketch} does not exist")
    jobs, bad = [], []
    for path in paths:
        digest, reason = sketches.check(path)
        if reason is not None:
            bad.append((path, reason))
            continue
        jobs.append(Job(sketch=path, seed=values.get("seed", _default_seed(path, values["prompt"])),
                        sketch_sha256=digest, **{k: v for k, v in values.items() if k != "seed"}))
    return jobs, bad
