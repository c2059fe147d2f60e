"""Model files as users have them, written by other tools than ours, through our loaders.

The corpus is built once per session, at tiny sizes: ComfyUI core writes a checkpoint (``save_checkpoint``), a
LoRA (its "Extract and Save Lora" code) and kohya names with LDM blocks (its own diffusers -> LDM table);
diffusers' own converters write the old LoRA layouts; the rest are plain key renames that follow the published
layouts (cited at each writer). ComfyUI core is also the independent reader: every LoRA must change the same
weights by the same amounts in ComfyUI and in our pipeline. Every refusal must name the file, what is wrong and
what works, leave the file as it was and leave the warm pipeline rendering bit for bit as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sketch_rag.errors import ModelMismatchError
from sketch_rag.rendering import ldm_names, loading
from sketch_rag.rendering.lora import read_lora
from sketch_rag.rendering.model_cache import PipelineCache
from sketch_rag.rendering.pipeline_spec import PipelineSpec
from sketch_rag.rendering.render_request import RenderRequest
from sketch_rag.tiny_models import lora as tiny_lora
from sketch_rag.tiny_models.sd import (
    CHECKPOINT_NAME,
    IMAGE_ENCODER_NAME,
    TINY_TEXT_HIDDEN,
    TINY_VISION_HIDDEN,
    build_tiny_sd15,
    cross_attention_widths,
)
from tests.helpers.lora_deltas import our_deltas

STRENGTH = 0.7
TEXT = "cond_stage_model.transformer."
# The layers diffusers' LCM-LoRA training script targets (examples/consistency_distillation/
# train_lcm_distill_lora_sd_wds.py, ``lora_target_modules``): attention, feed-forward, every resnet layer and the
# samplers. TCD, Hyper-SD and PCM were trained from the same scripts' lineage on the same layers.
FEW_STEP_LEAVES = (
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj",
)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def few_step_layers(unet: torch.nn.Module, seed: int) -> list[tiny_lora.TinyLoraLayer]:
    g = torch.Generator().manual_seed(seed)
    layers = []
    for name, module in unet.named_modules():
        if name.endswith(FEW_STEP_LEAVES) and isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            out_features, in_features, *kernel = module.weight.shape
            down = torch.randn(4, in_features, *kernel, generator=g) * 0.2
            up = torch.randn(out_features, 4, *([1] * len(kernel)), generator=g) * 0.2
            layers.append(tiny_lora.TinyLoraLayer("unet", name, down.half(), up.half()))
    return layers


def peft_to_diffusers_lora(layers: list[tiny_lora.TinyLoraLayer]) -> dict[str, torch.Tensor]:
    """``unet.<module>.lora.down.weight``: diffusers' own ``convert_state_dict_to_diffusers`` from PEFT names,
    what its training scripts saved before ``lora_A``/``lora_B`` were kept as they are (TCD-SD15's era)."""
    from diffusers.utils import convert_state_dict_to_diffusers

    peft = {}
    for layer in layers:
        peft[f"{layer.module}.lora_A.weight"] = layer.down
        peft[f"{layer.module}.lora_B.weight"] = layer.up
    return {f"unet.{k}": v.contiguous() for k, v in convert_state_dict_to_diffusers(peft).items()}


def attn_procs_lora(layers: list[tiny_lora.TinyLoraLayer]) -> dict[str, torch.Tensor]:
    """diffusers' ``save_attn_procs`` layout: ``<attention>.processor.to_q_lora.down.weight`` (diffusers'
    ``state_dict_utils.DIFFUSERS_OLD_TO_DIFFUSERS`` maps these names; ComfyUI's ``model_lora_keys_unet`` reads
    them as ``….processor.to_q`` + ``_lora.up.weight``)."""
    out = {}
    for layer in layers:
        head, _, leaf = layer.module.rpartition(".attn")
        number, _, projection = leaf.partition(".")
        if projection in ("to_q", "to_k", "to_v", "to_out.0"):
            base = f"{head}.attn{number}.processor.{projection.removesuffix('.0')}_lora"
            out[f"{base}.down.weight"] = layer.down.contiguous()
            out[f"{base}.up.weight"] = layer.up.contiguous()
    return out


@pytest.fixture(scope="session")
def corpus(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every variant ComfyUI is not needed for, written once: checkpoints, LoRAs, ControlNets, encoders."""
    root = tmp_path_factory.mktemp("wild")
    files: dict[str, Path] = {}

    def save(name: str, state: dict[str, torch.Tensor]) -> None:
        files[name] = root / name
        if name.endswith(".safetensors"):
            save_file({k: v.contiguous() for k, v in state.items()}, str(files[name]))
        else:  # a .ckpt wraps its tensors in "state_dict"; diffusers' .bin files are flat
            torch.save({"state_dict": state} if name.endswith(".ckpt") else state, files[name])

    ckpt = load_file(str(models_dir / "checkpoints" / CHECKPOINT_NAME))
    # Older SD1.x merges: the text encoder without ``text_model.`` (the inverse of ComfyUI core's
    # supported_models.SD15.process_clip_state_dict rename).
    old_te = {k.replace(f"{TEXT}text_model.", TEXT): v for k, v in ckpt.items()}
    # ... often with the position-id buffer, stored as floats that merging left off by a little (ComfyUI core
    # rounds them; the model makes its own).
    old_te[f"{TEXT}embeddings.position_ids"] = torch.arange(77, dtype=torch.float32)[None] + 0.01
    save("old-merge-te-without-text_model.safetensors", old_te)
    save("old-merge-te-without-text_model.ckpt", old_te)
    save("no-unet-conv.safetensors", {k: v for k, v in ckpt.items() if "input_blocks.4.0.in_layers.2." not in k})
    save("no-vae-attention.safetensors", {k: v for k, v in ckpt.items() if "decoder.mid.attn_1.q." not in k})
    save("no-vae-downsampler.safetensors", {k: v for k, v in ckpt.items() if "encoder.down.0.downsample." not in k})
    save("no-final-layer-norm.safetensors", {k: v for k, v in old_te.items() if "final_layer_norm" not in k})
    save("no-cross-attention.safetensors", {k: v for k, v in ckpt.items() if "attn2.to_k" not in k})
    save("no-text-mlp.safetensors", {k: v for k, v in ckpt.items() if "encoder.layers.0.mlp" not in k})

    sd = build_tiny_sd15()
    files["tiny-lora_kohya.safetensors"] = tiny_lora.write_kohya(
        tiny_lora.tiny_lora_layers(sd["unet"], sd["text_encoder"]), root / "tiny-lora_kohya.safetensors"
    )
    few = few_step_layers(sd["unet"], 31)
    # LCM-LoRA SD1.5, Hyper-SD15 and PCM's _converted files: kohya names with diffusers blocks and an alpha
    # (stable-diffusion.cpp PR 955: lcm-lora-sdv1-5 is "unet|lora_down+lora_up+alpha|hf").
    for name, alpha in (
        ("lcm-lora-sdv1-5.safetensors", 8.0),
        ("Hyper-SD15-8steps-lora.safetensors", 4.0),
        ("pcm_sd15_smallcfg_4step_converted.safetensors", 4.0),
    ):
        save(name, tiny_lora.kohya_state_dict(few, alpha))
    save("TCD-SD15-LoRA.safetensors", peft_to_diffusers_lora(few))
    attention = tiny_lora.tiny_lora_layers(sd["unet"], sd["text_encoder"])
    save("pytorch_lora_weights_attn_procs.bin", attn_procs_lora(attention))

    # ControlNets and image encoders
    cn = load_file(str(models_dir / "controlnet" / "tiny-control_sd15_canny.safetensors"))
    # kohya's diff_control_sd15_*: control_model.* deltas against the UNet and a ``difference`` marker
    # (ComfyUI core's comfy/controlnet.py recognises them by that key).
    diff = {f"control_model.{k}": v for k, v in cn.items()}
    diff["difference"] = torch.tensor([])
    save("diff_control_sd15_canny_fp16.safetensors", diff)
    encoder = load_file(str(models_dir / "clip_vision" / IMAGE_ENCODER_NAME))
    mixed = {k: (v.float() if "layer_norm" in k or "layernorm" in k else v) for k, v in encoder.items()}
    save("CLIP-ViT-H-14-mixed-fp16-fp32.safetensors", mixed)
    files.update(other_vision_towers(root))
    save("ip-adapter-full-face_sd15.safetensors", full_face_adapter(sd["unet"]))
    return files


@pytest.fixture(scope="session")
def comfy_corpus(corpus: dict[str, Path], models_dir: Path, other_models: dict[str, Path]) -> dict[str, Path]:
    """What ComfyUI core writes (a checkpoint, an extracted LoRA, kohya names with LDM blocks) and how its own
    LoRA loader changes the weights for each LoRA of the corpus (``comfy_wild_files.py``, in a subprocess)."""
    from sketch_rag.cli.comfyui_install import install_comfyui

    root = corpus["tiny-lora_kohya.safetensors"].parent
    kohya = corpus["tiny-lora_kohya.safetensors"]
    lora_names = [n for n in LORA_FILES if n != "TCD-SD15-LoRA.safetensors"]
    job = {
        "checkpoint_a": str(models_dir / "checkpoints" / CHECKPOINT_NAME),
        "checkpoint_b": str(other_models["checkpoint"]),
        "text_hidden": TINY_TEXT_HIDDEN,
        "out": str(root),
        "kohya_lora": str(kohya),
        "strength": STRENGTH,
        "loras": [str(corpus[n]) for n in lora_names],
    }
    (root / "job.json").write_text(json.dumps(job))
    comfy_dir = install_comfyui(Path(__file__).resolve().parents[2] / ".comfyui", requirements=False)
    script = Path(__file__).with_name("comfy_wild_files.py")
    done = subprocess.run(
        [sys.executable, str(script), str(comfy_dir), str(root / "job.json")],
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-3000:]
    assert "lora key not loaded" not in done.stderr, done.stderr[-3000:]
    files = dict(corpus)
    for name in ("comfy_saved.safetensors", "comfy_extracted_lora.safetensors", "kohya_ldm_lora.safetensors",
                 "comfy_full_diff_lora.safetensors"):
        files[name] = root / name
    for i, name in enumerate(lora_names):
        files[f"deltas:{name}"] = root / f"deltas_{i}.safetensors"
    files["deltas:comfy_extracted_lora.safetensors"] = root / "deltas_extracted.safetensors"
    files["deltas:comfy_full_diff_lora.safetensors"] = root / "deltas_full_diff.safetensors"
    files["deltas:kohya_ldm_lora.safetensors"] = root / "deltas_kohya_ldm.safetensors"
    return files


LORA_FILES = (
    "lcm-lora-sdv1-5.safetensors",
    "Hyper-SD15-8steps-lora.safetensors",
    "pcm_sd15_smallcfg_4step_converted.safetensors",
    "TCD-SD15-LoRA.safetensors",
    "pytorch_lora_weights_attn_procs.bin",
)


def other_vision_towers(root: Path) -> dict[str, Path]:
    """ViT-L/14 and ViT-bigG/14 image encoders in transformers' layout (their real widths, 1 layer: small)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    paths = {}
    for name, hidden, heads, projection in (("clip_vision_vit_l.safetensors", 1024, 16, 768),
                                             ("CLIP-ViT-bigG-14.safetensors", 1664, 16, 1280)):
        config = CLIPVisionConfig(hidden_size=hidden, intermediate_size=8, num_hidden_layers=1,
                                  num_attention_heads=heads, image_size=28, patch_size=14, projection_dim=projection)
        model = CLIPVisionModelWithProjection(config)
        paths[name] = root / name
        save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(paths[name]))
    return paths


def full_face_adapter(unet: Any) -> dict[str, torch.Tensor]:
    """h94's ip-adapter-full-face_sd15 layout: ``image_proj.proj.0`` (Linear), ``.2`` (Linear), ``.3`` (LayerNorm),
    i.e. diffusers' IPAdapterFullImageProjection (loaders/unet.py, "IP-Adapter Full"), fed the encoder's patches."""
    g = torch.Generator().manual_seed(41)
    hidden, cad = TINY_VISION_HIDDEN, TINY_TEXT_HIDDEN
    sd = {
        "image_proj.proj.0.weight": torch.randn(hidden, hidden, generator=g) * 0.1,
        "image_proj.proj.0.bias": torch.zeros(hidden),
        "image_proj.proj.2.weight": torch.randn(cad, hidden, generator=g) * 0.1,
        "image_proj.proj.2.bias": torch.zeros(cad),
        "image_proj.proj.3.weight": torch.ones(cad),
        "image_proj.proj.3.bias": torch.zeros(cad),
    }
    for index, width in cross_attention_widths(unet).items():
        sd[f"ip_adapter.{index}.to_k_ip.weight"] = torch.randn(width, cad, generator=g) * 0.2
        sd[f"ip_adapter.{index}.to_v_ip.weight"] = torch.randn(width, cad, generator=g) * 0.2
    return {k: v.half() for k, v in sd.items()}


def request(edge: np.ndarray, styles: list[np.ndarray]) -> RenderRequest:
    return RenderRequest("a house", edge, styles, num_inference_steps=2, width=64, height=64)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------


def same_checkpoint_weights(reference_file: Path, path: Path) -> None:
    reference = loading.load_sd15(reference_file, torch.float32, torch.device("cpu"))
    loaded = loading.load_sd15(path, torch.float32, torch.device("cpu"))
    name = path.name
    for part in ("unet", "vae", "text_encoder"):
        a, b = getattr(reference, part).state_dict(), getattr(loaded, part).state_dict()
        assert a.keys() == b.keys(), part
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {part}.{key}"


@pytest.mark.parametrize(
    "name", ["old-merge-te-without-text_model.safetensors", "old-merge-te-without-text_model.ckpt"]
)
def test_old_merges_without_text_model_load_the_same_weights(
    corpus: dict[str, Path], models_dir: Path, name: str
) -> None:
    same_checkpoint_weights(models_dir / "checkpoints" / CHECKPOINT_NAME, corpus[name])


@pytest.mark.slow
def test_a_checkpoint_saved_by_comfyui_core_loads_the_same_weights(
    comfy_corpus: dict[str, Path], models_dir: Path
) -> None:
    same_checkpoint_weights(models_dir / "checkpoints" / CHECKPOINT_NAME, comfy_corpus["comfy_saved.safetensors"])


def test_a_ckpt_is_unpickled_once(corpus: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    real = torch.load

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    cache = PipelineCache()
    spec = PipelineSpec(
        corpus["old-merge-te-without-text_model.ckpt"], corpus["diff_control_sd15_canny_fp16.safetensors"]
    )
    with pytest.raises(ModelMismatchError, match="diff"):  # the checkpoint is checked and loaded, then the ControlNet
        cache.get(spec)
    assert [Path(c).name for c in calls] == ["old-merge-te-without-text_model.ckpt"]


# ---------------------------------------------------------------------------------------------------------------
# LoRAs: ComfyUI core reads each file too, and must change the same weights by the same amounts
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "layout", "reference"),
    [
        ("lcm-lora-sdv1-5.safetensors", "kohya", None),
        ("Hyper-SD15-8steps-lora.safetensors", "kohya", None),
        ("pcm_sd15_smallcfg_4step_converted.safetensors", "kohya", None),
        # ComfyUI does not read diffusers' ``lora.down`` names for attention layers; the same weights with
        # alpha == rank in kohya's layout (the Hyper-SD file) are what ComfyUI reads instead.
        ("TCD-SD15-LoRA.safetensors", "diffusers", "Hyper-SD15-8steps-lora.safetensors"),
        ("pytorch_lora_weights_attn_procs.bin", "attn-procs", None),
        ("kohya_ldm_lora.safetensors", "kohya-ldm", None),
        ("comfy_extracted_lora.safetensors", "comfyui", None),
        ("comfy_full_diff_lora.safetensors", "comfyui", None),
    ],
)
@pytest.mark.slow
def test_every_lora_layout_changes_the_weights_as_comfyui_core_does(
    comfy_corpus: dict[str, Path], make_spec: Callable[..., PipelineSpec], name: str, layout: str, reference: str | None
) -> None:
    assert read_lora(comfy_corpus[name]).layout == layout
    expected = load_file(str(comfy_corpus[f"deltas:{reference or name}"]))
    # ComfyUI's CLIP has a text projection that SD1.5 never uses (no such layer in diffusers' CLIPTextModel);
    # a full-difference LoRA changes it in ComfyUI, where it does not reach the render either.
    expected = {k: v for k, v in expected.items() if not k.endswith("transformer.text_projection.weight")}
    ours = our_deltas(make_spec(ip_adapter=None, dtype="fp32"), comfy_corpus[name], STRENGTH)
    assert expected and sorted(ours) == sorted(expected)
    for key, delta in ours.items():
        torch.testing.assert_close(delta, expected[key], rtol=1e-4, atol=1e-5, msg=f"{name}: {key} differs")


