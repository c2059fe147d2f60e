"""LoRA files for the SD1.5 pipeline: read the layouts users have, refuse the wrong ones, fuse them exactly.

The layouts users keep in ``models/loras`` for SD1.5 (:data:`LAYOUTS`):

- kohya/A1111 (sd-scripts, most files on model sites): ``lora_unet_<module_with_underscores>.lora_down.weight``,
  ``.lora_up.weight`` and an ``.alpha`` scalar; the text encoder under ``lora_te_``. The module names are
  diffusers' block names, or LDM's (``lora_unet_input_blocks_1_1_proj_in``) in LoRAs extracted from LDM files.
- diffusers/PEFT (``save_lora_weights``, the diffusers training scripts): ``unet.<module>.lora_A.weight`` /
  ``lora_B.weight`` (older: ``lora.down``/``lora.up``, ``to_q_lora``), the text encoder under ``text_encoder.``;
  alpha, when not equal to the rank, in the safetensors metadata (``lora_adapter_metadata``). diffusers'
  ``save_attn_procs`` wrote the UNet part without the ``unet.`` prefix.
- ComfyUI's own saver (``diffusion_model.<LDM module>``, ``text_encoders.clip_l.…``, full ``.diff``/``.diff_b``
  differences for 1-D weights and biases).

Key names are translated by diffusers' own converters (``lora_state_dict``, ``convert_unet_state_dict_to_peft``,
``convert_state_dict_to_peft``); LDM block names go through ``ldm_names`` (checked against ComfyUI's table).
Applying them does not use diffusers' PEFT path
(``load_lora_weights`` + ``fuse_lora``): it needs the ``peft`` package, its ``unfuse_lora`` subtracts the delta
again, which in fp16 is not bit-exact, and un-fused PEFT layers cost extra matmuls on every step. Instead each
LoRA's delta ``strength * alpha / rank * up @ down`` is added to the weight (in float32, rounded once), with a
pristine CPU copy of only the weights a LoRA touched kept aside: a new stack starts from the pristine weights,
so changing a strength reloads nothing and removing every LoRA restores the checkpoint bit for bit.

Fusing into the weights is also what keeps LoRAs working with the IP-Adapter: the adapter replaces the
attention *processors* (tencent-ailab/IP-Adapter issue 35: a LoRA living in the old LoRA processors is lost),
while fused deltas live in ``to_q``/``to_k``/… themselves, which every processor calls.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidParameterError, ModelMismatchError, ModelNotFoundError
from .model_files import FileKey, load_state_dict

log = logging.getLogger(__name__)

MAX_LORA_STRENGTH = 5.0
"""|strength| above this only breaks SD1.5 renders (A1111 users stay within ±2; slider LoRAs within ±5)."""

COMPONENTS = ("unet", "text_encoder")
LAYOUTS = {
    "kohya": "kohya/A1111 (lora_unet_…, diffusers block names)",
    "kohya-ldm": "kohya/A1111 with LDM block names (lora_unet_input_blocks_…)",
    "diffusers": "diffusers/PEFT (unet.…lora_A / lora.down)",
    "attn-procs": "diffusers' save_attn_procs (…processor.to_q_lora.down)",
    "comfyui": "ComfyUI's LoRA saver (diffusion_model.…, text_encoders.clip_l.…)",
}
# ComfyUI's own LoRA files (comfy_extras/nodes_lora_extract.py, LoraSave): LDM module names with dots under
# ``diffusion_model.``, the CLIP under ``text_encoders.clip_l.transformer.``; ``lora_up``/``lora_down`` for 2-D+
# weights, ``.diff`` for 1-D weights and ``.diff_b`` for biases, no alpha (ComfyUI's loader then scales by 1).
COMFY_UNET_PREFIX = "diffusion_model."
COMFY_TEXT_PREFIXES = ("text_encoders.clip_l.transformer.text_model.", "text_encoders.clip_l.transformer.")
COMFY_SUFFIXES = (".lora_up.weight", ".lora_down.weight", ".alpha", ".diff", ".diff_b")
LDM_BLOCKS = re.compile(r"^lora_unet_(input_blocks|middle_block|output_blocks|time_embed|out)_")
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder"}
KOHYA_SDXL_PREFIXES = ("lora_te1_", "lora_te2_")
DIFFUSERS_PREFIXES = ("unet.", "text_encoder.")
SDXL_MARKERS = ("lora_te1_", "lora_te2_", "text_encoder_2.", "add_embedding", "label_emb")
UNSUPPORTED_ADAPTERS = {  # LyCORIS and friends (other maths than up @ down), by the name's last part
    r"\.hada_w[12]_[ab]$": "LoHa",
    r"\.lokr_w[12](_[ab])?$": "LoKr",
    r"\.lora_mid\.weight$": "LoCon with a Tucker mid factor",
    r"(\.dora_scale|lora_magnitude_vector.*)$": "DoRA",
    r"^lora_.*\.diff(_b)?$": "LyCORIS 'full' (weight differences under kohya names)",
}
# Text width of each family's text encoder, which is also the input width of every ``attn2.to_k``/``to_v``.
FAMILY_BY_TEXT_WIDTH = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL", 1280: "SDXL"}


@dataclass(frozen=True)
class LoraPatch:
    """One update of ``component``'s ``module``: ``param += strength * scale * up @ down``, or ``+= strength * diff``.

    ``diff`` is a full difference (ComfyUI's LoRA saver writes one for every 1-D weight and bias: ``.diff``,
    ``.diff_b``); ``down``/``up`` are then empty.
    """

    component: str
    module: str
    down: torch.Tensor  # (rank, in) or (rank, in, kh, kw)
    up: torch.Tensor  # (out, rank) or (out, rank, 1, 1)
    scale: float  # alpha / rank
    param: str = "weight"
    diff: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.diff,) if self.diff is not None else (self.down, self.up)

    def delta(self, device: torch.device) -> torch.Tensor:
        """``scale * up @ down`` (or ``scale * diff``) in float32; a low-rank one flattened to (out, in * kh * kw)."""
        if self.diff is not None:
            return self.diff.to(device, torch.float32) * self.scale
        up = self.up.to(device, torch.float32).flatten(1)
        down = self.down.to(device, torch.float32).flatten(1)
        return (up @ down) * self.scale


def full_difference(component: str, module: str, param: str, diff: torch.Tensor) -> LoraPatch:
    empty = torch.empty(0)
    return LoraPatch(component, module, empty, empty, 1.0, param, diff)


@dataclass(frozen=True)
class LoraFile:
    """A read and recognised LoRA file: its patches in diffusers module names."""

    path: Path
    layout: str  # one of LAYOUTS
    patches: tuple[LoraPatch, ...]


def check_strength(strength: float, path: Path | str) -> float:
    """The strength as a float, or an error naming the LoRA: NaN, infinities and |s| > 5 are refused.

    Raises:
        InvalidParameterError: not a finite number in [-5, 5].
    """
    try:
        value = float(strength)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or abs(value) > MAX_LORA_STRENGTH:
        raise InvalidParameterError(
            f"LoRA strength for {Path(path).name} is {strength!r}; use a number from {-MAX_LORA_STRENGTH:g} to "
            f"{MAX_LORA_STRENGTH:g} (1.0 applies the LoRA as trained, 0 switches it off, negative values invert it)."
        )
    return value


def _not_a_lora(path: Path, keys: Sequence[str]) -> ModelMismatchError:
    sample = ", ".join(repr(k) for k in sorted(keys)[:3]) or "no tensors"
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for k in keys):
        what = "a full SD checkpoint, not a LoRA: put it in models/checkpoints"
    elif any(k.startswith(("control_model.", "input_hint_block.", "zero_convs.")) for k in keys):
        what = "a ControlNet, not a LoRA: put it in models/controlnet"
    else:
        what = f"not a LoRA (keys like {sample})"
    return ModelMismatchError(
        f"{path.name} is {what}. The LoRA layouts read are: {'; '.join(LAYOUTS.values())}. Pick an SD1.5 LoRA "
        "from models/loras, or re-save this one with kohya's or diffusers' tools."
    )


def _refuse_family(path: Path, keys: Sequence[str]) -> None:
    if any(marker in k for k in keys for marker in SDXL_MARKERS):
        raise ModelMismatchError(
            f"{path.name} is an SDXL LoRA (it has two text encoders' weights); this pipeline is SD1.5. Pick an "
            f"SD1.5 LoRA from {path.parent}."
        )
    for key in keys:
        for pattern, kind in UNSUPPORTED_ADAPTERS.items():
            if re.search(pattern, key):
                raise ModelMismatchError(
                    f"{path.name} is {kind} (key {key!r}), which this pipeline does not apply; use a plain LoRA "
                    "(kohya LoRA/LoCon or a diffusers LoRA) or ComfyUI's own LoraLoader."
                )


def _safetensors_metadata(path: Path) -> dict[str, Any]:
    """diffusers' ``lora_adapter_metadata`` (the PEFT config: ``unet.r``, ``unet.lora_alpha``, …), if any."""
    if path.suffix.lower() != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelMismatchError(
            f"{path.name} has unreadable lora_adapter_metadata ({exc}); re-save it with diffusers' save_lora_weights."
        ) from exc
    return parsed if isinstance(parsed, dict) else {}


