"""Lines mode: every drawn stroke becomes one 1-pixel centre line, on real sketches and strokes of known width."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.morphology import medial_axis

from sketch_rag.cli.main import main
from sketch_rag.errors import InvalidImageError, InvalidParameterError
from sketch_rag.imaging import read_image
from sketch_rag.rendering.canny import CannySettings, sketch_to_edges
from tests.helpers.images import gray_u8

LINES = CannySettings(mode="lines")
# The 8 neighbours in ring order, so runs of set neighbours can be counted around a pixel.
RING = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))


def lines_of(image: np.ndarray, **settings: object) -> np.ndarray:
    out = sketch_to_edges(image, CannySettings(mode="lines", **settings))
    return out[..., 0] > 0


def neighbours_and_branches(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: how many of its 8 neighbours are set, and in how many separate runs around it."""
    padded = np.pad(mask.astype(np.uint8), 1)
    h, w = mask.shape
    ring = np.stack([padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx in RING])
    count = ring.sum(axis=0)
    runs = ((ring == 1) & (np.roll(ring, 1, axis=0) == 0)).sum(axis=0)
    return count, runs


def assert_one_pixel_wide(mask: np.ndarray, what: str) -> None:
    """No 2×2 block anywhere; a pixel with more than 2 neighbours only at (or touching) a true junction."""
    blocks = mask[:-1, :-1] & mask[1:, :-1] & mask[:-1, 1:] & mask[1:, 1:]
    assert not blocks.any(), f"{what}: 2×2 blocks at {np.argwhere(blocks)[:5].tolist()}"
    count, runs = neighbours_and_branches(mask)
    junctions = mask & (runs >= 3)
    near_junction = cv2.dilate(junctions.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    crowded = mask & (count > 2) & ~near_junction
    assert not crowded.any(), f"{what}: thick spots at {np.argwhere(crowded)[:5].tolist()}"


def ink_of(gray: np.ndarray) -> np.ndarray:
    """The strokes of a dark-on-light sketch, binarised independently of the engine (Otsu, OpenCV)."""
    _, binary = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    return binary > 0


@pytest.fixture(scope="module")
def house(example_sketches: list[Path]) -> np.ndarray:
    return gray_u8(next(p for p in example_sketches if p.name == "sketch_house.png"))


def test_lines_are_white_on_black_in_three_channels_at_input_size(house: np.ndarray) -> None:
    out = sketch_to_edges(house, LINES)
    assert out.shape == (*house.shape, 3) and out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 255}
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_every_example_sketch_gives_one_pixel_lines_inside_its_strokes(example_sketches: list[Path]) -> None:
    for path in example_sketches:
        gray = gray_u8(path)
        lines = lines_of(gray)
        assert_one_pixel_wide(lines, path.name)
        ink = ink_of(gray)
        assert (lines & ~ink).sum() == 0, f"{path.name}: lines outside the strokes"
        # Every stroke keeps its line: each connected piece of ink holds line pixels.
        pieces, labels = cv2.connectedComponents(ink.astype(np.uint8), connectivity=8)
        assert set(np.unique(labels[lines])) == set(range(1, pieces)), f"{path.name}: a stroke lost its line"


def test_canny_traces_each_stroke_twice_lines_once(example_sketches: list[Path]) -> None:
    """Against an independent skeleton (scikit-image's medial axis: distance transform, not thinning)."""
    for path in example_sketches:
        gray = gray_u8(path)
        reference = int(medial_axis(ink_of(gray), rng=0).sum())
        canny = int((sketch_to_edges(gray)[..., 0] > 0).sum())
        lines = int(lines_of(gray).sum())
        assert canny / reference > 1.8, path.name
        assert 0.85 < lines / reference < 1.1, path.name


