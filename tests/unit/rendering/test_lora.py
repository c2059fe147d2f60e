"""LoRAs on the hybrid pipeline, on the tiny SD1.5: both file layouts, exact removal, IP-Adapter, bad files."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sketch_rag.errors import InvalidParameterError, ModelMismatchError, ModelNotFoundError
from sketch_rag.rendering.lora import read_lora
from sketch_rag.rendering.model_cache import PipelineCache
from sketch_rag.rendering.pipeline_spec import PipelineSpec
from sketch_rag.rendering.render_request import RenderRequest
from sketch_rag.tiny_models import lora as tiny_lora
from sketch_rag.tiny_models.lora import LORA_NAMES
from sketch_rag.tiny_models.sd import CHECKPOINT_NAME
from tests.helpers import render_requests

STEPS = 3


def request(edge: np.ndarray, styles: list[np.ndarray] | None = None, **changes: Any) -> RenderRequest:
    return render_requests.request(edge, styles, **{"num_inference_steps": STEPS, **changes})



@pytest.fixture(scope="module")
def loras_dir(models_dir: Path) -> Path:
    from sketch_rag.tiny_models.sd import build_tiny_sd15

    folder = models_dir / "loras"
    sd = build_tiny_sd15()
    tiny_lora.write_tiny_loras(folder, sd["unet"], sd["text_encoder"])
    return folder


@pytest.fixture(scope="module")
def kohya(loras_dir: Path) -> Path:
    return loras_dir / LORA_NAMES[0]


@pytest.fixture(scope="module")
def peft(loras_dir: Path) -> Path:
    return loras_dir / LORA_NAMES[1]


@pytest.fixture(scope="module")
def plain_spec(make_spec: Callable[..., PipelineSpec]) -> PipelineSpec:
    return make_spec(ip_adapter=None)


def weights(cache: PipelineCache, spec: PipelineSpec) -> dict[str, torch.Tensor]:
    pipe = cache.get(spec).pipe
    unet = {f"unet.{k}": v.clone() for k, v in pipe.unet.state_dict().items()}
    text = {f"text_encoder.{k}": v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    return {**unet, **text}


def with_loras(spec: PipelineSpec, *loras: tuple[Path, float]) -> PipelineSpec:
    return dataclasses.replace(spec, loras=tuple(loras))


def test_both_files_hold_one_lora_over_unet_and_text_encoder(kohya: Path, peft: Path) -> None:
    a, b = read_lora(kohya), read_lora(peft)
    assert (a.layout, b.layout) == ("kohya", "diffusers")
    assert {(p.component, p.module) for p in a.patches} == {(p.component, p.module) for p in b.patches}
    components = {p.component for p in a.patches}
    assert components == {"unet", "text_encoder"}
    assert any(p.down.dim() == 4 and p.down.shape[-1] == 3 for p in a.patches)  # the LoCon 3x3 conv
    assert {p.scale for p in a.patches} == {1.0}  # kohya: alpha / rank folded into up
    assert {p.scale for p in b.patches} == {tiny_lora.TINY_LORA_ALPHA / tiny_lora.TINY_LORA_RANK}  # from metadata


def test_kohya_and_diffusers_layouts_fuse_identical_weights(plain_spec: PipelineSpec, kohya: Path, peft: Path) -> None:
    cache = PipelineCache()
    base = weights(cache, plain_spec)
    via_kohya = weights(cache, with_loras(plain_spec, (kohya, 0.8)))
    via_peft = weights(cache, with_loras(plain_spec, (peft, 0.8)))
    changed = [k for k in base if not torch.equal(base[k], via_kohya[k])]
    assert any(k.startswith("unet.") for k in changed) and any(k.startswith("text_encoder.") for k in changed)
    assert all(k.endswith(".weight") for k in changed)  # LoRA touches weights, never biases or norms
    assert all(torch.equal(via_kohya[k], via_peft[k]) for k in base)


def test_strength_changes_reload_nothing_and_removing_the_lora_restores_the_base_bit_for_bit(
    plain_spec: PipelineSpec, kohya: Path, edge_image: np.ndarray
) -> None:
    cache = PipelineCache()
    base_weights = weights(cache, plain_spec)
    base = cache.get(plain_spec).render(request(edge_image))
    full = cache.get(with_loras(plain_spec, (kohya, 1.0))).render(request(edge_image))
    half = cache.get(with_loras(plain_spec, (kohya, 0.5))).render(request(edge_image))
    negative = cache.get(with_loras(plain_spec, (kohya, -1.0))).render(request(edge_image))
    assert len({base.tobytes(), full.tobytes(), half.tobytes(), negative.tobytes()}) == 4
    assert cache.loads["checkpoint"] == 1 and cache.loads["controlnet"] == 1
    assert cache.loads["lora"] == 1  # read once; strengths only re-fuse
    again = cache.get(with_loras(plain_spec, (kohya, 1.0))).render(request(edge_image))
    assert np.array_equal(again, full)  # a stack is always fused from the pristine weights
    restored = cache.get(plain_spec).render(request(edge_image))
    assert np.array_equal(restored, base)
    after = weights(cache, plain_spec)
    assert all(torch.equal(after[k], base_weights[k]) for k in base_weights)
    zero = cache.get(with_loras(plain_spec, (kohya, 0.0))).render(request(edge_image))
    assert np.array_equal(zero, base)


def test_two_loras_stack_by_adding_their_deltas(plain_spec: PipelineSpec, kohya: Path, peft: Path) -> None:
    cache = PipelineCache()
    once = weights(cache, with_loras(plain_spec, (kohya, 1.0)))
    halves = weights(cache, with_loras(plain_spec, (kohya, 0.5), (peft, 0.5)))
    assert all(torch.equal(once[k], halves[k]) for k in once)  # same LoRA: 0.5 + 0.5 == 1 exactly in float32
    cancelled = weights(cache, with_loras(plain_spec, (kohya, 1.0), (peft, -1.0)))
    base = weights(cache, plain_spec)
    assert all(torch.equal(cancelled[k], base[k]) for k in base)


def test_lora_and_ip_adapter_both_change_the_render(
    make_spec: Callable[..., PipelineSpec], kohya: Path, edge_image: np.ndarray, styles: list[np.ndarray]
) -> None:
    cache = PipelineCache()
    adapter = make_spec()
    both = cache.get(with_loras(adapter, (kohya, 1.0))).render(request(edge_image, styles[:1]))
    adapter_only = cache.get(adapter).render(request(edge_image, styles[:1]))
    lora_no_style = cache.get(with_loras(adapter, (kohya, 1.0))).render(
        request(edge_image, styles[:1], ip_adapter_scale=0.0)
    )
    assert np.abs(both - adapter_only).max() > 1e-3  # LoRA on/off with the adapter loaded
    assert np.abs(both - lora_no_style).max() > 1e-3  # adapter on/off with the LoRA fused
    # The adapter's processors did not drop the LoRA: at adapter scale 0 the render is the LoRA-only one.
    lora_only = PipelineCache().get(make_spec(ip_adapter=None, loras=((kohya, 1.0),))).render(request(edge_image))
    assert np.array_equal(lora_no_style, lora_only)
    assert cache.loads["ip_adapter"] == 1 and cache.loads["checkpoint"] == 1


@pytest.fixture(scope="module")
def bad_loras(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad_loras")
    return {
        "sdxl": tiny_lora.write_fake_sdxl_lora(folder / "sdxl-lora.safetensors"),
        "sd2": tiny_lora.write_fake_sd2_lora(folder / "sd2-lora.safetensors"),
        "checkpoint": models_dir / "checkpoints" / CHECKPOINT_NAME,
        "random": tiny_lora.write_random_tensors(folder / "embedding.safetensors"),
    }


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("sdxl", "is an SDXL LoRA"),
        ("sd2", "is a LoRA for SD2.x (text width 1024)"),
        ("checkpoint", "is a full SD checkpoint, not a LoRA: put it in models/checkpoints"),
        ("random", "is not a LoRA (keys like 'emb_params'"),
    ],
)
def test_a_file_that_is_not_an_sd15_lora_is_refused_and_the_warm_pipeline_is_unchanged(
    plain_spec: PipelineSpec, kohya: Path, bad_loras: dict[str, Path], edge_image: np.ndarray, which: str, message: str
) -> None:
    cache = PipelineCache()
    good = with_loras(plain_spec, (kohya, 0.7))
    before = cache.get(good).render(request(edge_image))
    bad = bad_loras[which]
    with pytest.raises(ModelMismatchError) as err:
        cache.get(with_loras(plain_spec, (kohya, 0.7), (bad, 1.0)))
    assert bad.name in str(err.value) and message in str(err.value) and "Pick" in str(err.value)
    assert np.array_equal(cache.get(good).render(request(edge_image)), before)
    assert cache.loads["checkpoint"] == 1


@pytest.mark.parametrize("strength", [math.nan, math.inf, 1000.0, -1000.0, 5.01])
def test_a_strength_outside_minus_5_to_5_is_refused_before_sampling(
    plain_spec: PipelineSpec, kohya: Path, edge_image: np.ndarray, strength: float
) -> None:
    cache = PipelineCache()
    good = with_loras(plain_spec, (kohya, 1.0))
    before = cache.get(good).render(request(edge_image))
    with pytest.raises(InvalidParameterError, match=rf"LoRA strength for {kohya.name} is .*from -5 to 5"):
        cache.get(with_loras(plain_spec, (kohya, strength)))
    assert np.array_equal(cache.get(good).render(request(edge_image)), before)


def test_a_missing_lora_file_names_the_file(plain_spec: PipelineSpec, loras_dir: Path) -> None:
    gone = loras_dir / "deleted-lora.safetensors"
    with pytest.raises(ModelNotFoundError, match="deleted-lora.safetensors does not exist"):
        PipelineCache().get(with_loras(plain_spec, (gone, 1.0)))


def test_a_lora_for_other_layer_widths_is_refused_with_the_module_named(
    plain_spec: PipelineSpec, loras_dir: Path, kohya: Path
) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(kohya))
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_ff_net_2"
    state[f"{name}.lora_up.weight"] = torch.zeros(48, tiny_lora.TINY_LORA_RANK, dtype=torch.float16)
    wrong = loras_dir / "wrong-widths.safetensors"
    save_file(state, str(wrong))
    with pytest.raises(ModelMismatchError, match=r"48×.* update for unet\.down_blocks\.1\.attentions\.0\..*ff\.net\.2"):
        PipelineCache().get(with_loras(plain_spec, (wrong, 1.0)))


def test_a_lora_holding_nan_values_is_refused_as_damaged(
    plain_spec: PipelineSpec, loras_dir: Path, kohya: Path
) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(kohya))
    state["lora_te_text_model_encoder_layers_1_mlp_fc2.lora_up.weight"][0, 0] = math.nan
    damaged = loras_dir / "damaged-lora.safetensors"
    save_file(state, str(damaged))
    with pytest.raises(
        ModelMismatchError, match=r"damaged-lora.safetensors holds NaN .* text_encoder\.encoder\.layers\.1"
    ):
        PipelineCache().get(with_loras(plain_spec, (damaged, 1.0)))
