"""The VAE in its own precision (ComfyUI's rule), and a non-finite decode redone in fp32 instead of saved black."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch

from sketch_rag.errors import InvalidParameterError
from sketch_rag.rendering.model_cache import PipelineCache
from sketch_rag.rendering.pipeline_spec import PipelineSpec
from sketch_rag.rendering.vae_precision import decode, resolve_vae_dtype
from tests.helpers.render_requests import request


def test_auto_is_bf16_on_a_gpu_that_has_it_and_fp32_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _device=None: (8, 0))
    assert resolve_vae_dtype("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda _device=None: (7, 5))
    assert resolve_vae_dtype("auto", cuda) == torch.float32
    assert resolve_vae_dtype("auto", torch.device("cpu")) == torch.float32
    assert [resolve_vae_dtype(n, cuda) for n in ("fp32", "bf16", "fp16")] == [
        torch.float32,
        torch.bfloat16,
        torch.float16,
    ]
    with pytest.raises(InvalidParameterError, match="vae_precision is 'fp8'; pick one of auto, fp16, bf16, fp32"):
        resolve_vae_dtype("fp8", cuda)


def test_the_vae_keeps_its_precision_when_the_rest_runs_in_fp16(
    make_spec: Callable[..., PipelineSpec], edge_image, styles
) -> None:
    """fp16 UNet, fp32 VAE: a base render, a hires pass and an inpaint (both encode an image) all run."""
    hybrid = PipelineCache().get(make_spec(dtype="fp16"))
    pipe = hybrid.pipe
    assert {m.dtype for m in (pipe.unet, pipe.text_encoder, pipe.controlnet, pipe.image_encoder)} == {torch.float16}
    assert pipe.vae.dtype == torch.float32
    base = hybrid.render(request(edge_image, styles[:1], num_inference_steps=2))
    hires = hybrid.render(request(edge_image, styles[:1], num_inference_steps=2, upscale=1.5, hires_denoise=0.5))
    mask = np.zeros((64, 64), np.float32)
    mask[16:48, 16:48] = 1
    inpainted = hybrid.render(
        request(edge_image, styles[:1], num_inference_steps=2, init_image=base[0], mask=mask, inpaint_denoise=0.5)
    )
    for out in (base, hires, inpainted):
        assert np.isfinite(out).all() and out.std() > 0
    assert hires.shape == (1, 96, 96, 3)


def test_the_vae_precision_is_part_of_the_checkpoint_load(make_spec: Callable[..., PipelineSpec]) -> None:
    cache = PipelineCache()
    assert cache.get(make_spec(vae_precision="bf16")).pipe.vae.dtype == torch.bfloat16
    assert cache.get(make_spec(vae_precision="fp32")).pipe.vae.dtype == torch.float32
    assert cache.loads["checkpoint"] == 2


@contextmanager
def overflowing_decoder(pipe: Any, factor: float = 1e5) -> Iterator[None]:
    """Scale the decoder's first convolution so that its activations exceed fp16's range (65504), not fp32's."""
    weight = pipe.vae.decoder.conv_in.weight
    original = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(factor)
    try:
        yield
    finally:
        with torch.no_grad():
            weight.copy_(original)


def test_an_fp16_overflow_is_decoded_again_in_fp32_and_logged(
    make_spec: Callable[..., PipelineSpec], edge_image, styles, caplog: pytest.LogCaptureFixture
) -> None:
    half_vae = PipelineCache().get(make_spec(vae_precision="fp16"))
    full_vae = PipelineCache().get(make_spec(vae_precision="fp32"))
    req = request(edge_image, styles[:1], num_inference_steps=2)
    with overflowing_decoder(half_vae.pipe), overflowing_decoder(full_vae.pipe):
        latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            # the overflow is real: the fp16 decoder alone gives non-finite values
            raw = half_vae.pipe.vae.decode(latents.half() / 0.18215, return_dict=False)[0]
        assert not torch.isfinite(raw).all()
        with caplog.at_level(logging.WARNING, logger="sketch_rag.rendering.vae_precision"):
            rendered = half_vae.render(req)
        reference = full_vae.render(req)
    assert "decode gave NaN or infinite values; decoded again in fp32" in caplog.text
    assert np.isfinite(rendered).all() and rendered.std() > 0  # not black
    assert np.abs(rendered - reference).max() < 0.02  # fp32 decode of fp16-rounded weights
    assert half_vae.pipe.vae.dtype == torch.float16  # back in its own precision for the next render


def test_a_non_finite_decode_in_fp32_is_refused_not_saved(make_spec: Callable[..., PipelineSpec]) -> None:
    pipe = PipelineCache().get(make_spec(vae_precision="fp32")).pipe
    latents = torch.full((1, 4, 8, 8), float("nan"))
    with torch.inference_mode(), pytest.raises(InvalidParameterError, match="non-finite image even in fp32"):
        decode(pipe, latents)
