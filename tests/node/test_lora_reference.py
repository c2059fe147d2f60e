"""Independent reader: ComfyUI core's own LoRA loader applies our tiny kohya LoRA exactly as our pipeline does.

ComfyUI maps kohya names onto its LDM-layout UNet and its CLIP (``comfy.lora.model_lora_keys_unet/clip``) with
code of its own, so the same weights changing by the same deltas on both sides shows that the tiny file has
the real kohya layout, and that our reading (diffusers' converters + our fuse) is right. ComfyUI runs in a
subprocess (its import configures global state) on the tiny checkpoint loaded by
``comfy.sd.load_checkpoint_guess_config``. ComfyUI's model detection only knows SD1.5's real widths, so the
script registers the tiny widths as one more SD15 config and gives the tiny text width through ComfyUI's own
``clip_l_model_config`` option; key mapping and LoRA maths stay ComfyUI's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sketch_rag.cli.comfyui_install import install_comfyui
from sketch_rag.tiny_models.lora import LORA_NAMES, write_tiny_loras
from sketch_rag.tiny_models.sd import CHECKPOINT_NAME, TINY_TEXT_HIDDEN, build_tiny_sd15
from tests.helpers.lora_deltas import our_deltas
from tests.helpers.paths import COMFYUI_HOME

pytestmark = pytest.mark.slow

STRENGTH = 0.7
COMFY_SCRIPT = """
import sys
import torch
comfy_dir, checkpoint, lora_path, out, strength, text_hidden = sys.argv[1:7]
sys.argv = [sys.argv[0], "--cpu"]
sys.path.insert(0, comfy_dir)
import comfy.options
comfy.options.enable_args_parsing()
import comfy.sd
import comfy.supported_models as sm
import comfy.utils
from safetensors.torch import save_file

class TinySD15(sm.SD15):
    unet_config = {**sm.SD15.unet_config, "context_dim": int(text_hidden), "model_channels": 32}

sm.models.insert(0, TinySD15)
width = int(text_hidden)
text = {"hidden_size": width, "intermediate_size": 2 * width, "num_attention_heads": 1, "num_hidden_layers": 2,
        "projection_dim": width}
model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(
    checkpoint, output_vae=False, output_clip=True, model_options={"dtype": torch.float32},
    te_model_options={"dtype": torch.float32, "clip_l_model_config": text},
)
parts = {"unet": model.model.diffusion_model, "clip": clip.cond_stage_model}
base = {name: {k: v.float().clone() for k, v in m.state_dict().items()} for name, m in parts.items()}
lora = comfy.utils.load_torch_file(lora_path, safe_load=True)
patched_model, patched_clip = comfy.sd.load_lora_for_models(model, clip, lora, float(strength), float(strength))
for patcher in (patched_model, patched_clip.patcher):
    for key in list(patcher.patches):
        patcher.patch_weight_to_device(key, device_to=torch.device("cpu"))
deltas = {}
for name, m in parts.items():
    for k, v in m.state_dict().items():
        d = v.float() - base[name][k]
        if d.abs().max() > 0:
            deltas[f"{name}.{k}"] = d.contiguous()
save_file(deltas, out)
"""


def comfy_deltas(tmp: Path, checkpoint: Path, lora: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    comfy_dir = install_comfyui(COMFYUI_HOME, requirements=False)
    out = tmp / "comfy_deltas.safetensors"
    args = [str(comfy_dir), str(checkpoint), str(lora), str(out), str(STRENGTH), str(TINY_TEXT_HIDDEN)]
    done = subprocess.run(
        [sys.executable, "-c", COMFY_SCRIPT, *args], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "lora key not loaded" not in done.stderr, done.stderr[-3000:]
    return load_file(str(out))


def test_comfyui_core_lora_loader_changes_the_same_weights_by_the_same_deltas(
    tmp_path: Path, models_dir: Path, make_spec
) -> None:
    sd = build_tiny_sd15()
    kohya = write_tiny_loras(tmp_path / "loras", sd["unet"], sd["text_encoder"])[0]
    assert kohya.name == LORA_NAMES[0]
    reference = comfy_deltas(tmp_path, models_dir / "checkpoints" / CHECKPOINT_NAME, kohya)
    ours = our_deltas(make_spec(ip_adapter=None, dtype="fp32"), kohya, STRENGTH)
    assert sorted(ours) == sorted(reference)
    assert sum(k.startswith("unet.") for k in ours) == 193 and sum(k.startswith("clip.") for k in ours) == 12
    for key, delta in ours.items():
        torch.testing.assert_close(delta, reference[key], rtol=1e-4, atol=1e-6, msg=f"{key} differs")