@pytest.mark.slow
def test_the_ldm_names_match_comfyui_cores_table(comfy_corpus: dict[str, Path]) -> None:
    """The kohya LDM file was named by ComfyUI's own table; ours maps every one of its modules back."""
    table = ldm_names.kohya_ldm_to_diffusers()
    kohya = {k.split(".")[0] for k in load_file(str(comfy_corpus["tiny-lora_kohya.safetensors"])) if "lora_unet_" in k}
    ldm = {k.split(".")[0] for k in load_file(str(comfy_corpus["kohya_ldm_lora.safetensors"])) if "lora_unet_" in k}
    mapped = {"lora_unet_" + table[n.removeprefix("lora_unet_")].replace(".", "_") for n in ldm}
    assert mapped == kohya


def test_the_ldm_table_covers_every_unet_module_and_agrees_with_the_tiny_writer() -> None:
    """Every Linear/Conv/Norm of diffusers' SD1.5 UNet and every VAE weight has an LDM name, and the tiny models'
    own diffusers -> LDM writer (``tiny_models.ldm_layout``, separate code) gives the same names."""
    from sketch_rag.tiny_models.ldm_layout import unet_to_ldm, vae_to_ldm

    unet = build_tiny_sd15()["unet"]
    wanted = {
        name
        for name, module in unet.named_modules()
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d | torch.nn.GroupNorm | torch.nn.LayerNorm)
    }
    table = ldm_names.ldm_to_diffusers_modules()
    assert set(table.values()) == wanted
    written = unet_to_ldm({f"{name}.weight": torch.zeros(1) for name in wanted}, dict(unet.config))
    assert {k.removesuffix(".weight") for k in written} == set(table)
    vae = build_tiny_sd15()["vae"]
    names = {k: ldm_names.vae_key_to_ldm(k) for k in vae.state_dict()}
    assert names == dict(zip(names, vae_to_ldm(vae.state_dict(), dict(vae.config)), strict=True))


