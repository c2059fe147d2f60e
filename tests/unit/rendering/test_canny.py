"""The Canny engine on real sketches and on every image layout users bring."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from sketch_rag.errors import InvalidImageError, InvalidParameterError
from sketch_rag.imaging import read_image
from sketch_rag.rendering.canny import CannySettings, sketch_to_edges, target_size
from tests.helpers.images import gray_u8


@pytest.fixture(scope="module")
def house(example_sketches: list[Path]) -> np.ndarray:
    return gray_u8(next(p for p in example_sketches if p.name == "sketch_house.png"))


def overlap(a: np.ndarray, b: np.ndarray, tolerance: int = 1) -> float:
    """Share of a's edge pixels that have an edge of b within ``tolerance`` pixels."""
    a_on, b_on = a[..., 0] > 0, b[..., 0] > 0
    near_b = cv2.dilate(b_on.astype(np.uint8), np.ones((2 * tolerance + 1,) * 2, np.uint8)) > 0
    return float((a_on & near_b).sum() / max(1, a_on.sum()))


def test_edges_are_white_on_black_in_three_channels_at_input_size(house: np.ndarray) -> None:
    edges = sketch_to_edges(house)
    assert edges.shape == (*house.shape, 3) and edges.dtype == np.uint8
    assert set(np.unique(edges)) == {0, 255}
    assert (edges[..., 0] == edges[..., 1]).all() and (edges[..., 1] == edges[..., 2]).all()
    # A line drawing is mostly paper: a few percent of pixels are edges.
    assert 0.005 < (edges[..., 0] > 0).mean() < 0.1


def test_defaults_match_opencv_canny_50_150_on_a_plain_sketch(example_sketches: list[Path]) -> None:
    for path in example_sketches:
        gray = gray_u8(path)
        expected = cv2.Canny(gray, 50, 150)
        assert np.array_equal(sketch_to_edges(gray)[..., 0], expected), path.name


def test_light_on_dark_drawing_gives_the_same_edges(house: np.ndarray) -> None:
    assert np.array_equal(sketch_to_edges(255 - house), sketch_to_edges(house))


def test_every_layout_and_depth_of_one_sketch_gives_the_same_edges(house: np.ndarray) -> None:
    reference = sketch_to_edges(house)
    layouts = {
        "gray (H, W, 1)": house[:, :, None],
        "rgb": np.repeat(house[:, :, None], 3, axis=2),
        "16-bit": house.astype(np.uint16) * 257,
        "float": house.astype(np.float32) / 255.0,
        "float64 rgb": np.repeat(house[:, :, None], 3, axis=2) / 255.0,
        "opaque rgba": np.dstack([np.repeat(house[:, :, None], 3, axis=2), np.full_like(house, 255)]),
    }
    for name, image in layouts.items():
        assert np.array_equal(sketch_to_edges(image), reference), name


def test_transparent_paper_counts_as_paper(house: np.ndarray) -> None:
    reference = sketch_to_edges(house)
    ink = 255 - house  # stroke coverage
    dark_strokes = np.dstack([np.zeros((*house.shape, 3), np.uint8), ink])
    light_strokes = np.dstack([np.full((*house.shape, 3), 255, np.uint8), ink])
    assert overlap(sketch_to_edges(dark_strokes), reference) > 0.98
    assert overlap(sketch_to_edges(light_strokes), reference) > 0.98
    assert overlap(reference, sketch_to_edges(light_strokes)) > 0.98


def test_resolution_sets_the_short_side_keeps_aspect_and_multiples_of_eight(house: np.ndarray) -> None:
    wide = cv2.resize(house, (450, 300))
    edges = sketch_to_edges(wide, CannySettings(resolution=512))
    assert edges.shape == (512, 768, 3)
    assert target_size(333, 1000, 512) == (512, 1536)
    assert target_size(1000, 333, 768) == (2304, 768)
    assert all(side % 8 == 0 for side in target_size(517, 613, 520))
    assert target_size(300, 450, 0) == (300, 450)


