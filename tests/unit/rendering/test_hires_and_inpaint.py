"""The hires pass and the inpaint region on the tiny SD1.5 models, through the same warm pipeline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from sketch_rag.errors import InvalidImageError, InvalidParameterError, RenderInterruptedError
from sketch_rag.rendering.model_cache import PipelineCache
from sketch_rag.rendering.pipeline_spec import PipelineSpec
from sketch_rag.rendering.render_request import RenderRequest
from tests.helpers import render_requests


def request(edge: np.ndarray, styles: list[np.ndarray], **changes: Any) -> RenderRequest:
    return render_requests.request(edge, styles, **{"num_inference_steps": 3, **changes})


@pytest.fixture(scope="module")
def warm(make_spec: Callable[..., PipelineSpec]) -> tuple[PipelineCache, Any]:
    cache = PipelineCache()
    return cache, cache.get(make_spec())


@pytest.fixture(scope="module")
def init_image() -> np.ndarray:
    rng = np.random.default_rng(11)
    return rng.random((64, 64, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def mask() -> np.ndarray:
    m = np.zeros((64, 64), np.float32)
    m[16:48, 20:44] = 1.0
    m[16:48, 44:48] = 0.5  # a soft edge
    return m


def test_hires_renders_at_the_upscaled_size_with_every_step_counted(warm, edge_image, styles) -> None:
    cache, hybrid = warm
    loads = sum(cache.loads.values())
    steps: list[tuple[int, int]] = []
    out = hybrid.render(
        request(edge_image, styles[:1], upscale=1.5, hires_denoise=0.5, hires_steps=4),
        on_step=lambda i, n, _x: steps.append((i, n)),
    )
    assert out.shape == (1, 96, 96, 3) and np.isfinite(out).all()
    assert steps == [(i, 5) for i in range(1, 6)]  # 3 base steps + int(4 * 0.5) hires steps
    assert sum(cache.loads.values()) == loads  # the second pass loaded nothing


def test_hires_is_deterministic_and_refines_rather_than_resizes(warm, edge_image, styles) -> None:
    _, hybrid = warm
    a = hybrid.render(request(edge_image, styles[:1], upscale=2.0))
    assert np.array_equal(a, hybrid.render(request(edge_image, styles[:1], upscale=2.0)))
    assert not np.array_equal(a, hybrid.render(request(edge_image, styles[:1], upscale=2.0, hires_denoise=0.8)))
    base = hybrid.render(request(edge_image, styles[:1]))
    assert a.shape == (1, 128, 128, 3) and base.shape == (1, 64, 64, 3)
    # upscale 1 is exactly the plain render (no second pass at all)
    assert np.array_equal(base, hybrid.render(request(edge_image, styles[:1], upscale=1.0, hires_denoise=0.9)))


def test_cancel_during_the_hires_pass_stops_it_and_the_next_render_is_unchanged(warm, edge_image, styles) -> None:
    _, hybrid = warm
    baseline = hybrid.render(request(edge_image, styles[:1], upscale=1.5))
    seen: list[int] = []
    with pytest.raises(RenderInterruptedError, match="after step 4"):
        hybrid.render(
            request(edge_image, styles[:1], upscale=1.5),
            on_step=lambda i, _n, _x: seen.append(i),
            should_stop=lambda: len(seen) >= 4,  # step 4 is the hires pass's first
        )
    assert np.array_equal(hybrid.render(request(edge_image, styles[:1], upscale=1.5)), baseline)


def test_inpaint_changes_only_the_masked_region_and_keeps_the_rest_bit_for_bit(
    warm, edge_image, styles, init_image, mask
) -> None:
    _, hybrid = warm
    out = hybrid.render(request(edge_image, styles[:1], init_image=init_image, mask=mask, num_images_per_prompt=2))
    assert out.shape == (2, 64, 64, 3)
    outside = mask == 0
    assert np.array_equal(out[:, outside], np.broadcast_to(init_image[outside], out[:, outside].shape))
    assert not np.allclose(out[:, mask == 1], init_image[mask == 1], atol=0.05)
    assert not np.array_equal(out[0][mask == 0.5], init_image[mask == 0.5])  # the soft edge changes too
    again = hybrid.render(request(edge_image, styles[:1], init_image=init_image, mask=mask, num_images_per_prompt=2))
    assert np.array_equal(out, again)


def test_inpaint_at_another_render_size_still_returns_the_init_images_pixels(
    warm, edge_image, styles, init_image, mask
) -> None:
    _, hybrid = warm
    out = hybrid.render(request(edge_image, styles[:1], init_image=init_image, mask=mask, width=96, height=96))
    assert out.shape == (1, 64, 64, 3)
    assert np.array_equal(out[0][mask == 0], init_image[mask == 0])


def test_blending_mixes_a_soft_edge_and_keeps_unmasked_pixels_exactly() -> None:
    from sketch_rag.rendering.refine import blend_into

    init = np.full((2, 3, 3), 0.2, np.float32)
    renders = np.full((1, 2, 3, 3), 0.6, np.float32)
    mask = np.array([[0.0, 0.5, 1.0], [0.0, 0.25, 1.0]], np.float32)
    out = blend_into(init, renders, mask)
    assert np.array_equal(out[0, :, 0], init[:, 0])
    assert np.allclose(out[0, 0, 1], 0.4) and np.allclose(out[0, 1, 1], 0.3) and np.allclose(out[0, :, 2], 0.6)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"upscale": 2.5}, InvalidParameterError, "upscale is 2.5"),
        ({"upscale": float("nan")}, InvalidParameterError, "upscale is nan"),
        ({"upscale": 2.0, "width": 1536, "height": 1536}, InvalidParameterError, "gives 3072×3072"),
        ({"upscale": 1.5, "hires_denoise": 0.1, "hires_steps": 4}, InvalidParameterError, "runs no step"),
        ({"upscale": 1.5, "hires_steps": -1}, InvalidParameterError, "hires_steps is -1"),
        ({"mask": np.ones((64, 64), np.float32)}, InvalidParameterError, "without an init image"),
        ({"init_image": np.zeros((64, 64, 3), np.float32)}, InvalidParameterError, "without a mask"),
        ({"init_image": np.zeros((64, 64, 3)), "mask": np.ones((32, 64))}, InvalidImageError, "mask is 64×32"),
        ({"init_image": np.zeros((48, 64, 3)), "mask": np.ones((48, 64))}, InvalidImageError, "init image is 64×48"),
        ({"init_image": np.zeros((64, 64, 3)), "mask": np.zeros((64, 64))}, InvalidImageError, "mask is empty"),
        ({"init_image": np.zeros((64, 64, 3)), "mask": np.full((64, 64), 2.0)}, InvalidImageError, "outside"),
        ({"init_image": np.zeros((64, 64, 3)), "mask": np.ones((64, 64)), "upscale": 1.5}, InvalidParameterError,
         "upscale applies to full renders"),
    ],
)
def test_bad_hires_and_inpaint_settings_are_refused_before_sampling(
    warm, edge_image, styles, changes, error, message
) -> None:
    _, hybrid = warm
    before = hybrid.render(request(edge_image, styles[:1], num_inference_steps=1))
    with pytest.raises(error, match=message):
        hybrid.render(request(edge_image, styles[:1], **changes), on_step=lambda *_: pytest.fail("sampled"))
    assert np.array_equal(hybrid.render(request(edge_image, styles[:1], num_inference_steps=1)), before)