def test_a_kohya_lora_with_ldm_block_names_fuses_like_its_diffusers_named_twin(
    corpus: dict[str, Path], make_spec: Callable[..., PipelineSpec], tmp_path: Path
) -> None:
    """The few-step LoRA (resnets, samplers, attention) renamed to LDM blocks by ``unet_module_to_ldm``."""
    source = corpus["Hyper-SD15-8steps-lora.safetensors"]
    renamed = {}
    for key, value in load_file(str(source)).items():
        name, _, rest = key.partition(".")
        diffusers = next(d for d in ldm_names.ldm_to_diffusers_modules().values() if d.replace(".", "_") == name[10:])
        renamed[f"lora_unet_{str(ldm_names.unet_module_to_ldm(diffusers)).replace('.', '_')}.{rest}"] = value
    path = tmp_path / "hyper-ldm.safetensors"
    save_file(renamed, str(path))
    spec = make_spec(ip_adapter=None, dtype="fp32")
    assert read_lora(path).layout == "kohya-ldm"
    a, b = our_deltas(spec, path, STRENGTH), our_deltas(spec, source, STRENGTH)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------------------------
# Image encoders and IP-Adapters
# ---------------------------------------------------------------------------------------------------------------


def test_an_image_encoder_mixing_fp16_and_fp32_tensors_renders_in_one_precision(
    make_spec: Callable[..., PipelineSpec], corpus: dict[str, Path], edge_image, styles
) -> None:
    good = make_spec(dtype="fp16")  # the file's first tensors are fp16 already; its LayerNorms are fp32
    spec = dataclasses.replace(good, image_encoder=corpus["CLIP-ViT-H-14-mixed-fp16-fp32.safetensors"])
    hybrid = PipelineCache().get(spec)
    assert {t.dtype for t in hybrid.pipe.image_encoder.parameters()} == {torch.float16}
    assert np.isfinite(hybrid.render(request(edge_image, styles[:1]))).all()


