"""Swapping models inside one warm cache: the pixels of fresh caches, and the old model gone before the new loads."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sketch_rag.rendering import loading, model_cache
from sketch_rag.rendering.model_cache import PipelineCache
from sketch_rag.rendering.pipeline_spec import PipelineSpec
from sketch_rag.rendering.render_request import RenderRequest

ModelRefs = dict[str, "weakref.ReferenceType[Any]"]


def _request(edge: np.ndarray, style: np.ndarray) -> RenderRequest:
    return RenderRequest(
        prompt="a watercolor house", control_image=edge, style_images=[style], num_inference_steps=2,
        seed=5, width=64, height=64,
    )


def _with(spec: PipelineSpec, **changes: Any) -> PipelineSpec:
    from dataclasses import replace

    return replace(spec, **changes)


def _model_refs(pipe: Any) -> ModelRefs:
    return {
        "unet": weakref.ref(pipe.unet),
        "vae": weakref.ref(pipe.vae),
        "text_encoder": weakref.ref(pipe.text_encoder),
        "controlnet": weakref.ref(pipe.controlnet),
        "image_encoder": weakref.ref(pipe.image_encoder),
    }


def test_swapping_checkpoint_and_controlnet_in_one_cache_renders_like_fresh_caches(
    make_spec: Callable[..., PipelineSpec], other_models: dict[str, Path], edge_image, styles
) -> None:
    base = make_spec()
    sequence = [
        base,
        _with(base, checkpoint=other_models["checkpoint"]),
        _with(base, checkpoint=other_models["checkpoint"], controlnet=other_models["controlnet"]),
        _with(base, controlnet=other_models["controlnet"]),
        base,
    ]
    warm = PipelineCache()
    swapped = [warm.get(spec).render(_request(edge_image, styles[0])) for spec in sequence]
    fresh = [PipelineCache().get(spec).render(_request(edge_image, styles[0])) for spec in sequence]
    for index, (ours, reference) in enumerate(zip(swapped, fresh, strict=True)):
        assert np.array_equal(ours, reference), f"render {index} after a swap differs from a fresh cache"
    # every model of the sequence matters, so a stale model would have shown
    assert len({a.tobytes() for a in fresh[:4]}) == 4
    assert dict(warm.loads) == {"checkpoint": 3, "controlnet": 3, "image_encoder": 1, "ip_adapter": 3}


def test_old_models_are_freed_before_their_replacement_loads(
    monkeypatch: pytest.MonkeyPatch, make_spec: Callable[..., PipelineSpec], other_models: dict[str, Path],
    edge_image, styles,
) -> None:
    cache = PipelineCache()
    kept_by_caller = cache.get(make_spec())  # a HybridPipeline someone still holds must not pin the old models
    kept_by_caller.render(_request(edge_image, styles[0]))
    host: dict[str, Any] = {"unet": kept_by_caller.pipe.unet}  # what ComfyUI's model patcher holds
    replaced: list[str] = []

    def host_lets_go(role: str) -> None:
        replaced.append(role)
        host.clear()

    cache.add_replace_listener(host_lets_go)
    old = _model_refs(kept_by_caller.pipe)
    alive_at_load: dict[str, list[str]] = {}

    def watching(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def load(*args: Any, **kwargs: Any) -> Any:
            gc.collect()
            alive_at_load[name] = sorted(role for role, ref in old.items() if ref() is not None)
            return real(*args, **kwargs)

        return load

    monkeypatch.setattr(loading, "load_sd15", watching("checkpoint", loading.load_sd15))
    monkeypatch.setattr(loading, "load_controlnet", watching("controlnet", loading.load_controlnet))

    cache.get(_with(make_spec(), checkpoint=other_models["checkpoint"]))
    # UNet, VAE and text encoder all gone; the ControlNet and image encoder stay (they did not change)
    assert alive_at_load["checkpoint"] == ["controlnet", "image_encoder"]
    assert replaced == ["checkpoint", "ip_adapter"] and host == {}  # the adapter lived in the old UNet

    old = _model_refs(cache.get(_with(make_spec(), checkpoint=other_models["checkpoint"])).pipe)
    cache.get(_with(make_spec(), checkpoint=other_models["checkpoint"], controlnet=other_models["controlnet"]))
    assert "controlnet" not in alive_at_load["controlnet"]
    assert replaced == ["checkpoint", "ip_adapter", "controlnet"]

    # The caller's old handle still works: it fetches the current models for its own spec.
    again = kept_by_caller.render(_request(edge_image, styles[0]))
    assert np.array_equal(again, PipelineCache().get(make_spec()).render(_request(edge_image, styles[0])))


def test_dropping_the_ip_adapter_frees_the_image_encoder(make_spec: Callable[..., PipelineSpec]) -> None:
    cache = PipelineCache()
    encoder = weakref.ref(cache.get(make_spec()).pipe.image_encoder)
    cache.get(make_spec(ip_adapter=None))
    gc.collect()
    assert encoder() is None and cache.generation("image_encoder") is None
    assert cache.generation("checkpoint") is not None and cache.generation("controlnet") is not None


def test_a_new_model_that_reuses_an_old_id_cannot_serve_the_old_pipeline(
    monkeypatch: pytest.MonkeyPatch, make_spec: Callable[..., PipelineSpec], other_models: dict[str, Path],
    edge_image, styles,
) -> None:
    # The worst case of CPython reusing addresses: every object gets the same id().
    monkeypatch.setattr(model_cache, "id", lambda _obj: 0, raising=False)
    cache = PipelineCache()
    first = cache.get(make_spec())
    first.render(_request(edge_image, styles[0]))
    swapped_spec = _with(make_spec(), checkpoint=other_models["checkpoint"])
    swapped = cache.get(swapped_spec)
    assert swapped.generation != first.generation
    assert all(isinstance(g, int) for g in swapped.generation)
    assert np.array_equal(
        swapped.render(_request(edge_image, styles[0])),
        PipelineCache().get(swapped_spec).render(_request(edge_image, styles[0])),
    )


def test_each_load_gets_a_new_generation_even_for_the_same_file(make_spec: Callable[..., PipelineSpec]) -> None:
    cache = PipelineCache()
    cache.get(make_spec())
    before = cache.generation("checkpoint")
    cache.release()
    cache.get(make_spec())
    after = cache.generation("checkpoint")
    assert before is not None and after is not None and after > before
