"""Handing memory back once models or activations are let go: one rule for the cache and the sampler."""

from __future__ import annotations

import gc

import torch


def free_memory() -> None:
    """Collect what dropped references freed, and hand CUDA's cached blocks back."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