@pytest.mark.parametrize("width", [1, 2, 3, 5, 8, 13])
@pytest.mark.parametrize("antialiased", [False, True])
def test_a_stroke_of_width_w_gives_one_centre_line(width: int, antialiased: bool) -> None:
    paper = np.full((80, 240), 255, np.uint8)
    cv2.line(paper, (30, 40), (210, 40), 20, width, cv2.LINE_AA if antialiased else cv2.LINE_8)
    lines = lines_of(paper)
    middle = lines[:, 60:180]
    assert (middle.sum(axis=0) == 1).all(), "one line pixel per column, not two contours"
    rows = np.nonzero(middle.any(axis=1))[0]
    assert abs(float(rows.mean()) - 40.0) <= 1.0  # on the stroke's centre
    assert_one_pixel_wide(lines, f"width {width}")


@pytest.mark.parametrize("width", [2, 6, 11])
def test_diagonal_and_curved_strokes_are_thinned_to_one_line(width: int) -> None:
    paper = np.full((200, 200), 255, np.uint8)
    cv2.line(paper, (20, 30), (180, 170), 0, width, cv2.LINE_AA)
    cv2.ellipse(paper, (100, 100), (70, 40), 15, 0, 360, 0, width, cv2.LINE_AA)
    lines = lines_of(paper)
    assert_one_pixel_wide(lines, f"width {width}")
    # An ellipse and a line crossing it twice: 1 line component, and the ellipse's hole stays open.
    assert cv2.connectedComponents(lines.astype(np.uint8), connectivity=8)[0] - 1 == 1
    assert cv2.connectedComponents((~lines).astype(np.uint8), connectivity=4)[0] - 1 >= 3


def test_light_on_dark_and_transparent_sketches_give_the_same_lines(house: np.ndarray) -> None:
    reference = lines_of(house)
    assert np.array_equal(lines_of(255 - house), reference)
    ink = 255 - house
    dark_strokes = np.dstack([np.zeros((*house.shape, 3), np.uint8), ink])
    light_strokes = np.dstack([np.full((*house.shape, 3), 255, np.uint8), ink])
    assert np.array_equal(lines_of(dark_strokes), reference)
    assert np.array_equal(lines_of(light_strokes), reference)
    assert np.array_equal(lines_of(house.astype(np.float32) / 255.0), reference)


@pytest.mark.parametrize(("resolution", "shape"), [(256, (256, 256)), (1024, (1024, 1024)), (760, (760, 1136))])
def test_lines_are_thinned_after_resizing_so_they_stay_one_pixel_wide(
    house: np.ndarray, resolution: int, shape: tuple[int, int]
) -> None:
    sketch = house if shape[0] == shape[1] else cv2.resize(house, (600, 400))
    lines = lines_of(sketch, resolution=resolution)
    assert lines.shape == shape
    assert_one_pixel_wide(lines, f"resolution {resolution}")
    # Line length scales with the side, as a 1-pixel line should (a resized 1-pixel map would not).
    native = lines_of(sketch).sum()
    assert 0.8 < lines.sum() / (native * shape[0] / sketch.shape[0]) < 1.2


def test_thicken_merges_a_stroke_drawn_twice_into_one_line() -> None:
    paper = np.full((60, 200), 255, np.uint8)
    paper[27:30, 20:180] = 0  # two strokes 2 px apart
    paper[32:35, 20:180] = 0
    assert (lines_of(paper)[:, 60:140].sum(axis=0) == 2).all()
    assert (lines_of(paper, thicken=2)[:, 60:140].sum(axis=0) == 1).all()


