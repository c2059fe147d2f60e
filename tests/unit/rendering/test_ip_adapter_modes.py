"""Where each IP-Adapter mode injects the reference, measured on the tiny SD1.5 UNet's 16 cross-attention layers.

The modes follow InstantStyle's SD1.5 script (``target_blocks=["up_blocks.1"]`` for style, ``down_blocks.2`` +
``mid_block`` for layout). These tests check the effect, not the scale table: a layer counts as receiving the image
only if its output changes when its image branch is switched off, and the blocks before the first targeted one must
compute exactly what they compute without any adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch

from sketch_rag.rendering.model_cache import PipelineCache
from sketch_rag.rendering.pipeline_spec import PipelineSpec
from sketch_rag.rendering.render_request import IpAdapterMode, RenderRequest

UP1 = [f"up_blocks.1.attentions.{i}" for i in range(3)]
LAYOUT = ["down_blocks.2.attentions.0", "down_blocks.2.attentions.1", "mid_block.attentions.0"]
ALL_16 = (
    [f"down_blocks.{b}.attentions.{i}" for b in range(3) for i in range(2)]
    + ["mid_block.attentions.0"]
    + [f"up_blocks.{b}.attentions.{i}" for b in range(1, 4) for i in range(3)]
)
TARGETED = {
    IpAdapterMode.FULL: ALL_16,
    IpAdapterMode.STYLE: UP1,
    IpAdapterMode.COMPOSITION: LAYOUT,
    IpAdapterMode.STYLE_AND_COMPOSITION: LAYOUT + UP1,
}
BLOCKS_IN_ORDER = [*(f"down_blocks.{i}" for i in range(4)), "mid_block", *(f"up_blocks.{i}" for i in range(4))]
FIRST_TARGETED_BLOCK = {
    IpAdapterMode.STYLE: "up_blocks.1",
    IpAdapterMode.COMPOSITION: "down_blocks.2",
    IpAdapterMode.STYLE_AND_COMPOSITION: "down_blocks.2",
}


def request(edge: np.ndarray, style: list[np.ndarray], mode: IpAdapterMode, scale: float = 0.8) -> RenderRequest:
    return RenderRequest(
        prompt="a watercolor house", negative_prompt="blurry", control_image=edge, style_images=style,
        num_inference_steps=1, seed=7, width=64, height=64, ip_adapter_scale=scale, ip_adapter_mode=mode,
    )


@pytest.fixture(scope="module")
def adapted(make_spec: Callable[..., PipelineSpec]) -> Any:
    return PipelineCache().get(make_spec())


@pytest.fixture(scope="module")
def plain(make_spec: Callable[..., PipelineSpec]) -> Any:
    """The same checkpoint and ControlNet with no adapter loaded at all (its own cache, its own UNet)."""
    return PipelineCache().get(make_spec(ip_adapter=None))


def _layer(processor_name: str) -> str:
    return processor_name.split(".transformer_blocks.")[0]


@contextmanager
def image_effect_probe(unet: Any) -> Iterator[dict[str, bool]]:
    """Per cross-attention layer: did the reference image change its output on the first UNet call?

    Each ``attn2`` is run a second time with its image scale forced to 0 (``forward`` directly, so hooks do not
    recurse); a layer receives the image exactly when the two outputs differ.
    """
    effect: dict[str, bool] = {}

    def hook(name: str) -> Callable[..., None]:
        def compare(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: torch.Tensor) -> None:
            if name in effect:
                return
            processor = module.processor
            saved = processor.scale
            processor.scale = [0.0] * len(saved)
            try:
                without_image = module.forward(*args, **kwargs)
            finally:
                processor.scale = saved
            effect[name] = not torch.equal(output, without_image)

        return compare

    modules = {_layer(n): m for n, m in unet.named_modules() if n.endswith("attn2")}
    handles = [m.register_forward_hook(hook(name), with_kwargs=True) for name, m in modules.items()]
    try:
        yield effect
    finally:
        for handle in handles:
            handle.remove()


def block_outputs(hybrid: Any, req: RenderRequest) -> dict[str, torch.Tensor]:
    """Output of every UNet block on the first denoising call."""
    unet = hybrid.pipe.unet
    blocks = dict(zip(BLOCKS_IN_ORDER, [*unet.down_blocks, unet.mid_block, *unet.up_blocks], strict=True))
    seen: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[..., None]:
        def keep(_module: Any, _inputs: Any, output: Any) -> None:
            seen.setdefault(name, (output[0] if isinstance(output, tuple) else output).clone())

        return keep

    handles = [block.register_forward_hook(hook(name)) for name, block in blocks.items()]
    try:
        hybrid.render(req)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_the_tiny_unet_has_sd15s_16_cross_attention_layers(adapted: Any) -> None:
    names = sorted({_layer(n) for n in adapted.pipe.unet.attn_processors if n.endswith("attn2.processor")})
    assert names == sorted(ALL_16)


@pytest.mark.parametrize("mode", list(IpAdapterMode))
def test_each_mode_injects_the_image_into_exactly_its_layers(adapted: Any, edge_image, styles, mode) -> None:
    with image_effect_probe(adapted.pipe.unet) as effect:
        adapted.render(request(edge_image, styles[:1], mode))
    assert sorted(effect) == sorted(ALL_16)  # every layer ran and was probed
    assert sorted(name for name, changed in effect.items() if changed) == sorted(TARGETED[mode])
    scaled = {
        _layer(n) for n, p in adapted.pipe.unet.attn_processors.items() if any(s != 0 for s in getattr(p, "scale", []))
    }
    assert scaled == set(TARGETED[mode])


@pytest.mark.parametrize("mode", [m for m in IpAdapterMode if m is not IpAdapterMode.FULL])
def test_blocks_before_the_first_targeted_one_match_a_render_without_the_adapter(
    adapted: Any, plain: Any, edge_image, styles, mode
) -> None:
    with_adapter = block_outputs(adapted, request(edge_image, styles[:1], mode))
    without = block_outputs(plain, request(edge_image, [], mode))
    first = BLOCKS_IN_ORDER.index(FIRST_TARGETED_BLOCK[mode])
    for name in BLOCKS_IN_ORDER[:first]:
        assert torch.equal(with_adapter[name], without[name]), name
    assert not torch.equal(with_adapter[BLOCKS_IN_ORDER[first]], without[BLOCKS_IN_ORDER[first]])


def test_style_mode_at_scale_0_renders_exactly_as_without_the_adapter(adapted: Any, plain: Any, edge_image, styles):
    off = adapted.render(request(edge_image, styles[:1], IpAdapterMode.STYLE, scale=0.0))
    assert np.array_equal(off, plain.render(request(edge_image, [], IpAdapterMode.STYLE)))