def test_auto_threshold_recovers_a_faint_pencil_sketch(house: np.ndarray) -> None:
    crisp = sketch_to_edges(house)
    faint = (255 - (255 - house.astype(np.float32)) * 0.05).astype(np.uint8)  # 5 % contrast
    fixed = sketch_to_edges(faint)
    auto = sketch_to_edges(faint, CannySettings(auto_threshold=True))
    assert (fixed > 0).sum() < 0.2 * (crisp > 0).sum()
    assert overlap(crisp, auto) > 0.9


@pytest.mark.parametrize("mode", ["canny", "lines"])
def test_thicken_joins_a_broken_line(mode: str) -> None:
    paper = np.full((64, 128), 255, np.uint8)
    for x in range(8, 120, 8):  # a dashed stroke: 5 px of ink, 3 px gap
        paper[30:33, x : x + 5] = 60

    def pieces(thicken: int) -> int:
        edges = sketch_to_edges(paper, CannySettings(mode=mode, thicken=thicken))
        return cv2.connectedComponents((edges[..., 0] > 0).astype(np.uint8))[0] - 1

    assert pieces(0) >= 10
    assert pieces(2) == 1


def test_blur_removes_edges_from_paper_grain(house: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    grainy = np.clip(house.astype(np.float32) + rng.normal(0, 25, house.shape), 0, 255).astype(np.uint8)
    noisy = (sketch_to_edges(grainy) > 0).sum()
    smoothed = (sketch_to_edges(grainy, CannySettings(blur=1.5)) > 0).sum()
    assert smoothed < 0.5 * noisy


def test_a_one_pixel_image_has_no_edges() -> None:
    assert np.array_equal(sketch_to_edges(np.zeros((1, 1), np.uint8)), np.zeros((1, 1, 3), np.uint8))


@pytest.mark.parametrize(
    ("settings", "names"),
    [
        (CannySettings(low_threshold=-1), "low_threshold"),
        (CannySettings(high_threshold=256), "high_threshold"),
        (CannySettings(low_threshold=200, high_threshold=100), "low_threshold (200) is above high_threshold"),
        (CannySettings(resolution=4), "resolution"),
        (CannySettings(resolution=99999), "resolution"),
        (CannySettings(blur=-1), "blur"),
        (CannySettings(thicken=50), "thicken"),
    ],
)
def test_settings_out_of_range_are_refused_by_name(settings: CannySettings, names: str) -> None:
    with pytest.raises(InvalidParameterError, match=names.replace("(", r"\(").replace(")", r"\)")):
        sketch_to_edges(np.zeros((8, 8), np.uint8), settings)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((0, 0), np.uint8), "empty"),
        (np.zeros((5, 0, 3), np.uint8), "empty"),
        (np.broadcast_to(np.uint8(255), (20000, 20000)), "20000×20000.*limit"),
        (np.full((4, 4), np.nan, np.float32), "NaN"),
        (np.full((4, 4), 3.0, np.float32), "0..1"),
        (np.zeros((4, 4), np.int64), "pixel type int64"),
        (np.zeros((4, 4, 5), np.uint8), "channels"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
        ([[0, 1], [1, 0]], "numpy array"),
    ],
)
def test_unusable_images_are_refused_with_the_reason(image: object, message: str) -> None:
    with pytest.raises(InvalidImageError, match=message):
        sketch_to_edges(image)  # type: ignore[arg-type,unused-ignore]


def test_read_image_keeps_16_bit_depth_and_alpha(tmp_path: Path, house: np.ndarray) -> None:
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), house.astype(np.uint16) * 257)
    loaded = read_image(deep)
    assert loaded.shape == (*house.shape, 1) and loaded.dtype == np.float32
    assert np.allclose(loaded[..., 0], house / 255.0, atol=1e-6)

    transparent = tmp_path / "transparent.png"
    rgba = np.dstack([np.zeros((*house.shape, 3), np.uint8), 255 - house])
    cv2.imwrite(str(transparent), rgba)
    assert read_image(transparent).shape == (*house.shape, 4)