def test_the_full_face_adapter_takes_the_encoders_patches(
    cache: PipelineCache, make_spec: Callable[..., PipelineSpec], corpus: dict[str, Path], edge_image, styles
) -> None:
    good = make_spec()
    plain = cache.get(good).render(request(edge_image, styles[:1]))
    full_face = cache.get(dataclasses.replace(good, ip_adapter=corpus["ip-adapter-full-face_sd15.safetensors"]))
    assert full_face.ip_info.plus and full_face.ip_info.tokens == 257
    out = full_face.render(request(edge_image, styles[:1]))
    assert np.isfinite(out).all() and not np.array_equal(out, plain)


# ---------------------------------------------------------------------------------------------------------------
# Refusals: the file named, what is wrong, what works; the file untouched; the warm pipeline unchanged
# ---------------------------------------------------------------------------------------------------------------


INCOMPLETE = r"incomplete SD1.5 checkpoint: it lacks "
REFUSALS = [
    ("checkpoint", "no-unet-conv.safetensors", INCOMPLETE + r".*model\.input_blocks\.4\.0\.in_layers\.2\.weight"),
    ("checkpoint", "no-vae-attention.safetensors", INCOMPLETE + r".*stage_model\.decoder\.mid\.attn_1\.q\.weight"),
    ("checkpoint", "no-vae-downsampler.safetensors", INCOMPLETE + r".*stage_model\.encoder\.down\.0\.downsample"),
    ("checkpoint", "no-final-layer-norm.safetensors", INCOMPLETE + r".*text_model\.final_layer_norm\.weight"),
    ("checkpoint", "no-cross-attention.safetensors", INCOMPLETE + r".*attn2\.to_k\.weight"),
    ("checkpoint", "no-text-mlp.safetensors", INCOMPLETE + r".*encoder\.layers\.0\.mlp\.fc1\.weight"),
    (
        "controlnet",
        "diff_control_sd15_canny_fp16.safetensors",
        r"'diff' ControlNet.*differences from an SD1.5 UNet.*control_v11p_sd15_canny",
    ),
    ("image_encoder", "clip_vision_vit_l.safetensors", r"ViT-L/14 vision tower.*not ViT-H/14.*CLIP-ViT-H-14"),
    ("image_encoder", "CLIP-ViT-bigG-14.safetensors", r"ViT-bigG/14 vision tower.*not ViT-H/14.*CLIP-ViT-H-14"),
]


