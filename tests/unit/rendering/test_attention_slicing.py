"""Attention slicing stays on, and the pipeline keeps working, through every change of IP-Adapter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sketch_rag.rendering.model_cache import PipelineCache
from sketch_rag.rendering.pipeline_spec import PipelineSpec
from sketch_rag.tiny_models.sd import IP_ADAPTER_NAMES
from tests.helpers.render_requests import request

PLAIN, PLUS = IP_ADAPTER_NAMES[0], IP_ADAPTER_NAMES[2]


def processor_kinds(pipe: Any) -> tuple[set[str], set[str]]:
    """Class names of the UNet's self-attention (attn1) and cross-attention (attn2) processors.

    The plus adapter's resampler has attention of its own (``encoder_hid_proj``), which is neither.
    """
    kinds: tuple[set[str], set[str]] = (set(), set())
    for name, processor in pipe.unet.attn_processors.items():
        for index, suffix in enumerate(("attn1.processor", "attn2.processor")):
            if name.endswith(suffix) and not name.startswith("encoder_hid_proj"):
                kinds[index].add(type(processor).__name__)
    return kinds


def test_slicing_survives_loading_unloading_and_swapping_the_adapter(
    make_spec: Callable[..., PipelineSpec], edge_image, styles
) -> None:
    cache = PipelineCache()
    # load, unload (no style image), load again, swap plain -> plus, swap plus -> plain, unload
    sequence = [PLAIN, None, PLAIN, PLUS, PLAIN, None]
    for step, adapter in enumerate(sequence):
        spec = make_spec(ip_adapter=adapter, attention_slicing=True)
        hybrid = cache.get(spec)
        self_attention, cross_attention = processor_kinds(hybrid.pipe)
        assert self_attention == {"SlicedAttnProcessor"}, step
        assert (cross_attention == {"IPAdapterAttnProcessor2_0"}) == (adapter is not None), step
        req = request(edge_image, styles[:1] if adapter else [], num_inference_steps=2)
        warm = hybrid.render(req)
        fresh = PipelineCache().get(spec).render(req)
        assert np.array_equal(warm, fresh), f"change {step} ({adapter}) renders unlike a fresh pipeline"
    assert cache.loads["checkpoint"] == 1  # no change of adapter needed a reload


def test_turning_slicing_off_and_on_with_an_adapter_change(make_spec: Callable[..., PipelineSpec]) -> None:
    cache = PipelineCache()
    cache.get(make_spec(ip_adapter=PLAIN, attention_slicing=True))
    off = cache.get(make_spec(ip_adapter=PLUS, attention_slicing=False))
    assert processor_kinds(off.pipe)[0] == {"AttnProcessor2_0"}
    on = cache.get(make_spec(ip_adapter=None, attention_slicing=True))
    assert processor_kinds(on.pipe) == ({"SlicedAttnProcessor"}, {"AttnProcessor2_0"})
