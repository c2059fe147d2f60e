"""What the ``pipeline`` socket carries between nodes: a ``PipelineSpec``, the files and options of one pipeline.

A spec is a small frozen value, not a model: it names the checkpoint, ControlNet, IP-Adapter and image encoder
files and how they run (precision, device, memory options, LoRAs). The models themselves stay in the warm
cache (``model_cache``), which turns a spec into loaded models, loading only what changed since the last spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import InvalidParameterError
from ..precisions import PRECISIONS

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
"""Torch dtypes of the :data:`~..precisions.PRECISIONS` other than ``auto``."""


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is fp16 on CUDA (SD1.5 runs fine in half precision, twice as fast) and fp32 elsewhere.

    fp16 on CPU runs but measured ~7x slower than fp32, hence never chosen automatically.

    Raises:
        InvalidParameterError: an unknown name.
    """
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise InvalidParameterError(f"dtype is {name!r}; pick one of {', '.join(PRECISIONS)}.")
    return DTYPES[name]


@dataclass(frozen=True)
class PipelineSpec:
    """Which files make the pipeline and how it runs. ``ip_adapter``/``image_encoder`` None: no style input."""

    checkpoint: Path
    controlnet: Path
    ip_adapter: Path | None = None
    image_encoder: Path | None = None
    dtype: str = "auto"
    device: str = "cpu"
    attention_slicing: bool = False
    vae_tiling: bool = False
    loras: tuple[tuple[Path, float], ...] = ()
    """LoRA files and their strengths, applied in order on top of the checkpoint (see ``lora.py``)."""
    vae_precision: str = "auto"
    """The VAE's own precision, one of :data:`~..precisions.PRECISIONS`: ``auto`` is bf16 on a CUDA GPU that has it,
    fp32 elsewhere, whatever ``dtype`` is (see ``vae_precision.py``). A host may set it from its own flags."""
