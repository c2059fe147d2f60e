"""Model loads run with the Hub offline, and leave the process's own Hub setting as they found it."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import huggingface_hub.constants as hub_constants
import pytest

from sketch_rag.rendering import loading
from sketch_rag.rendering.model_cache import PipelineCache
from sketch_rag.rendering.pipeline_spec import PipelineSpec


def test_every_model_load_is_offline_and_the_process_setting_is_restored(
    monkeypatch: pytest.MonkeyPatch, make_spec: Callable[..., PipelineSpec]
) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)  # ComfyUI started without HF_HUB_OFFLINE
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen: list[tuple[str, bool, str | None]] = []
    real_place = loading.place

    def place(module: Any, device: Any, dtype: Any) -> Any:  # the last step of every loader
        seen.append((type(module).__name__, hub_constants.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")))
        return real_place(module, device, dtype)

    monkeypatch.setattr(loading, "place", place)
    PipelineCache().get(make_spec())
    assert sorted(name for name, _, _ in seen) == [
        "AutoencoderKL", "CLIPTextModel", "CLIPVisionModelWithProjection", "ControlNetModel", "UNet2DConditionModel"
    ]
    assert all(offline and env == "1" for _, offline, env in seen)
    assert hub_constants.HF_HUB_OFFLINE is False and "HF_HUB_OFFLINE" not in os.environ
