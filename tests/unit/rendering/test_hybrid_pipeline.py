"""The hybrid pipeline on tiny SD1.5 models: invariants that hold for any weights, checked bit for bit."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from sketch_rag.errors import RenderInterruptedError
from sketch_rag.rendering.model_cache import PIPELINE_ROLES, PipelineCache
from sketch_rag.rendering.pipeline_spec import PipelineSpec
from sketch_rag.rendering.render_request import IpAdapterMode
from sketch_rag.tiny_models.sd import CONTROLNET_NAMES, IP_ADAPTER_NAMES
from tests.helpers.render_requests import STEPS, request


@pytest.fixture(scope="module")
def full(cache: PipelineCache, make_spec: Callable[..., PipelineSpec]) -> Any:
    return cache.get(make_spec())


def test_same_seed_gives_identical_pixels_and_another_seed_does_not(full: Any, edge_image, styles) -> None:
    a = full.render(request(edge_image, styles[:1]))
    b = full.render(request(edge_image, styles[:1]))
    assert a.shape == (1, 64, 64, 3) and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, full.render(request(edge_image, styles[:1], seed=8)))


def test_size_follows_the_edge_aspect_in_multiples_of_8(full: Any, edge_image, styles) -> None:
    wide = np.repeat(edge_image, 2, axis=1)[:, :102]  # 64×102
    out = full.render(request(wide, styles[:1], width=0, height=64, num_inference_steps=1))
    assert out.shape == (1, 64, 104, 3)  # 102 rounds to the nearest multiple of 8


def test_a_different_reference_changes_the_output(full: Any, edge_image, styles) -> None:
    a = full.render(request(edge_image, styles[:1]))
    b = full.render(request(edge_image, styles[1:2]))
    assert np.abs(a - b).max() > 1e-3


def test_controlnet_scale_0_equals_no_controlnet(cache: PipelineCache, make_spec, edge_image) -> None:
    from diffusers import StableDiffusionPipeline

    from sketch_rag.rendering.schedulers import DEFAULT_SAMPLER, make_scheduler

    hybrid = cache.get(make_spec(ip_adapter=None))
    req = request(edge_image, [], controlnet_conditioning_scale=0.0)
    ours = hybrid.render(req)
    p = hybrid.pipe
    plain: Any = StableDiffusionPipeline(
        vae=p.vae,
        text_encoder=p.text_encoder,
        tokenizer=p.tokenizer,
        unet=p.unet,
        scheduler=make_scheduler(DEFAULT_SAMPLER, p.scheduler.config, seed=0),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    plain.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        ref = plain(
            req.prompt,
            negative_prompt=req.negative_prompt,
            num_inference_steps=STEPS,
            height=64,
            width=64,
            guidance_scale=req.guidance_scale,
            generator=torch.Generator().manual_seed(req.seed),
            output_type="np",
        ).images
    assert np.array_equal(ours, ref)
    assert not np.array_equal(ours, hybrid.render(request(edge_image, [], controlnet_conditioning_scale=1.0)))


@pytest.mark.parametrize("mode", [IpAdapterMode.FULL, IpAdapterMode.STYLE])
def test_ip_adapter_scale_0_equals_no_adapter(make_spec, edge_image, styles, mode: IpAdapterMode) -> None:
    without = PipelineCache().get(make_spec(ip_adapter=None)).render(request(edge_image, []))
    hybrid = PipelineCache().get(make_spec())
    assert np.array_equal(
        hybrid.render(request(edge_image, styles[:1], ip_adapter_scale=0.0, ip_adapter_mode=mode)), without
    )
    assert not np.array_equal(hybrid.render(request(edge_image, styles[:1], ip_adapter_mode=mode)), without)


def test_several_references_blend_by_their_weights(full: Any, edge_image, styles) -> None:
    a, b = styles[0], styles[1]
    only_a = full.render(request(edge_image, [a]))
    only_b = full.render(request(edge_image, [b]))
    assert np.array_equal(full.render(request(edge_image, [a, b], style_weights=[1.0, 0.0])), only_a)
    assert np.array_equal(full.render(request(edge_image, [a, b], style_weights=[0.0, 3.0])), only_b)
    equal = full.render(request(edge_image, [a, b]))
    assert np.array_equal(full.render(request(edge_image, [a, b], style_weights=[2.0, 2.0])), equal)  # normalised
    leaning = full.render(request(edge_image, [a, b], style_weights=[0.9, 0.1]))
    # the blend lies between the single references, closer to the heavier one
    assert np.abs(leaning - only_a).mean() < np.abs(leaning - only_b).mean()
    assert not np.array_equal(equal, only_a) and not np.array_equal(equal, only_b)


@pytest.mark.parametrize("adapter", [IP_ADAPTER_NAMES[2]])
def test_plus_adapter_renders_and_reacts_to_the_reference(
    cache: PipelineCache, make_spec, edge_image, styles, adapter: str
) -> None:
    hybrid = cache.get(make_spec(ip_adapter=adapter))
    assert hybrid.ip_info.plus and hybrid.ip_info.tokens == 16
    a = hybrid.render(request(edge_image, styles[:1]))
    assert np.isfinite(a).all()
    assert not np.array_equal(a, hybrid.render(request(edge_image, styles[1:2])))


def test_progress_is_reported_every_step_and_interrupt_stops_within_one(full: Any, edge_image, styles) -> None:
    steps: list[tuple[int, int, tuple[int, ...]]] = []
    full.render(request(edge_image, styles[:1]), on_step=lambda i, n, x: steps.append((i, n, tuple(x.shape))))
    assert steps == [(i, STEPS, (1, 4, 8, 8)) for i in range(1, STEPS + 1)]

    baseline = full.render(request(edge_image, styles[:1], num_inference_steps=6))
    done: list[int] = []
    with pytest.raises(RenderInterruptedError, match="after step 2 of 6"):
        full.render(
            request(edge_image, styles[:1], num_inference_steps=6),
            on_step=lambda i, n, x: done.append(i),
            should_stop=lambda: len(done) >= 2,
        )
    assert done == [1, 2]
    assert np.array_equal(full.render(request(edge_image, styles[:1], num_inference_steps=6)), baseline)


def test_warm_pipeline_loads_once_and_swaps_only_the_changed_model(make_spec, edge_image, styles) -> None:
    cache = PipelineCache()
    hybrid = cache.get(make_spec())
    first = dict(cache.loads)
    assert first == {"checkpoint": 1, "controlnet": 1, "image_encoder": 1, "ip_adapter": 1}
    hybrid.render(request(edge_image, styles[:1], num_inference_steps=1))
    cache.get(make_spec()).render(request(edge_image, styles[:1], num_inference_steps=1))
    assert dict(cache.loads) == first  # a warm second run loads nothing

    cache.get(make_spec(controlnet=CONTROLNET_NAMES[1]))
    assert dict(cache.loads) == {**first, "controlnet": 2}
    cache.get(make_spec(controlnet=CONTROLNET_NAMES[1], ip_adapter=IP_ADAPTER_NAMES[1]))
    assert dict(cache.loads) == {**first, "controlnet": 2, "ip_adapter": 2}
    cache.get(
        make_spec(
            controlnet=CONTROLNET_NAMES[1], ip_adapter=IP_ADAPTER_NAMES[1], attention_slicing=True, vae_tiling=True
        )
    ).render(request(edge_image, styles[:1], num_inference_steps=1))
    assert dict(cache.loads) == {**first, "controlnet": 2, "ip_adapter": 2}  # memory options load nothing


def test_release_frees_the_models_and_the_next_run_reloads(make_spec, edge_image, styles) -> None:
    cache = PipelineCache()
    hybrid = cache.get(make_spec())
    hybrid.render(request(edge_image, styles[:1], num_inference_steps=1))
    refs = [
        weakref.ref(m) for m in (hybrid.pipe.unet, hybrid.pipe.vae, hybrid.pipe.controlnet, hybrid.pipe.image_encoder)
    ]
    del hybrid
    cache.release()
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)
    assert [cache.generation(role) for role in PIPELINE_ROLES] == [None] * len(PIPELINE_ROLES)
    cache.get(make_spec()).render(request(edge_image, styles[:1], num_inference_steps=1))
    assert cache.loads["checkpoint"] == 2


def test_dtype_auto_is_fp32_on_cpu_fp16_on_cuda_and_fp16_runs(make_spec, edge_image, styles) -> None:
    from sketch_rag.errors import InvalidParameterError
    from sketch_rag.rendering.pipeline_spec import resolve_dtype

    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    with pytest.raises(InvalidParameterError, match="fp8"):
        resolve_dtype("fp8", torch.device("cpu"))
    half = PipelineCache().get(make_spec(dtype="fp16"))
    assert {m.dtype for m in (half.pipe.unet, half.pipe.controlnet, half.pipe.image_encoder)} == {torch.float16}
    assert half.pipe.vae.dtype == torch.float32  # the VAE's own precision (test_vae_precision.py)
    out = half.render(request(edge_image, styles[:1], num_inference_steps=1))
    assert out.dtype == np.float32 and np.isfinite(out).all()
