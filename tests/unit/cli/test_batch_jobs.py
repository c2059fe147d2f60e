"""Job files a user really hands ``sketch-rag batch``: damaged sketches, folders, spreadsheet exports, big files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sketch_rag.cli.batch_jobs import read_job_file, read_jobs
from sketch_rag.errors import JobFileError


def _png(path: Path, size: tuple[int, int] = (32, 24)) -> Path:
    image = Image.new("L", size, 255)
    image.paste(0, (4, 4, size[0] - 4, 6))
    image.save(path)
    return path


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return _png(tmp_path / "good.png")


def test_truncated_non_image_folder_and_oversized_sketches_are_all_reported_with_their_lines(
        tmp_path: Path, good: Path) -> None:
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "folder.png").mkdir()
    huge = tmp_path / "huge.png"
    Image.new("1", (20000, 8)).save(huge)  # tiny file, a side over the 16384-pixel limit
    path = tmp_path / "jobs.csv"
    path.write_text("sketch,prompt\ngood.png,a\ntruncated.png,b\nnotes.png,c\nfolder.png,d\nhuge.png,e\n")

    job_file = read_job_file(path)

    assert [job.sketch.name for job in job_file.jobs] == ["good.png"]
    reasons = {row.line: row.reason for row in job_file.bad_rows}
    assert sorted(reasons) == [3, 4, 5, 6]
    assert "damaged or truncated" in reasons[3] and "not an image format" in reasons[4]
    assert "is a folder, not an image file" in reasons[5] and "20000×8 pixels" in reasons[6]
    with pytest.raises(JobFileError, match=r"4 bad row\(s\); nothing was queued \(--skip-bad runs the others\)"):
        read_jobs(path)


def test_a_damaged_image_inside_a_sketch_folder_is_one_bad_entry_and_the_folder_keeps_its_good_images(
        tmp_path: Path) -> None:
    folder = tmp_path / "sketches"
    folder.mkdir()
    _png(folder / "a.png")
    _png(folder / "b.png")
    (folder / "c.png").write_bytes((folder / "a.png").read_bytes()[:40])
    (folder / "d.png").mkdir()  # a folder named like an image
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps({"sketch": "sketches", "prompt": "ink"}) + "\n")

    job_file = read_job_file(path)

    assert sorted(job.sketch.name for job in job_file.jobs) == ["a.png", "b.png"]
    assert sorted(Path(row.sketch or "").name for row in job_file.bad_rows) == ["c.png", "d.png"]
    assert all(row.line == 1 for row in job_file.bad_rows)


def test_a_spreadsheet_export_with_a_byte_order_mark_and_windows_line_endings_reads_like_any_csv(
        tmp_path: Path, good: Path) -> None:
    path = tmp_path / "jobs.csv"
    path.write_bytes("\ufeffsketch,prompt,seed\r\ngood.png,\"a watercolor, soft\",7\r\ngood.png,ink,8\r\n"
                     .encode("utf-8"))

    jobs = read_jobs(path).jobs

    assert [(job.prompt, job.seed) for job in jobs] == [("a watercolor, soft", 7), ("ink", 8)]
    assert all(job.sketch == good for job in jobs)


def test_duplicate_rows_run_once_and_are_counted(tmp_path: Path, good: Path, caplog: pytest.LogCaptureFixture
                                                 ) -> None:
    copy = tmp_path / "copy.png"
    copy.write_bytes(good.read_bytes())  # same content, another name: another job (its id names the file)
    path = tmp_path / "jobs.csv"
    path.write_text("sketch,prompt,seed\ngood.png,a,1\ngood.png,a,1\ngood.png,a,2\ngood.png,a,1\ncopy.png,a,1\n")

    job_file = read_job_file(path)

    assert [(job.sketch.name, job.seed) for job in job_file.jobs] == [("good.png", 1), ("good.png", 2),
                                                                      ("copy.png", 1)]
    assert job_file.duplicate_lines == [3, 5]
    assert "2 row(s)" in caplog.text and "each job runs once" in caplog.text


def test_ten_thousand_rows_read_in_seconds_with_each_sketch_read_once(tmp_path: Path, good: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import sketch_rag.cli.batch_jobs as batch_jobs

    reads: list[Path] = []
    real = batch_jobs.decode_image

    def counting(path: Path, *args: Any, **kwargs: Any) -> Any:
        reads.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(batch_jobs, "decode_image", counting)
    _png(tmp_path / "other.png", (40, 40))
    path = tmp_path / "jobs.csv"
    path.write_text("sketch,prompt,seed\n" + "".join(f"{['good.png', 'other.png'][n % 2]},prompt {n},{n}\n"
                                                     for n in range(10_000)))
    start = time.perf_counter()
    jobs = read_jobs(path).jobs
    seconds = time.perf_counter() - start

    assert len(jobs) == 10_000 and len({job.job_id for job in jobs}) == 10_000
    assert sorted(p.name for p in reads) == ["good.png", "other.png"]
    assert seconds < 10, f"10,000 rows took {seconds:.1f} s"
