"""Finding model files in ComfyUI-style folders and reading their tensors safely.

A missing or unreadable model is the most common way a render fails, so every error here names the folder
that was searched, lists what was found there and says what to download. Pickled formats (``.ckpt``,
``.pth``, ``.bin``) are only ever opened with ``weights_only=True``: a model file must not run code.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelMismatchError, ModelNotFoundError
from ..model_folders import CHECKPOINTS, CLIP_VISION, CONTROLNET, IPADAPTER, LORAS

MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")

# What each ComfyUI models/ subfolder should hold for this sampler, for error messages.
WANTED = {
    CHECKPOINTS: "an SD1.5 checkpoint, e.g. v1-5-pruned-emaonly.safetensors "
    "(stable-diffusion-v1-5/stable-diffusion-v1-5)",
    CONTROLNET: "an SD1.5 ControlNet (canny, lineart, scribble, softedge, tile ...), "
    "e.g. control_v11p_sd15_canny.pth (lllyasviel/ControlNet-v1-1)",
    IPADAPTER: "ip-adapter_sd15.safetensors or ip-adapter-plus_sd15.safetensors (h94/IP-Adapter, models/)",
    CLIP_VISION: "the ViT-H image encoder, h94/IP-Adapter models/image_encoder/model.safetensors "
    "(ComfyUI users name it CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors)",
    LORAS: "an SD1.5 LoRA (.safetensors, kohya/A1111 or diffusers layout)",
}


@dataclass(frozen=True)
class FileKey:
    """Identity of a model file for the warm cache: the path plus what changes when the file is replaced."""

    path: Path
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileKey:
        stat = path.stat()
        return cls(path.resolve(), stat.st_size, stat.st_mtime_ns)


def candidates(folder: Path, extensions: Iterable[str] = MODEL_EXTENSIONS) -> list[str]:
    """Model files (and diffusers folders) under ``folder``, relative, sorted: what a dropdown would list."""
    if not folder.is_dir():
        return []
    found = []
    for root, dirs, files in os.walk(folder):
        rel_root = Path(root).relative_to(folder)
        for name in dirs:
            if (Path(root) / name / "model_index.json").is_file() or (Path(root) / name / "config.json").is_file():
                found.append(str(rel_root / name))
        found.extend(str(rel_root / f) for f in files if f.lower().endswith(tuple(extensions)))
    return sorted(found)


def resolve_model(name: str | os.PathLike[str], folder: Path, kind: str) -> Path:
    """The path of model ``name``: absolute, or relative to the ComfyUI models subfolder ``folder``.

    Args:
        name: a file or diffusers folder name as listed in the dropdown, or a full path.
        folder: e.g. ``models/checkpoints``.
        kind: the subfolder's name (``checkpoints``, ``controlnet``, ``ipadapter``, ``clip_vision``), for messages.

    Raises:
        ModelNotFoundError: nothing of that name; the message lists the candidates and what to download.
    """
    path = Path(name)
    if not path.is_absolute():
        path = folder / path
    if path.exists():
        return path
    found = candidates(folder)
    listing = ", ".join(found[:20]) + (" ..." if len(found) > 20 else "") if found else "nothing"
    raise ModelNotFoundError(
        f"No {kind} model {str(name)!r} in {folder} (found: {listing}). Put {WANTED.get(kind, 'the model')} "
        f"into {folder}, or pick one of the files found."
    )


def _truncated(path: Path, exc: BaseException) -> ModelMismatchError:
    detail = str(exc).splitlines()[0][:200] if str(exc) else "no detail"
    return ModelMismatchError(
        f"{path.name} cannot be read ({type(exc).__name__}: {detail}); "
        f"the file is truncated or corrupt ({path.stat().st_size} bytes). Download it again into {path.parent}."
    )


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a single-file model, reading only the header where the format allows.

    Raises:
        ModelMismatchError: a truncated, corrupt or non-tensor file.
    """
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
        except Exception as exc:  # safetensors raises its own SafetensorError and OSError variants
            raise _truncated(path, exc) from exc
        _check_safetensors_length(path)
        return shapes
    return {k: tuple(v.shape) for k, v in load_state_dict(path).items()}


def _check_safetensors_length(path: Path) -> None:
    """safetensors opens a truncated file lazily and fails only when a tensor is read; check the length now."""
    import json
    import struct

    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if path.stat().st_size < 8 + header_len + end:
        raise ModelMismatchError(
            f"{path.name} is truncated: {path.stat().st_size} bytes on disk, its header describes "
            f"{8 + header_len + end}. Download it again into {path.parent}."
        )


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    for key, value in tree.items():
        if isinstance(value, torch.Tensor):
            flat[prefix + key] = value
        elif isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a single-file model as one flat dict (``.ckpt``'s ``state_dict`` unwrapped).

    Pickles are loaded with ``weights_only=True``; h94's nested ``.bin`` (``{"image_proj": …, "ip_adapter": …}``)
    comes out with the same flat keys as its ``.safetensors`` twin.

    Raises:
        ModelMismatchError: truncated or corrupt, or a pickle holding more than tensors.
    """
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        _check_safetensors_length(path)
        try:
            return load_file(str(path))
        except Exception as exc:
            raise _truncated(path, exc) from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for code-carrying pickles, RuntimeError/EOFError for damage
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise ModelMismatchError(
                f"{path.name} is a pickle that holds more than tensors, and loading it would run code. Use the "
                f".safetensors version of this model, or re-save its weights, into {path.parent}."
            ) from exc
        raise _truncated(path, exc) from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ModelMismatchError(
            f"{path.name} holds a {type(obj).__name__}, not a dict of tensors; it is not a model file."
        )
    return _flatten(obj)
