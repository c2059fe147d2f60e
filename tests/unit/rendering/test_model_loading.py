"""Every model format loads offline and bit-exact; wrong, damaged or missing files fail before sampling."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sketch_rag.errors import InvalidImageError, InvalidParameterError, ModelMismatchError, ModelNotFoundError
from sketch_rag.rendering.model_cache import PipelineCache
from sketch_rag.rendering.model_files import resolve_model
from sketch_rag.rendering.pipeline_spec import PipelineSpec
from sketch_rag.rendering.render_request import RenderRequest
from sketch_rag.tiny_models.sd import CHECKPOINT_NAME, CONTROLNET_NAMES, IP_ADAPTER_NAMES, build_tiny_sd15


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Any attempt to open a connection is recorded and refused."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args[1:] if args else kwargs)
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts


def same_weights(original: torch.nn.Module, loaded: torch.nn.Module, round_fp16: bool) -> bool:
    """``loaded`` holds exactly ``original``'s tensors (fp16-rounded where the file is fp16).

    Keys ``loaded`` has beyond the original (the IP-Adapter layers loaded into the UNet) are not compared.
    """
    a, b = original.state_dict(), loaded.state_dict()
    if not set(a) <= set(b):
        return False
    norm = (lambda t: t.half().float()) if round_fp16 else (lambda t: t.float())
    return all(torch.equal(norm(a[k]), b[k].float()) for k in a)


@pytest.fixture(scope="module")
def originals() -> dict[str, Any]:
    return build_tiny_sd15()  # same seed as the files: the weights they were written from


@pytest.fixture(scope="module")
def extra_formats(models_dir: Path, originals: dict[str, Any], tmp_path_factory) -> dict[str, Path]:
    """The other ways users keep these models: a legacy .ckpt, diffusers folders."""
    from diffusers import StableDiffusionPipeline

    root = tmp_path_factory.mktemp("formats")
    ckpt = root / "checkpoints" / "tiny-sd15.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": load_file(str(models_dir / "checkpoints" / CHECKPOINT_NAME)), "global_step": 1}, ckpt)
    loaded = (
        PipelineCache()
        .get(
            PipelineSpec(models_dir / "checkpoints" / CHECKPOINT_NAME, models_dir / "controlnet" / CONTROLNET_NAMES[1])
        )
        .pipe
    )
    folder: Any = StableDiffusionPipeline(
        vae=loaded.vae,
        text_encoder=loaded.text_encoder,
        tokenizer=loaded.tokenizer,
        unet=loaded.unet,
        scheduler=loaded.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder.save_pretrained(root / "sd15")
    originals["controlnet"].save_pretrained(root / "controlnet")
    originals["image_encoder"].save_pretrained(root / "image_encoder")
    return {
        "ckpt": ckpt,
        "sd_folder": root / "sd15",
        "cn_folder": root / "controlnet",
        "enc_folder": root / "image_encoder",
    }


def test_every_format_loads_bit_exact_with_the_network_unreachable(
    no_network: list[Any],
    models_dir: Path,
    extra_formats: dict[str, Path],
    originals: dict[str, torch.nn.Module],
    edge_image: np.ndarray,
    styles: list[np.ndarray],
) -> None:
    cn_dir, ip_dir, enc = models_dir / "controlnet", models_dir / "ipadapter", models_dir / "clip_vision"
    encoder_file = enc / "tiny-CLIP-ViT-H-14.safetensors"
    cases = [  # (checkpoint, controlnet, ip adapter, encoder, fp16-rounded controlnet?)
        (
            models_dir / "checkpoints" / CHECKPOINT_NAME,
            cn_dir / CONTROLNET_NAMES[0],
            ip_dir / IP_ADAPTER_NAMES[0],
            encoder_file,
            True,
        ),
        (extra_formats["ckpt"], cn_dir / CONTROLNET_NAMES[1], ip_dir / IP_ADAPTER_NAMES[1], encoder_file, False),
        (
            extra_formats["sd_folder"],
            extra_formats["cn_folder"],
            ip_dir / IP_ADAPTER_NAMES[2],
            extra_formats["enc_folder"],
            False,
        ),
    ]
    images = []
    for checkpoint, controlnet, adapter, encoder, cn_fp16 in cases:
        hybrid = PipelineCache().get(PipelineSpec(checkpoint, controlnet, adapter, encoder))
        pipe = hybrid.pipe
        assert len(pipe.tokenizer) == 49408 and pipe.tokenizer.model_max_length == 77
        assert same_weights(originals["unet"], pipe.unet, round_fp16=True), checkpoint.name
        assert same_weights(originals["vae"], pipe.vae, round_fp16=True)
        assert same_weights(originals["text_encoder"], pipe.text_encoder, round_fp16=True)
        assert same_weights(originals["controlnet"], pipe.controlnet, round_fp16=cn_fp16), controlnet.name
        assert same_weights(originals["image_encoder"], pipe.image_encoder, round_fp16=encoder.is_file())
        images.append(
            hybrid.render(RenderRequest("a house", edge_image, styles[:1], num_inference_steps=2, width=64, height=64))
        )
        assert np.isfinite(images[-1]).all()
    assert no_network == []
    # The .safetensors checkpoint and the .ckpt made from it hold the same tensors; with the same adapter
    # weights (.safetensors vs .bin) and ControlNet weights up to fp16 rounding, the renders are close.
    assert np.abs(images[0] - images[1]).max() < 0.02


def test_a_missing_model_names_the_folder_the_candidates_and_what_to_download(models_dir: Path) -> None:
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("v1-5-pruned-emaonly.safetensors", models_dir / "checkpoints", "checkpoints")
    message = str(err.value)
    assert str(models_dir / "checkpoints") in message and CHECKPOINT_NAME in message
    assert "stable-diffusion-v1-5" in message


def _fake_checkpoint(path: Path, keys: dict[str, tuple[int, ...]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, str(path))
    return path


@pytest.fixture
def bad_files(tmp_path: Path, models_dir: Path) -> dict[str, Path]:
    good = models_dir / "checkpoints" / CHECKPOINT_NAME
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    sdxl_ip = {k: v for k, v in load_file(str(models_dir / "ipadapter" / IP_ADAPTER_NAMES[0])).items()}
    sdxl_ip = {k: (torch.zeros(v.shape[0], 2048) if "_ip." in k else v) for k, v in sdxl_ip.items()}
    save_file(sdxl_ip, str(tmp_path / "ip-adapter_sdxl.safetensors"))
    return {
        "truncated": truncated,
        "sdxl": _fake_checkpoint(
            tmp_path / "sdxl.safetensors",
            {
                "conditioner.embedders.0.transformer.x": (1,),
                "model.diffusion_model.input_blocks.0.0.weight": (4, 4, 3, 3),
            },
        ),
        "sd2": _fake_checkpoint(
            tmp_path / "sd2.safetensors", {"cond_stage_model.model.token_embedding.weight": (2, 2)}
        ),
        "lora": _fake_checkpoint(tmp_path / "lora.safetensors", {"lora_unet_down.alpha": (1,)}),
        "sdxl_ip": tmp_path / "ip-adapter_sdxl.safetensors",
        "pickle_with_code": tmp_path / "evil.ckpt",
    }


@pytest.mark.parametrize(
    ("which", "role", "expected"),
    [
        ("truncated", "checkpoint", "truncated"),
        ("sdxl", "checkpoint", "SDXL checkpoint"),
        ("sd2", "checkpoint", "SD2.x checkpoint"),
        ("lora", "checkpoint", "not a complete SD1.5"),
        ("sdxl_ip", "ip_adapter", "SDXL IP-Adapter"),
        ("pickle_with_code", "checkpoint", "run code"),
    ],
)
def test_wrong_or_damaged_model_files_are_refused_and_the_warm_pipeline_survives(
    cache: PipelineCache,
    make_spec: Callable[..., PipelineSpec],
    bad_files: dict[str, Path],
    edge_image,
    styles,
    which: str,
    role: str,
    expected: str,
) -> None:
    if which == "pickle_with_code":
        import pickle

        class Payload:
            def __reduce__(self) -> tuple[Any, ...]:
                return (shutil.rmtree, ("/nonexistent-sketch-rag-test",))

        bad_files[which].write_bytes(pickle.dumps({"state_dict": Payload()}))
    good = make_spec()
    req = RenderRequest("a house", edge_image, styles[:1], num_inference_steps=2, width=64, height=64)
    before = cache.get(good).render(req)
    loads = dict(cache.loads)
    bad = {"checkpoint": bad_files[which]} if role == "checkpoint" else {}
    spec = make_spec(**bad)
    if role == "ip_adapter":
        spec = PipelineSpec(spec.checkpoint, spec.controlnet, bad_files[which], spec.image_encoder)
    with pytest.raises(ModelMismatchError, match=expected):
        cache.get(spec)
    after = cache.get(good).render(req)
    assert np.array_equal(before, after)
    assert dict(cache.loads)["checkpoint"] == loads["checkpoint"]  # the good checkpoint was never dropped


@pytest.mark.parametrize(
    ("changes", "error", "expected"),
    [
        ({"num_inference_steps": 0}, InvalidParameterError, "num_inference_steps is 0"),
        ({"num_inference_steps": 10_000}, InvalidParameterError, "num_inference_steps is 10000"),
        ({"width": 100, "height": 100}, InvalidParameterError, "multiple of 8"),
        ({"width": 128, "height": 64}, InvalidParameterError, "stretched"),
        (
            {"width": 0, "height": 0, "control_image": np.zeros((64, 1000), np.uint8)},
            InvalidParameterError,
            "outside 64-2048",
        ),
        ({"width": 2048, "height": 2048, "num_images_per_prompt": 4}, InvalidParameterError, "MP in one run"),
        ({"style_images": []}, InvalidImageError, "style image batch is empty"),
        ({"style_weights": [1.0, 2.0]}, InvalidParameterError, "2 style weight"),
        ({"style_weights": [-1.0]}, InvalidParameterError, "non-negative"),
        ({"control_image": np.zeros((64, 64, 4), np.uint8)}, InvalidImageError, "4 channels"),
        ({"control_image": np.zeros((0, 64, 3), np.uint8)}, InvalidImageError, "empty"),
        ({"style_images": [np.zeros((32, 32, 2), np.uint8)]}, InvalidImageError, "style image 1 has 2 channels"),
        ({"guidance_scale": float("nan")}, InvalidParameterError, "guidance_scale is nan"),
        ({"control_guidance_start": 0.8, "control_guidance_end": 0.2}, InvalidParameterError, "must be below"),
    ],
)
def test_bad_inputs_fail_before_sampling_and_leave_the_pipeline_usable(
    cache: PipelineCache,
    make_spec,
    edge_image,
    styles,
    changes: dict[str, Any],
    error: type,
    expected: str,
) -> None:
    hybrid = cache.get(make_spec())
    settings: dict[str, Any] = {
        "prompt": "a house",
        "control_image": edge_image,
        "style_images": styles[:1],
        "num_inference_steps": 1,
        "width": 64,
        "height": 64,
    }
    good = hybrid.render(RenderRequest(**settings))
    steps: list[int] = []
    with pytest.raises(error, match=expected):
        hybrid.render(RenderRequest(**{**settings, **changes}), on_step=lambda i, n, x: steps.append(i))
    assert steps == []  # refused before the first step
    assert np.array_equal(hybrid.render(RenderRequest(**settings)), good)


def test_edge_and_style_images_of_different_sizes_and_aspects_work_together(cache, make_spec, edge_image) -> None:
    hybrid = cache.get(make_spec())
    tall_style = np.random.default_rng(1).random((90, 30, 3)).astype(np.float32)
    gray_style = np.full((20, 70), 128, np.uint8)
    out = hybrid.render(
        RenderRequest("a house", edge_image[:, :48], [tall_style, gray_style], num_inference_steps=1, height=96)
    )
    assert out.shape == (1, 96, 72, 3)  # the edge image's 3:4 aspect


# ---------------------------------------------------------------------------------------------------------------
# ControlNets: recognised by their keys and shapes, whatever they were trained on and whatever they are called
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def controlnet_variants(models_dir: Path, originals: dict[str, Any], tmp_path_factory) -> dict[str, Path]:
    """The tiny ControlNet as users keep lineart, scribble, softedge and tile models: every layout, other names."""
    from sketch_rag.tiny_models.ldm_layout import controlnet_checkpoint

    root = tmp_path_factory.mktemp("controlnets")
    controlnet = originals["controlnet"]
    full_v10 = {  # ControlNet 1.0's control_sd15_*.pth: the whole SD1.5 model plus control_model.*
        **load_file(str(models_dir / "checkpoints" / CHECKPOINT_NAME)),
        **controlnet_checkpoint(controlnet, prefix="control_model."),
    }
    files = {
        "control_v11p_sd15_lineart.pth": controlnet_checkpoint(controlnet, prefix=""),
        "control_sd15_scribble.pth": full_v10,
        "control_v11p_sd15_softedge_fp16.safetensors": controlnet_checkpoint(controlnet, "", torch.float16),
        # diffusers' diffusion_pytorch_model.safetensors, renamed as users do
        "control_v11f1e_sd15_tile.safetensors": {k: v.contiguous() for k, v in controlnet.state_dict().items()},
        "sketchy-lines-v2.bin": dict(controlnet.state_dict()),
    }
    paths = {}
    for name, state in files.items():
        paths[name] = root / name
        if name.endswith(".safetensors"):
            save_file(state, str(paths[name]))
        else:
            torch.save(state, paths[name])
    return paths


@pytest.mark.parametrize(
    "name",
    [
        "control_v11p_sd15_lineart.pth",
        "control_sd15_scribble.pth",
        "control_v11p_sd15_softedge_fp16.safetensors",
        "control_v11f1e_sd15_tile.safetensors",
        "sketchy-lines-v2.bin",
    ],
)
def test_any_sd15_controlnet_loads_by_its_keys_whatever_its_name(
    cache: PipelineCache,
    make_spec: Callable[..., PipelineSpec],
    controlnet_variants: dict[str, Path],
    originals: dict[str, Any],
    edge_image: np.ndarray,
    name: str,
) -> None:
    good = make_spec(ip_adapter=None)
    spec = PipelineSpec(good.checkpoint, controlnet_variants[name])
    req = RenderRequest("a house", edge_image, [], num_inference_steps=2, width=64, height=64)
    hybrid = cache.get(spec)
    assert same_weights(originals["controlnet"], hybrid.pipe.controlnet, round_fp16="fp16" in name), name
    reference = cache.get(PipelineSpec(good.checkpoint, controlnet_variants["control_v11p_sd15_lineart.pth"]))
    expected = reference.render(req)
    if "fp16" not in name:  # the same fp32 weights in another layout: the same render, bit for bit
        assert np.array_equal(cache.get(spec).render(req), expected), name


def _without(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(prefix)}


@pytest.fixture(scope="module")
def wrong_controlnets(models_dir: Path, originals: dict[str, Any], tmp_path_factory) -> dict[str, Path]:
    """Files users put into models/controlnet that this SD1.5 sampler cannot use."""
    from diffusers import ControlNetModel

    from sketch_rag.tiny_models.ldm_layout import controlnet_checkpoint
    from sketch_rag.tiny_models.sd import TINY_UNET_CHANNELS

    root = tmp_path_factory.mktemp("wrong_controlnets")
    ldm = controlnet_checkpoint(originals["controlnet"], prefix="")
    diffusers_keys = dict(originals["controlnet"].state_dict())
    torch.manual_seed(0)
    sd2: Any = ControlNetModel(  # SD2.x's layout at tiny width: linear projections, OpenCLIP-H's 1024-wide text
        block_out_channels=TINY_UNET_CHANNELS, cross_attention_dim=1024, use_linear_projection=True,
        attention_head_dim=8, norm_num_groups=32,
    )
    four_channel_hint = dict(ldm)
    four_channel_hint["input_hint_block.0.weight"] = torch.zeros(16, 4, 3, 3)
    files = {
        "controlnet-sdxl-canny.safetensors": {**ldm, "label_emb.0.0.weight": torch.zeros(64, 16)},
        "sdxl-diffusers-canny.safetensors": {**diffusers_keys, "add_embedding.linear_1.weight": torch.zeros(64, 16)},
        "control_sd21_canny.safetensors": controlnet_checkpoint(sd2, prefix=""),
        "sd21-diffusers-canny.safetensors": {k: v.contiguous() for k, v in sd2.state_dict().items()},
        "t2iadapter_canny_sd15v2.safetensors": {"body.0.block1.weight": torch.zeros(8, 8, 3, 3),
                                                "conv_in.weight": torch.zeros(8, 192, 3, 3)},
        "v1-5-pruned-emaonly.safetensors": load_file(str(models_dir / "checkpoints" / CHECKPOINT_NAME)),
        "control_v11p_sd15_inpaint_4ch.safetensors": four_channel_hint,
        "half-a-controlnet.safetensors": _without(ldm, "input_blocks.4."),
    }
    paths = {}
    for name, state in files.items():
        paths[name] = root / name
        save_file({k: v.contiguous() for k, v in state.items()}, str(paths[name]))
    return paths


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("controlnet-sdxl-canny.safetensors", "is an SDXL ControlNet; the checkpoint is SD1.5. Pick an SD1.5"),
        ("sdxl-diffusers-canny.safetensors", "is an SDXL ControlNet; the checkpoint is SD1.5. Pick an SD1.5"),
        ("control_sd21_canny.safetensors", r"is an SD2.x ControlNet \(text width 1024.*Pick an SD1.5 ControlNet"),
        ("sd21-diffusers-canny.safetensors", r"is an SD2.x ControlNet \(text width 1024.*Pick an SD1.5 ControlNet"),
        ("t2iadapter_canny_sd15v2.safetensors", "is not a ControlNet .*T2I-Adapter.*models/controlnet"),
        ("v1-5-pruned-emaonly.safetensors", "is not a ControlNet .*checkpoint is not one"),
        ("control_v11p_sd15_inpaint_4ch.safetensors", "control image has 4 channels.*RGB"),
        ("half-a-controlnet.safetensors", r"is not an SD1.5 ControlNet: its UNet has input blocks \[0, 1, 2, 3, 5"),
    ],
)
def test_a_file_that_is_no_sd15_controlnet_is_refused_by_name_and_the_warm_pipeline_survives(
    cache: PipelineCache,
    make_spec: Callable[..., PipelineSpec],
    wrong_controlnets: dict[str, Path],
    edge_image: np.ndarray,
    name: str,
    expected: str,
) -> None:
    good = make_spec(ip_adapter=None)
    req = RenderRequest("a house", edge_image, [], num_inference_steps=2, width=64, height=64)
    before = cache.get(good).render(req)
    loads = dict(cache.loads)
    with pytest.raises(ModelMismatchError, match=expected) as refused:
        cache.get(PipelineSpec(good.checkpoint, wrong_controlnets[name]))
    assert str(refused.value).startswith(name)  # the message names the file the user picked
    assert np.array_equal(cache.get(good).render(req), before)
    assert dict(cache.loads)["controlnet"] == loads["controlnet"]  # the good ControlNet was never dropped
