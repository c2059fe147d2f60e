"""Run in a fresh interpreter: ComfyUI core writes model files in its own layouts and reads LoRAs its own way.

Called by ``test_files_from_the_wild.py`` (importing ComfyUI sets process-wide state, so it runs apart):

    python comfy_wild_files.py COMFY_DIR JOB.json

JOB holds ``checkpoint_a``/``checkpoint_b`` (tiny SD1.5 files, two seeds), ``text_hidden``, ``out`` (a folder),
``kohya_lora`` (a kohya LoRA with diffusers block names), ``strength`` and ``loras`` (files to read). It writes:

- ``comfy_saved.safetensors``: checkpoint A through ``comfy.sd.save_checkpoint`` (UNet and CLIP as ComfyUI saves
  them; ComfyUI's VAE class only builds the real 128-channel VAE, so the tiny VAE's keys go in unchanged through
  ``save_checkpoint``'s own ``extra_keys``);
- ``comfy_extracted_lora.safetensors``: B - A extracted by ComfyUI's LoRA saver (``nodes_lora_extract
  .calc_lora_model``, what the "Extract and Save Lora" node runs), rank 4, with ``.diff``/``.diff_b``;
- ``comfy_full_diff_lora.safetensors``: the same saver's ``full_diff`` type (every weight as a ``.diff``);
- ``kohya_ldm_lora.safetensors``: ``kohya_lora`` renamed to LDM block names with ComfyUI's own table
  (``comfy.utils.unet_to_diffusers``);
- ``deltas_<i>.safetensors``: how much ``comfy.sd.load_lora_for_models`` changes each weight of A for
  ``loras[i]`` (the two files above are read too, as ``deltas_extracted``/``deltas_kohya_ldm``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch


def main() -> None:
    comfy_dir, job_file = sys.argv[1:3]
    job = json.loads(Path(job_file).read_text())
    sys.argv = [sys.argv[0], "--cpu"]
    sys.path.insert(0, comfy_dir)
    torch.set_num_threads(1)
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.sd
    import comfy.supported_models as sm
    import comfy.utils
    from safetensors.torch import load_file, save_file

    class TinySD15(sm.SD15):  # ComfyUI's detection only knows SD1.5's real widths
        unet_config = {**sm.SD15.unet_config, "context_dim": int(job["text_hidden"]), "model_channels": 32}

    sm.models.insert(0, TinySD15)
    width = int(job["text_hidden"])
    text = {"hidden_size": width, "intermediate_size": 2 * width, "num_attention_heads": 1, "num_hidden_layers": 2,
            "projection_dim": width}
    out = Path(job["out"])

    def load(path: str) -> tuple[Any, Any]:
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(
            path, output_vae=False, output_clip=True, model_options={"dtype": torch.float32},
            te_model_options={"dtype": torch.float32, "clip_l_model_config": text},
        )
        return model, clip

    model_a, clip_a = load(job["checkpoint_a"])
    vae_keys = {k: v for k, v in load_file(job["checkpoint_a"]).items() if k.startswith("first_stage_model.")}
    comfy.sd.save_checkpoint(str(out / "comfy_saved.safetensors"), model_a, clip_a, extra_keys=vae_keys)

    # ModelSubtract / CLIPSubtract, then the LoRA saver's extraction
    from comfy_extras.nodes_lora_extract import LORAType, calc_lora_model
    from comfy_extras.nodes_model_merging import CLIPSubtract, ModelSubtract

    model_b, clip_b = load(job["checkpoint_b"])
    (model_diff,) = ModelSubtract().merge(model_b, model_a, 1.0)
    (clip_diff,) = CLIPSubtract().merge(clip_b, clip_a, 1.0)
    lora: dict[str, torch.Tensor] = {}
    lora = calc_lora_model(model_diff, 4, "diffusion_model.", "diffusion_model.", lora, LORAType.STANDARD, True)
    # The CLIP's transformer layers only: the token embedding (49408 rows) would cost a 49408² SVD (``extract_lora``
    # takes a full SVD). The prefixes are the saver's own ("" -> "text_encoders."), narrowed to the same subtree.
    inner = "clip_l.transformer.text_model.encoder."
    lora = calc_lora_model(clip_diff.patcher, 4, inner, f"text_encoders.{inner}", lora, LORAType.STANDARD, True)
    comfy.utils.save_torch_file(lora, str(out / "comfy_extracted_lora.safetensors"))
    # The saver's other type: full differences of every weight (the whole CLIP, projection and embeddings too)
    full: dict[str, torch.Tensor] = {}
    full = calc_lora_model(model_diff, 4, "diffusion_model.", "diffusion_model.", full, LORAType.FULL_DIFF, True)
    full = calc_lora_model(clip_diff.patcher, 4, "", "text_encoders.", full, LORAType.FULL_DIFF, True)
    comfy.utils.save_torch_file(full, str(out / "comfy_full_diff_lora.safetensors"))

    # kohya names with LDM blocks, from ComfyUI's diffusers -> LDM table
    table = comfy.utils.unet_to_diffusers(model_a.model.model_config.unet_config)
    weights = {d: ldm for d, ldm in table.items() if d.endswith(".weight")}
    modules = {d.removesuffix(".weight"): ldm.removesuffix(".weight") for d, ldm in weights.items()}
    kohya_ldm = {}
    for key, value in load_file(job["kohya_lora"]).items():
        name, _, rest = key.partition(".")
        if name.startswith("lora_unet_"):
            diffusers = next(d for d in modules if d.replace(".", "_") == name.removeprefix("lora_unet_"))
            name = "lora_unet_" + modules[diffusers].replace(".", "_")
        kohya_ldm[f"{name}.{rest}"] = value
    save_file(kohya_ldm, str(out / "kohya_ldm_lora.safetensors"))

    # ComfyUI core reading each LoRA: the change of every weight of A
    parts = {"unet": model_a.model.diffusion_model, "clip": clip_a.cond_stage_model}
    base = {name: {k: v.float().clone() for k, v in m.state_dict().items()} for name, m in parts.items()}
    files = {**{str(i): p for i, p in enumerate(job["loras"])},
             "extracted": str(out / "comfy_extracted_lora.safetensors"),
             "full_diff": str(out / "comfy_full_diff_lora.safetensors"),
             "kohya_ldm": str(out / "kohya_ldm_lora.safetensors")}
    strength = float(job["strength"])
    for tag, path in files.items():
        patched_model, patched_clip = comfy.sd.load_lora_for_models(
            model_a, clip_a, comfy.utils.load_torch_file(path, safe_load=True), strength, strength
        )
        deltas = {}
        for patcher, name in ((patched_model, "unet"), (patched_clip.patcher, "clip")):
            for key in list(patcher.patches):
                patcher.patch_weight_to_device(key, device_to=torch.device("cpu"))
            for k, v in parts[name].state_dict().items():
                d = v.float() - base[name][k]
                if d.abs().max() > 0:
                    deltas[f"{name}.{k}"] = d.contiguous()
            patcher.unpatch_model()
        save_file(deltas, str(out / f"deltas_{tag}.safetensors"))
    sys.stdout.write("OK\n")


if __name__ == "__main__":
    main()