def test_faint_pencil_gives_the_lines_of_bold_ink(house: np.ndarray) -> None:
    bold = lines_of(house)
    faint = (255 - (255 - house.astype(np.float32)) * 0.05).astype(np.uint8)  # 5 % contrast
    near_bold = cv2.dilate(bold.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    faint_lines = lines_of(faint)
    assert (faint_lines & near_bold).sum() > 0.95 * faint_lines.sum()
    assert 0.9 < faint_lines.sum() / bold.sum() < 1.1


def test_grain_that_drowns_the_strokes_gives_no_lines_until_blur_calms_it(
    house: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    # Grey pencil (140) on grey paper (230) with grain of sigma 25: ink and paper histograms overlap.
    coverage = (255 - house.astype(np.float32)) / 255.0
    noise = np.random.default_rng(0).normal(0, 25, house.shape)
    grainy = np.clip(230 - coverage * 90 + noise, 0, 255).astype(np.uint8)
    with caplog.at_level(logging.WARNING, logger="sketch_rag.rendering.lines"):
        assert not lines_of(grainy).any()
    assert "use blur" in caplog.text
    clean = lines_of(house)
    smoothed = lines_of(grainy, blur=1.5)
    assert_one_pixel_wide(smoothed, "blurred grain")
    near_clean = cv2.dilate(clean.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert (smoothed & near_clean).sum() > 0.97 * smoothed.sum()
    assert 0.9 < smoothed.sum() / clean.sum() < 1.1


def test_canny_mode_is_the_default_and_unchanged(house: np.ndarray) -> None:
    assert np.array_equal(sketch_to_edges(house, CannySettings(mode="canny")), sketch_to_edges(house))
    assert np.array_equal(sketch_to_edges(house)[..., 0], cv2.Canny(house, 50, 150))


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("blank paper", np.full((64, 96), 255, np.uint8)),
        ("all ink", np.zeros((64, 96), np.uint8)),
        ("flat grey", np.full((64, 96, 3), 0.5, np.float32)),
        ("scanned blank page", np.clip(np.random.default_rng(1).normal(245, 3, (128, 128)), 0, 255).astype(np.uint8)),
        ("transparent", np.zeros((32, 32, 4), np.uint8)),
    ],
)
def test_a_sketch_without_strokes_gives_an_empty_line_map_and_says_so(
    name: str, image: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="sketch_rag.rendering.lines"):
        out = sketch_to_edges(image, LINES)
    assert out.shape == (*image.shape[:2], 3) and not out.any(), name
    assert "no strokes" in caplog.text and f"{image.shape[1]}x{image.shape[0]}" in caplog.text


def test_a_one_pixel_tall_sketch_keeps_its_stroke() -> None:
    row = np.full((1, 4000), 255, np.uint8)
    row[0, 1000:3000] = 0
    lines = lines_of(row)
    assert lines.shape == (1, 4000)
    assert lines[0, 1000:3000].all() and not lines[0, :1000].any() and not lines[0, 3000:].any()


@pytest.mark.parametrize("shape", [(20000, 1), (1, 20000)])
def test_a_one_pixel_wide_sketch_20000_pixels_long_is_refused_with_the_limit(shape: tuple[int, int]) -> None:
    with pytest.raises(InvalidImageError, match=r"sketch is \d+×\d+ pixels.*16384 pixels a side.*Downscale"):
        sketch_to_edges(np.full(shape, 255, np.uint8), LINES)


def test_a_resize_past_the_limit_is_refused_before_any_work() -> None:
    with pytest.raises(InvalidImageError, match="resized sketch is 65536000×4096 pixels.*limit"):
        sketch_to_edges(np.full((1, 16000), 255, np.uint8), CannySettings(mode="lines", resolution=4096))


def test_an_unknown_mode_is_refused_by_name() -> None:
    with pytest.raises(InvalidParameterError, match="mode is 'edges'; use one of canny, lines"):
        sketch_to_edges(np.zeros((8, 8), np.uint8), CannySettings(mode="edges"))


def test_the_canny_command_writes_the_engines_lines(tmp_path: Path, example_sketches: list[Path]) -> None:
    sketch = next(p for p in example_sketches if p.name == "sketch_turtle.png")
    out = tmp_path / "lines.png"
    assert main(["canny", str(sketch), "--out", str(out), "--mode", "lines", "--resolution", "768"]) == 0
    written = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert written is not None
    expected = sketch_to_edges(read_image(sketch), CannySettings(mode="lines", resolution=768))
    assert np.array_equal(written, expected[..., 0] if written.ndim == 2 else expected)
