"""Tiny SD1.5 models in the real file formats, built once per session, and the inputs the engine tests render.

A pytest plugin (``pytest_plugins`` in ``tests/conftest.py``), so the engine tier and the node tier's independent
readers share one set of files. Renders are compared bit for bit, which holds only at a fixed torch thread count:
pin it to one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from sketch_rag.rendering.model_cache import PipelineCache
from sketch_rag.rendering.pipeline_spec import PipelineSpec
from sketch_rag.tiny_models.sd import CHECKPOINT_NAME, CONTROLNET_NAMES, IMAGE_ENCODER_NAME, IP_ADAPTER_NAMES

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sketch_rag.tiny_models.sd import write_tiny_sd_models

    root = tmp_path_factory.mktemp("tiny_sd") / "models"
    write_tiny_sd_models(root)
    return root


@pytest.fixture(scope="session")
def make_spec(models_dir: Path) -> Callable[..., PipelineSpec]:
    def make(
        ip_adapter: str | None = IP_ADAPTER_NAMES[0],
        controlnet: str = CONTROLNET_NAMES[0],
        checkpoint: Path | None = None,
        **options: object,
    ) -> PipelineSpec:
        return PipelineSpec(
            checkpoint=checkpoint or models_dir / "checkpoints" / CHECKPOINT_NAME,
            controlnet=models_dir / "controlnet" / controlnet,
            ip_adapter=None if ip_adapter is None else models_dir / "ipadapter" / ip_adapter,
            image_encoder=None if ip_adapter is None else models_dir / "clip_vision" / IMAGE_ENCODER_NAME,
            **options,
        )

    return make


@pytest.fixture(scope="session")
def cache() -> PipelineCache:
    """The shared warm cache; tests that count loads or release memory build their own."""
    return PipelineCache()


@pytest.fixture(scope="session")
def edge_image() -> np.ndarray:
    """A 64×64 canny-like map: white strokes on black (a house outline)."""
    edges = np.zeros((64, 64), np.uint8)
    edges[30, 12:52] = edges[58, 12:52] = 255
    edges[30:59, 12] = edges[30:59, 51] = 255
    for i in range(20):
        edges[30 - i, 12 + i] = edges[30 - i, 51 - i] = 255
    return edges


def gradient_style(size: int = 48, flip: bool = False) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    image = np.stack([x, y, (x + y) / 2], axis=-1).astype(np.float32)
    return image[::-1].copy() if flip else image


@pytest.fixture(scope="session")
def styles() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [gradient_style(), (rng.random((40, 56, 3)) * 255).astype(np.uint8), gradient_style(64, flip=True)]


@pytest.fixture(scope="session")
def other_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A second tiny checkpoint and ControlNet (another seed): same layout, different weights."""
    from safetensors.torch import save_file

    from sketch_rag.tiny_models.ldm_layout import controlnet_checkpoint, sd15_checkpoint
    from sketch_rag.tiny_models.sd import build_tiny_sd15

    folder = tmp_path_factory.mktemp("other_models")
    models = build_tiny_sd15(seed=1)
    paths = {
        "checkpoint": folder / "tiny-sd15-seed1.safetensors",
        "controlnet": folder / "tiny-canny-seed1.safetensors",
    }
    save_file(
        sd15_checkpoint(models["unet"], models["vae"], models["text_encoder"], dtype=torch.float16),
        str(paths["checkpoint"]),
    )
    save_file(controlnet_checkpoint(models["controlnet"], prefix="", dtype=torch.float16), str(paths["controlnet"]))
    return paths