@pytest.mark.parametrize(("role", "name", "expected"), REFUSALS)
def test_a_refused_file_is_named_untouched_and_the_warm_pipeline_renders_as_before(
    cache: PipelineCache, make_spec: Callable[..., PipelineSpec], corpus: dict[str, Path], edge_image, styles,
    role: str, name: str, expected: str,
) -> None:
    good = make_spec()
    before = cache.get(good).render(request(edge_image, styles[:1]))
    path = corpus[name]
    content = digest(path)
    with pytest.raises(ModelMismatchError, match=expected) as refused:
        cache.get(dataclasses.replace(good, **{role: path}))
    assert str(refused.value).startswith(name)
    assert digest(path) == content
    assert np.array_equal(cache.get(good).render(request(edge_image, styles[:1])), before)


def test_a_lora_of_an_unknown_layout_names_the_layouts_read(tmp_path: Path) -> None:
    path = tmp_path / "mystery.safetensors"
    save_file({"blocks.0.lora.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ModelMismatchError, match=r"mystery\.safetensors is not a LoRA.*kohya.*diffusers.*ComfyUI"):
        read_lora(path)
    ldm = tmp_path / "sdxl-blocks.safetensors"
    save_file({"lora_unet_input_blocks_4_1_proj_in_x.lora_down.weight": torch.zeros(1, 4),
               "lora_unet_input_blocks_4_1_proj_in_x.lora_up.weight": torch.zeros(4, 1)}, str(ldm))
    with pytest.raises(ModelMismatchError, match=r"LDM block names.*names no module of SD1.5's UNet"):
        read_lora(ldm)
