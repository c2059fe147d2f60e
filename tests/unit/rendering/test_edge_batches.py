"""An edge-map batch renders every edge map, in order, from one noise draw of the seed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from sketch_rag.errors import InvalidImageError, RenderInterruptedError
from sketch_rag.rendering.model_cache import PipelineCache
from sketch_rag.rendering.pipeline_spec import PipelineSpec
from sketch_rag.rendering.render_request import RenderRequest

STEPS = 2


@pytest.fixture(scope="module")
def hybrid(cache: PipelineCache, make_spec: Callable[..., PipelineSpec]) -> Any:
    return cache.get(make_spec())


@pytest.fixture(scope="module")
def edges(edge_image: np.ndarray) -> list[np.ndarray]:
    return [edge_image, edge_image[::-1].copy()]  # the house, and the house upside down


def _request(edge: np.ndarray, style: np.ndarray, images: int = 1) -> RenderRequest:
    return RenderRequest(
        prompt="a watercolor house", control_image=edge, style_images=[style], num_inference_steps=STEPS,
        seed=3, width=64, height=64, num_images_per_prompt=images,
    )


def test_each_edge_map_renders_in_order_and_the_first_as_it_would_alone(hybrid: Any, edges, styles) -> None:
    style = styles[0]
    batch = hybrid.render_batch(_request(edges[0], style, images=2), edges)
    assert batch.shape == (4, 64, 64, 3)
    alone = [hybrid.render(_request(edge, style, images=2)) for edge in edges]
    assert np.array_equal(batch[:2], alone[0])  # edge map 0: noise 0 and 1 of the seed, as alone
    # edge map 1 follows with noise 2 and 3: not the images it gets alone (noise 0 and 1), and its own structure
    assert not np.array_equal(batch[2:], alone[1])
    reversed_batch = hybrid.render_batch(_request(edges[1], style, images=2), edges[::-1])
    assert np.array_equal(reversed_batch[:2], alone[1])
    assert len({image.tobytes() for image in batch}) == 4  # every image of the output differs


def test_the_same_seed_and_batch_give_the_same_images(hybrid: Any, edges, styles) -> None:
    first = hybrid.render_batch(_request(edges[0], styles[0]), edges)
    assert np.array_equal(first, hybrid.render_batch(_request(edges[0], styles[0]), edges))


def test_progress_counts_the_steps_of_every_edge_map_and_an_interrupt_names_the_edge_map(
    hybrid: Any, edges, styles
) -> None:
    seen: list[tuple[int, int]] = []
    hybrid.render_batch(_request(edges[0], styles[0]), edges, on_step=lambda i, n, _x: seen.append((i, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    done: list[int] = []
    with pytest.raises(RenderInterruptedError, match=r"after step 1 of 2 \(edge map 2 of 2\)"):
        hybrid.render_batch(
            _request(edges[0], styles[0]), edges, on_step=lambda i, n, _x: done.append(i),
            should_stop=lambda: len(done) >= 3,
        )


def test_a_bad_edge_map_anywhere_in_the_batch_fails_before_any_sampling(hybrid: Any, edges, styles) -> None:
    steps: list[int] = []
    bad = np.full((64, 64), np.nan, dtype=np.float32)
    with pytest.raises(InvalidImageError):
        hybrid.render_batch(_request(edges[0], styles[0]), [edges[0], bad], on_step=lambda i, n, _x: steps.append(i))
    assert steps == []
    with pytest.raises(InvalidImageError, match="edge map batch is empty"):
        hybrid.render_batch(_request(edges[0], styles[0]), [])


def test_the_first_edge_map_renders_as_alone_at_sizes_where_a_batched_noise_draw_would_differ(
    hybrid: Any, edges, styles
) -> None:
    # 72×72 px = 9×9 latents: torch's batched randn gives the first image other noise than a single draw here.
    def at_72(edge: np.ndarray) -> RenderRequest:
        return RenderRequest(
            prompt="a watercolor house", control_image=edge, style_images=[styles[0]], num_inference_steps=1,
            seed=3, width=72, height=72,
        )

    batch = hybrid.render_batch(at_72(edges[0]), edges)
    assert batch.shape == (2, 72, 72, 3)
    assert np.array_equal(batch[0], hybrid.render(at_72(edges[0]))[0])