def _to_module_patches(
    path: Path, component: str, peft: Mapping[str, torch.Tensor], scale_of: Callable[[str, int], float]
) -> list[LoraPatch]:
    """``<module>.lora_A.weight``/``lora_B.weight`` pairs (PEFT names) as patches; ``scale_of(module, rank)``."""
    patches = []
    for module in sorted({k.split(".lora_")[0] for k in peft}):
        down, up = peft.get(f"{module}.lora_A.weight"), peft.get(f"{module}.lora_B.weight")
        if down is None or up is None:
            raise ModelMismatchError(
                f"{path.name} has {component}.{module} without its down/up (lora_A/lora_B) pair; the file is "
                f"damaged or not a LoRA. Download it again into {path.parent}."
            )
        name = module.removeprefix("text_model.") if component == "text_encoder" else module
        patches.append(LoraPatch(component, name, down, up, scale_of(module, int(down.shape[0]))))
    return patches


def _component_to_peft(component: str, inner: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' own key conversions, as its LoRA loaders apply them, into PEFT names (``<module>.lora_A``).

    The text-encoder conversion is told the source layout: diffusers infers it from a ``to_out_lora`` key,
    which a LoRA trained on only some projections lacks.
    """
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )
    from diffusers.utils.state_dict_utils import StateDictType

    if all(".lora_A." in k or ".lora_B." in k for k in inner):
        return {k.replace(".processor.", "."): v for k, v in inner.items()}
    if component == "unet":
        return dict(convert_unet_state_dict_to_peft(inner))
    if any(re.search(r"\.to_(q|k|v|out)_lora\.", k) for k in inner):
        inner = convert_state_dict_to_diffusers(inner, StateDictType.DIFFUSERS_OLD)
    return dict(convert_state_dict_to_peft(inner, StateDictType.DIFFUSERS))


def _split(state: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for component in COMPONENTS:
        inner = {k.removeprefix(f"{component}."): v for k, v in state.items() if k.startswith(f"{component}.")}
        if inner:
            parts[component] = inner
    return parts


def _read_kohya(path: Path, state: dict[str, torch.Tensor]) -> list[LoraPatch]:
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    scaled: dict[str, torch.Tensor] = {}
    for name in sorted({k.split(".", 1)[0] for k in state}):
        down, up = state.get(f"{name}.lora_down.weight"), state.get(f"{name}.lora_up.weight")
        if down is None or up is None:
            raise ModelMismatchError(
                f"{path.name} has {name!r} without its lora_down/lora_up pair; the file is damaged or not a LoRA. "
                f"Download it again into {path.parent}."
            )
        alpha = state.get(f"{name}.alpha")
        # alpha / rank is folded into ``up`` (in float32) so that diffusers' converter, which renames the
        # pairs, carries each module's scale with it.
        scaled[f"{name}.lora_down.weight"] = down
        scaled[f"{name}.lora_up.weight"] = up if alpha is None else up.float() * (float(alpha) / down.shape[0])
    converted, _ = StableDiffusionLoraLoaderMixin.lora_state_dict(scaled)
    patches = []
    for component, inner in _split(converted).items():
        patches += _to_module_patches(path, component, _component_to_peft(component, inner), lambda _m, _r: 1.0)
    return patches


def _peft_scale(module: str, rank: int, config: Mapping[str, Any]) -> float:
    """PEFT's scaling for one module from its LoraConfig: alpha (per-module pattern first) over rank."""
    alpha = config.get("lora_alpha")
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = value
            break
    if alpha is None:  # no alpha stored: the diffusers/PEFT convention is alpha == rank
        return 1.0
    return float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _read_diffusers(path: Path, state: dict[str, torch.Tensor]) -> list[LoraPatch]:
    metadata = _safetensors_metadata(path)
    patches = []
    for component, inner in _split(state).items():
        alphas = {k.removesuffix(".alpha"): float(v) for k, v in inner.items() if k.endswith(".alpha")}
        weights = {k: v for k, v in inner.items() if not k.endswith(".alpha")}
        if not weights:
            continue
        config = {k.removeprefix(f"{component}."): v for k, v in metadata.items() if k.startswith(f"{component}.")}

        def scale_of(module: str, rank: int, config: Mapping[str, Any] = config, alphas: Any = alphas) -> float:
            alpha = next((a for name, a in alphas.items() if name.split(".lora")[0] == module), None)
            return alpha / rank if alpha is not None else _peft_scale(module, rank, config)

        patches += _to_module_patches(path, component, _component_to_peft(component, weights), scale_of)
    return patches


def _layout(keys: Sequence[str]) -> str | None:
    if not keys:
        return None
    if all(k.startswith((*KOHYA_PREFIXES, *KOHYA_SDXL_PREFIXES)) for k in keys):
        return "kohya-ldm" if any(LDM_BLOCKS.match(k) for k in keys) else "kohya"
    if all(k.startswith((*DIFFUSERS_PREFIXES, "text_encoder_2.")) for k in keys) and any("lora" in k for k in keys):
        return "diffusers"
    if all(k.startswith((COMFY_UNET_PREFIX, *COMFY_TEXT_PREFIXES)) and k.endswith(COMFY_SUFFIXES) for k in keys):
        return "comfyui"
    # diffusers' save_attn_procs (until 0.24; h94-era LoRAs and pytorch_lora_weights.bin of the first training
    # scripts): UNet attention processors only, ``<block>.attnN.processor.to_q_lora.down.weight``, no prefix.
    if all(re.search(r"\.processor\.to_(q|k|v|out)_lora\.(down|up)\.weight$", k) for k in keys):
        return "attn-procs"
    return None


def _kohya_ldm_names(path: Path, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """kohya keys with LDM block names renamed to the diffusers block names kohya uses for SD1.5.

    Such files come from LoRAs extracted from LDM checkpoints (sd-scripts issue 1490 lists
    ``lora_unet_input_blocks_7_1_transformer_blocks_0_attn2_to_out_0.lora_down.weight`` / ``.alpha``).
    """
    from .ldm_names import kohya_ldm_to_diffusers

    table = kohya_ldm_to_diffusers()
    renamed = {}
    for key, value in state.items():
        name, _, rest = key.partition(".")
        if name.startswith("lora_unet_"):
            ldm = name.removeprefix("lora_unet_")
            if ldm not in table:
                raise ModelMismatchError(
                    f"{path.name} is a {LAYOUTS['kohya-ldm']} LoRA whose {name!r} names no module of SD1.5's UNet; "
                    f"it was made for another model. Pick an SD1.5 LoRA from {path.parent}."
                )
            name = "lora_unet_" + table[ldm].replace(".", "_")
        renamed[f"{name}.{rest}"] = value
    return renamed


def _read_comfyui(path: Path, state: dict[str, torch.Tensor]) -> list[LoraPatch]:
    from .ldm_names import ldm_to_diffusers_modules

    table = ldm_to_diffusers_modules()
    modules: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        suffix = next(s for s in COMFY_SUFFIXES if key.endswith(s))
        base = key[: -len(suffix)]
        if base.startswith(COMFY_UNET_PREFIX):
            ldm = base.removeprefix(COMFY_UNET_PREFIX)
            if ldm not in table:
                raise ModelMismatchError(
                    f"{path.name} is a {LAYOUTS['comfyui']} LoRA for {ldm!r}, which SD1.5's UNet does not have; it "
                    f"was made for another model. Pick an SD1.5 LoRA from {path.parent}."
                )
            target = ("unet", table[ldm])
        else:
            prefix = next(p for p in COMFY_TEXT_PREFIXES if base.startswith(p))
            target = ("text_encoder", base.removeprefix(prefix))
            if target[1] == "text_projection":
                # ComfyUI's CLIP carries a projection SD1.5 never uses (the UNet is conditioned on the hidden
                # states) and its saver writes an entry for it; diffusers' CLIPTextModel has no such layer.
                continue
        modules.setdefault(target, {})[suffix] = value
    patches = []
    for (component, module), parts in sorted(modules.items()):
        if ".diff" in parts:
            patches.append(full_difference(component, module, "weight", parts[".diff"]))
        if ".diff_b" in parts:
            patches.append(full_difference(component, module, "bias", parts[".diff_b"]))
        down, up = parts.get(".lora_down.weight"), parts.get(".lora_up.weight")
        if (down is None) != (up is None):
            raise ModelMismatchError(
                f"{path.name} has {component}.{module} without its lora_down/lora_up pair; the file is damaged. "
                f"Download or save it again into {path.parent}."
            )
        if down is not None and up is not None:
            alpha = parts.get(".alpha")
            scale = 1.0 if alpha is None else float(alpha) / down.shape[0]
            patches.append(LoraPatch(component, module, down, up, scale))
    return patches


def read_lora(path: Path) -> LoraFile:
    """Read a LoRA file and translate it into diffusers module names; refuse what is not an SD1.5 LoRA.

    The layouts read are those of :data:`LAYOUTS`. The few-step LoRAs users pair with the ``lcm``/``tcd``
    samplers come in these layouts: LCM-LoRA SD1.5 (latent-consistency/lcm-lora-sdv1-5) is kohya with diffusers
    block names, ``lora_down``/``lora_up``/``alpha``, on attention, resnet and sampler layers (stable-diffusion.cpp
    PR 955 lists it as "unet|lora_down+lora_up+alpha|hf"); Hyper-SD15 (ByteDance/Hyper-SD ``Hyper-SD15-*-lora``)
    and PCM's ``pcm_sd15_*_converted`` (G-U-N/Phased-Consistency-Model issue 2: the "converted" files are for
    A1111/ComfyUI) are kohya too; TCD-SD15 (h1t/TCD-SD15-LoRA) is loaded in diffusers' TCD guide with
    ``load_lora_weights``, the diffusers layout.

    Raises:
        ModelNotFoundError: the file is gone.
        ModelMismatchError: not a LoRA, an SDXL LoRA, an adapter type other than LoRA, or damaged.
    """
    if not path.is_file():
        raise ModelNotFoundError(f"LoRA file {path} does not exist (any more); pick another in the Hybrid LoRA node.")
    state = load_state_dict(path)
    keys = list(state)
    layout = _layout(keys)
    if layout is None:
        raise _not_a_lora(path, keys)
    _refuse_family(path, keys)
    if layout == "kohya-ldm":
        patches = _read_kohya(path, _kohya_ldm_names(path, state))
    elif layout == "kohya":
        patches = _read_kohya(path, state)
    elif layout == "comfyui":
        patches = _read_comfyui(path, state)
    elif layout == "attn-procs":
        patches = _read_diffusers(path, {f"unet.{k}": v for k, v in state.items()})
    else:
        patches = _read_diffusers(path, state)
    if not patches:
        raise _not_a_lora(path, keys)
    for patch in patches:  # a NaN fused into the weights would turn every render black
        if not all(torch.isfinite(t).all() for t in patch.tensors()):
            raise ModelMismatchError(
                f"{path.name} holds NaN or infinite values in {patch.component}.{patch.module}; the file is damaged. "
                f"Download it again into {path.parent}."
            )
    return LoraFile(path, layout, tuple(patches))


def _text_width(lora: LoraFile) -> int | None:
    """The text width a LoRA was trained for: the input width of its cross-attention keys/values."""
    for patch in lora.patches:
        if patch.component == "unet" and patch.diff is None and re.search(r"attn2\.to_[kv]$", patch.module):
            return int(patch.down.shape[1])
    return None


def _family(width: int | None) -> str:
    if width is None:
        return "another model"
    return FAMILY_BY_TEXT_WIDTH.get(width, f"a model with text width {width}")


def check_fits(lora: LoraFile, models: Mapping[str, torch.nn.Module], checkpoint: str) -> None:
    """Every patch targets an existing Linear/Conv2d of the checkpoint with matching shapes.

    Raises:
        ModelMismatchError: a module the checkpoint lacks or a shape that does not fit (another family).
    """
    unet: Any = models["unet"]
    cross = int(unet.config.cross_attention_dim)
    width = _text_width(lora)
    if width is not None and width != cross:
        raise ModelMismatchError(
            f"{lora.path.name} is a LoRA for {_family(width)} (text width {width}); the checkpoint {checkpoint} "
            f"has text width {cross}. Pick a LoRA trained for SD1.5 from {lora.path.parent}."
        )
    for component in COMPONENTS:
        modules = dict(models[component].named_modules())
        for patch in (p for p in lora.patches if p.component == component):
            problem = _misfit(patch, modules.get(module_name(models[component], patch)), checkpoint)
            if problem is None:
                continue
            trained = f" (it looks trained for {_family(width)})" if width is not None else ""
            raise ModelMismatchError(
                f"{lora.path.name} ({LAYOUTS[lora.layout]}) {problem}{trained}: it was made for another model. Pick a "
                f"LoRA trained for this SD1.5 checkpoint's family from {lora.path.parent}."
            )


LOW_RANK_TARGETS = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)


def _misfit(patch: LoraPatch, module: torch.nn.Module | None, checkpoint: str) -> str | None:
    """Why ``patch`` does not fit ``module`` (None when it does)."""
    target = f"{patch.component}.{patch.module}"
    param = getattr(module, patch.param, None) if module is not None else None
    if not isinstance(param, torch.Tensor):
        return f"targets {target}.{patch.param}, which {checkpoint} does not have"
    if patch.diff is not None:
        if tuple(patch.diff.shape) != tuple(param.shape):
            shape = tuple(param.shape)
            return f"has a {tuple(patch.diff.shape)} difference for {target}.{patch.param}, which is {shape}"
        return None
    out_in = (int(patch.up.shape[0]), int(patch.down[0].numel()))
    if not isinstance(module, LOW_RANK_TARGETS):
        return f"has a low-rank update for {target}, a {type(module).__name__} in {checkpoint}"
    if patch.up.shape[1] != patch.rank or out_in != (param.shape[0], param[0].numel()):
        shape = tuple(param.shape)
        return f"has a {out_in[0]}×{out_in[1]} update for {target}, whose weight is {shape} in {checkpoint}"
    return None


def module_name(model: torch.nn.Module, patch: LoraPatch) -> str:
    """The patch's module inside ``model``: older transformers nest the CLIP text encoder under ``text_model``."""
    if patch.component == "text_encoder" and hasattr(model, "text_model"):
        return f"text_model.{patch.module}"
    return patch.module


class LoraFusion:
    """The LoRA stack fused into one UNet + text encoder, with pristine copies of the weights it changed.

    ``apply`` is called on every ``PipelineCache.get``; with the same models and stack it costs a comparison.
    Read files are kept by file identity, so a strength change re-reads nothing.
    """

    def __init__(self) -> None:
        self._unet: weakref.ref[torch.nn.Module] | None = None
        self._stack_key: tuple[tuple[FileKey, float], ...] = ()
        self._files: dict[FileKey, LoraFile] = {}
        self._pristine: dict[tuple[str, str], torch.Tensor] = {}

    @property
    def stack(self) -> tuple[tuple[FileKey, float], ...]:
        return self._stack_key

    def forget(self) -> None:
        """Drop every reference (the models are being released); nothing is restored."""
        self._unet = None
        self._stack_key = ()
        self._files.clear()
        self._pristine.clear()

    def apply(self, models: Mapping[str, torch.nn.Module], loras: Sequence[tuple[Path, float]], checkpoint: str) -> int:
        """Make ``models`` carry exactly ``loras`` (in order, each at its strength) on top of the checkpoint.

        Every file is read and checked before any weight changes, so a bad LoRA leaves the models as they were.
        Returns how many files had to be read (0 when only strengths changed).

        Raises:
            InvalidParameterError: a strength that is NaN, infinite or beyond ±5.
            ModelNotFoundError, ModelMismatchError: a missing file, or one that is not an SD1.5 LoRA for these models.
        """
        with torch.no_grad():
            return self._apply(models, loras, checkpoint)

    def _apply(
        self, models: Mapping[str, torch.nn.Module], loras: Sequence[tuple[Path, float]], checkpoint: str
    ) -> int:
        strengths = [check_strength(s, p) for p, s in loras]
        for path, _ in loras:
            if not path.is_file():
                raise ModelNotFoundError(
                    f"LoRA file {path} does not exist (any more); pick another in the Hybrid LoRA node."
                )
        key = tuple((FileKey.of(p), s) for (p, _), s in zip(loras, strengths, strict=True))
        unet = models["unet"]
        same_models = self._unet is not None and self._unet() is unet
        if same_models and key == self._stack_key:
            return 0
        if not same_models:  # a new checkpoint: the pristine copies belong to the old one
            self.forget()
        files, reads = [], 0
        for file_key, _ in key:
            if file_key not in self._files:
                lora = read_lora(file_key.path)
                check_fits(lora, models, checkpoint)
                self._files[file_key] = lora
                reads += 1
            files.append(self._files[file_key])
        start = time.perf_counter()
        self._restore(models)
        try:
            self._fuse(models, [(f, s) for f, (_, s) in zip(files, key, strict=True)])
        except BaseException:
            self._restore(models)
            self._stack_key = ()
            raise
        self._unet = weakref.ref(unet)
        self._stack_key = key
        wanted = {k for k, _ in key}
        self._files = {k: v for k, v in self._files.items() if k in wanted}
        if loras:
            log.info(
                "Sketch RAG: fused %d LoRA(s) (%s) in %.2f s",
                len(loras),
                ", ".join(f"{k.path.name}:{s:g}" for k, s in key),
                time.perf_counter() - start,
            )
        return reads

    def _restore(self, models: Mapping[str, torch.nn.Module]) -> None:
        for (component, name), original in self._pristine.items():
            models[component].get_parameter(name).copy_(original)
        self._pristine.clear()

    def _fuse(self, models: Mapping[str, torch.nn.Module], stack: Sequence[tuple[LoraFile, float]]) -> None:
        # Sum every LoRA's delta per weight in float32, then round into the weight's dtype once.
        totals: dict[tuple[str, str], torch.Tensor] = {}
        for lora, strength in stack:
            if strength == 0.0:
                continue
            for patch in lora.patches:
                name = f"{module_name(models[patch.component], patch)}.{patch.param}"
                weight = models[patch.component].get_parameter(name)
                delta = patch.delta(weight.device) * strength
                slot = (patch.component, name)
                totals[slot] = delta if slot not in totals else totals[slot] + delta
        for (component, name), delta in totals.items():
            weight = models[component].get_parameter(name)
            self._pristine[(component, name)] = weight.detach().to("cpu", copy=True)
            fused = weight.detach().to(torch.float32) + delta.reshape(weight.shape)
            weight.copy_(fused.to(weight.dtype))
