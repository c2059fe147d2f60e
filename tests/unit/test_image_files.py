"""Image files users hand us: every broken one is refused with a reason, never a crash or a hang."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sketch_rag.errors import InvalidImageError
from sketch_rag.imaging import read_image, write_image


def png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims ``width``×``height``: a decompression bomb's shape."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # b"IHDR" + 13 bytes of header fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(("name", "message"), [
    ("missing.png", "No image file"),
    ("empty.png", "empty"),
    ("notes.png", "not an image format"),
    ("truncated.png", "damaged or truncated"),
])
def test_missing_empty_corrupt_and_unsupported_files(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("this is not an image")
    Image.new("RGB", (64, 64), "white").save(tmp_path / "whole.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "whole.png").read_bytes()[:60])
    with pytest.raises(InvalidImageError, match=message):
        read_image(tmp_path / name)


def test_huge_image_is_refused_before_decoding(tmp_path: Path) -> None:
    for side in (12000, 20000):  # above our 100 MP limit; the second also trips Pillow's bomb guard
        bomb = png_claiming_size(tmp_path / f"bomb{side}.png", side, side)
        with pytest.raises(InvalidImageError, match="too large|limit is 16384 pixels a side and 100 MP"):
            read_image(bomb)


def test_written_images_replace_the_old_file_whole(tmp_path: Path) -> None:
    out = tmp_path / "edges.png"
    write_image(out, np.zeros((8, 8, 3), np.uint8))
    write_image(out, np.full((8, 8, 3), 255, np.uint8))
    assert np.asarray(Image.open(out)).min() == 255
    assert [p.name for p in tmp_path.iterdir()] == ["edges.png"]
