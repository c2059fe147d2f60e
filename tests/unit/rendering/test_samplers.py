"""The sampler choice on tiny SD1.5 models: every sampler renders, reproduces its seed and differs from the others."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from sketch_rag.errors import InvalidParameterError
from sketch_rag.rendering.model_cache import PipelineCache
from sketch_rag.rendering.pipeline_spec import PipelineSpec
from sketch_rag.rendering.render_request import IpAdapterMode, RenderRequest
from sketch_rag.rendering.schedulers import DEFAULT_SAMPLER, SAMPLER_NAMES, SAMPLERS, make_scheduler
from tests.helpers.render_requests import STEPS, request


@pytest.fixture(scope="module")
def full(cache: PipelineCache, make_spec: Callable[..., PipelineSpec]) -> Any:
    return cache.get(make_spec())


@pytest.fixture(scope="module")
def renders(full: Any, edge_image: np.ndarray, styles: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {name: full.render(request(edge_image, styles[:1], sampler=name)) for name in SAMPLER_NAMES}


def test_the_samplers_are_comfyuis_names_with_uni_pc_the_default() -> None:
    assert SAMPLER_NAMES == (
        "euler",
        "euler_ancestral",
        "dpmpp_2m",
        "dpmpp_2m_karras",
        "dpmpp_sde_karras",
        "ddim",
        "uni_pc",
        "lcm",
        "tcd",
    )
    assert DEFAULT_SAMPLER == "uni_pc" and RenderRequest("x", np.zeros((8, 8))).sampler == "uni_pc"


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_each_sampler_renders_and_reproduces_its_seed(
    full: Any, renders: dict[str, np.ndarray], edge_image, styles, name: str
) -> None:
    first = renders[name]
    assert first.shape == (1, 64, 64, 3) and np.isfinite(first).all() and first.std() > 0
    assert type(full.pipe.scheduler).__name__ != ""  # the pipeline ran with a scheduler of its own
    again = full.render(request(edge_image, styles[:1], sampler=name))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, full.render(request(edge_image, styles[:1], sampler=name, seed=8)))


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_the_render_uses_the_chosen_diffusers_scheduler(full: Any, edge_image, styles, name: str) -> None:
    full.render(request(edge_image, styles[:1], sampler=name, num_inference_steps=1))
    scheduler = full.pipe.scheduler
    assert type(scheduler).__name__ == SAMPLERS[name].class_name
    for key, value in SAMPLERS[name].options.items():
        assert scheduler.config[key] == value
    # The model's noise schedule comes from the checkpoint's shipped config, whatever ran before.
    assert (scheduler.config.beta_start, scheduler.config.beta_end) == (0.00085, 0.012)
    assert scheduler.config.beta_schedule == "scaled_linear"


def test_every_sampler_gives_a_different_image_but_ddim_is_euler(renders: dict[str, np.ndarray]) -> None:
    # ComfyUI's ddim sampler is its euler sampler on the same sigmas (comfy.samplers.sampler_object).
    assert np.array_equal(renders["ddim"], renders["euler"])
    for a, b in itertools.combinations([name for name in SAMPLER_NAMES if name != "ddim"], 2):
        assert not np.array_equal(renders[a], renders[b]), f"{a} and {b} rendered the same image"


def test_the_default_sampler_renders_as_plain_diffusers(full: Any, renders, edge_image, styles) -> None:
    """Bit for bit what plain diffusers renders with the same scheduler (UniPC on ComfyUI's sigmas) and the prompt
    text handed to diffusers, which encodes it itself."""
    import json

    from PIL import Image

    from sketch_rag.rendering.architectures import SD15_CONFIG_DIR
    from sketch_rag.rendering.render_request import check_request, ip_adapter_block_scales

    shipped = json.loads((SD15_CONFIG_DIR / "scheduler" / "scheduler_config.json").read_text())
    req = request(edge_image, styles[:1])
    pipe = full.pipe
    pipe.scheduler = make_scheduler(DEFAULT_SAMPLER, shipped, seed=0)
    pipe.set_ip_adapter_scale(ip_adapter_block_scales(req.ip_adapter_mode, req.ip_adapter_scale))  # InstantStyle's dict
    with torch.inference_mode():
        reference = pipe(
            prompt=req.prompt,
            negative_prompt=req.negative_prompt,
            image=Image.fromarray(np.repeat(edge_image[..., None], 3, axis=2)),
            width=64,
            height=64,
            num_inference_steps=STEPS,
            guidance_scale=req.guidance_scale,
            controlnet_conditioning_scale=req.controlnet_conditioning_scale,
            generator=torch.Generator("cpu").manual_seed(req.seed),
            ip_adapter_image_embeds=full._style_embeds(pipe, check_request(req, True), True),
            output_type="np",
        ).images
    assert np.array_equal(renders[DEFAULT_SAMPLER], np.asarray(reference, dtype=np.float32))
    assert np.array_equal(full.render(req), renders[DEFAULT_SAMPLER])


@pytest.mark.parametrize("name", [n for n in SAMPLER_NAMES if SAMPLERS[n].comfy is not None])
def test_a_render_starts_at_the_models_sigma_max(full: Any, edge_image, styles, name: str) -> None:
    """The pipeline sets the scheduler up through ComfyUI's schedule (not the config's "leading" spacing)."""
    full.render(request(edge_image, styles[:1], sampler=name, num_inference_steps=4))
    scheduler = full.pipe.scheduler
    if hasattr(scheduler, "sigmas"):
        assert float(scheduler.sigmas[0]) == pytest.approx(14.6146, abs=1e-4)
    else:
        assert int(scheduler.timesteps[0]) == 999


def test_a_fresh_scheduler_is_built_from_the_model_schedule_only() -> None:
    unipc = make_scheduler("uni_pc", {"beta_start": 0.001, "beta_end": 0.02, "solver_type": "bh2"}, seed=0)
    dpm = make_scheduler("dpmpp_2m", dict(unipc.config), seed=0)
    assert dpm.config.solver_type == "midpoint"  # UniPC's "bh2" did not leak in
    assert (dpm.config.beta_start, dpm.config.beta_end) == (0.001, 0.02)
    assert make_scheduler("dpmpp_sde_karras", {}, seed=123).noise_sampler_seed == 123


def test_guidance_scale_1_or_below_skips_cfg_and_the_negative_prompt(full: Any, edge_image, styles) -> None:
    calls: list[int] = []
    hook = full.pipe.unet.register_forward_hook(lambda _m, args, _out: calls.append(int(args[0].shape[0])))
    try:
        no_cfg = full.render(request(edge_image, styles[:1], sampler="lcm", guidance_scale=1.0))
        assert calls == [1] * STEPS  # one UNet pass per step, on the positive prompt only
        calls.clear()
        with_cfg = full.render(request(edge_image, styles[:1], sampler="lcm", guidance_scale=1.5))
        assert calls == [2] * STEPS  # the negative and the positive in one batch
    finally:
        hook.remove()
    other_negative = full.render(
        request(edge_image, styles[:1], sampler="lcm", guidance_scale=1.0, negative_prompt="x")
    )
    assert np.array_equal(no_cfg, other_negative)
    assert np.array_equal(no_cfg, full.render(request(edge_image, styles[:1], sampler="lcm", guidance_scale=0.5)))
    assert not np.array_equal(no_cfg, with_cfg)


def test_few_step_samplers_render_at_4_to_8_steps_with_low_cfg(full: Any, edge_image, styles) -> None:
    for name, steps, cfg in itertools.product(("lcm", "tcd"), (4, 8), (1.0, 2.0)):
        out = full.render(request(edge_image, styles[:1], sampler=name, num_inference_steps=steps, guidance_scale=cfg))
        assert np.isfinite(out).all() and out.std() > 0


def test_progress_counts_every_model_evaluation_of_a_second_order_sampler(full: Any, edge_image, styles) -> None:
    seen: list[tuple[int, int]] = []
    full.render(
        request(edge_image, styles[:1], sampler="dpmpp_sde_karras"), on_step=lambda i, n, x: seen.append((i, n))
    )
    total = seen[-1][1]
    assert total >= STEPS and seen == [(i, total) for i in range(1, total + 1)]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"sampler": "k_euler"}, "sampler is 'k_euler'; pick one of euler, euler_ancestral, dpmpp_2m, .*, lcm, tcd"),
        ({"sampler": None}, "sampler is None; pick one of"),
        ({"sampler": "lcm", "num_inference_steps": 51}, "sampler 'lcm' takes at most 50"),
        ({"clip_skip": 3}, "clip_skip is 3; use 1"),
        ({"clip_skip": 0}, "clip_skip is 0; use 1"),
        ({"clip_skip": True}, "clip_skip is True"),
    ],
)
def test_an_unknown_sampler_or_clip_skip_is_refused_before_sampling_and_the_pipeline_renders_as_before(
    full: Any, edge_image, styles, changes: dict[str, Any], expected: str
) -> None:
    good = full.render(request(edge_image, styles[:1], num_inference_steps=2))
    steps: list[int] = []
    with pytest.raises(InvalidParameterError, match=expected):
        bad = request(edge_image, styles[:1], **{"num_inference_steps": 2, **changes})
        full.render(bad, on_step=lambda i, n, x: steps.append(i))
    assert steps == []
    assert np.array_equal(full.render(request(edge_image, styles[:1], num_inference_steps=2)), good)


def test_a_missing_torchsde_is_named_with_the_fix(monkeypatch: pytest.MonkeyPatch, edge_image) -> None:
    import importlib.util

    from sketch_rag.rendering.render_request import check_request

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchsde" else real(name, *a))
    with pytest.raises(InvalidParameterError, match="needs the torchsde package.*pip install torchsde"):
        check_request(request(edge_image, [], sampler="dpmpp_sde_karras"), has_ip_adapter=False)


@pytest.fixture(scope="module")
def plain_and_adapted(make_spec: Callable[..., PipelineSpec]) -> tuple[Any, Any]:
    """The pipeline without an IP-Adapter and with one, each in a cache of its own."""
    return PipelineCache().get(make_spec(ip_adapter=None)), PipelineCache().get(make_spec())


@pytest.mark.parametrize("name", ["euler_ancestral", "ddim", "dpmpp_2m_karras"])
def test_without_an_ip_adapter_each_sampler_renders_as_the_adapter_at_scale_0_in_either_mode(
    plain_and_adapted: tuple[Any, Any], edge_image, styles, name: str
) -> None:
    plain, adapted = plain_and_adapted
    without = plain.render(request(edge_image, [], sampler=name))
    for mode in (IpAdapterMode.FULL, IpAdapterMode.STYLE):
        silent = request(edge_image, styles[:1], sampler=name, ip_adapter_mode=mode, ip_adapter_scale=0.0)
        assert np.array_equal(adapted.render(silent), without), mode
    full = adapted.render(request(edge_image, styles[:1], sampler=name, ip_adapter_mode=IpAdapterMode.FULL))
    style = adapted.render(request(edge_image, styles[:1], sampler=name, ip_adapter_mode=IpAdapterMode.STYLE))
    assert not np.array_equal(full, without) and not np.array_equal(full, style)
