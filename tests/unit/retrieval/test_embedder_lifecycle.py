"""The CLIP embedder can give its weights back and load them again, and reaches the Hub only when allowed."""

from __future__ import annotations

import gc
import os
import weakref
from pathlib import Path
from typing import Any

import huggingface_hub
import huggingface_hub.constants as hub_constants
import numpy as np
import pytest

from sketch_rag.errors import InvalidParameterError, ModelNotFoundError
from sketch_rag.model_folders import STYLE_CLIP
from sketch_rag.retrieval.embedder import ClipEmbedder


@pytest.fixture
def clip_dir(tiny_models_dir: Path) -> Path:
    return tiny_models_dir / STYLE_CLIP


def test_a_released_embedder_reloads_on_its_next_use_and_embeds_the_same(clip_dir: Path) -> None:
    embedder = ClipEmbedder.load("tiny-random-clip", device="cpu", precision="fp32", search_dirs=[clip_dir])
    uses: list[int] = []
    embedder.on_use = lambda e: uses.append(e.generation)
    before = embedder.embed_texts(["a woodblock print"])
    weights = weakref.ref(embedder.model)
    key = embedder.model_key

    embedder.release()
    gc.collect()
    assert weights() is None and not embedder.loaded
    again = embedder.embed_texts(["a woodblock print"])
    assert embedder.loaded and embedder.generation == 2 and embedder.model_key == key
    assert np.array_equal(before, again)
    assert uses == [1, 2]  # the hook sees every use, with the generation of the weights it is about to run


def test_an_embedder_built_from_parts_refuses_a_release_it_could_not_undo(tiny_clip: ClipEmbedder) -> None:
    parts = ClipEmbedder(tiny_clip.model, tiny_clip.processor, "parts", tiny_clip.fingerprint)
    with pytest.raises(InvalidParameterError, match="built from loaded parts"):
        parts.release()
    assert parts.loaded


@pytest.fixture
def online_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, clip_dir: Path) -> list[dict[str, Any]]:
    """snapshot_download that records the Hub setting it ran under and 'downloads' the tiny CLIP."""
    calls: list[dict[str, Any]] = []

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo": repo_id, "offline": hub_constants.HF_HUB_OFFLINE, **kwargs})
        if kwargs.get("local_files_only") or hub_constants.HF_HUB_OFFLINE:
            raise huggingface_hub.errors.LocalEntryNotFoundError(f"{repo_id} is not in the cache")
        return str(clip_dir / "tiny-random-clip")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_allow_download_really_loads_online_and_the_process_stays_as_it_was(
    online_process: None, fake_hub: list[dict[str, Any]]
) -> None:
    embedder = ClipEmbedder.load("someone/tiny-clip", device="cpu", allow_download=True)
    assert embedder.name == "someone/tiny-clip" and embedder.dim > 0
    assert fake_hub == [{"repo": "someone/tiny-clip", "offline": False, "local_files_only": False,
                         "allow_patterns": ["*.json", "*.txt", "model.safetensors"]}]
    assert hub_constants.HF_HUB_OFFLINE is False and "HF_HUB_OFFLINE" not in os.environ


def test_without_allow_download_the_lookup_is_offline_and_the_process_stays_as_it_was(
    online_process: None, fake_hub: list[dict[str, Any]], clip_dir: Path
) -> None:
    with pytest.raises(ModelNotFoundError, match="allow downloading"):
        ClipEmbedder.load("someone/tiny-clip", device="cpu", search_dirs=[clip_dir])
    assert [(c["offline"], c["local_files_only"]) for c in fake_hub] == [(True, True)]
    assert hub_constants.HF_HUB_OFFLINE is False and "HF_HUB_OFFLINE" not in os.environ


def test_allow_download_does_not_override_an_offline_server(
    monkeypatch: pytest.MonkeyPatch, fake_hub: list[dict[str, Any]], clip_dir: Path
) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # whoever started ComfyUI set HF_HUB_OFFLINE=1
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE set"):
        ClipEmbedder.load("someone/tiny-clip", device="cpu", allow_download=True, search_dirs=[clip_dir])
    assert fake_hub[0]["offline"] is True and hub_constants.HF_HUB_OFFLINE is True


def test_a_local_load_runs_offline_and_restores_the_process_setting(
    online_process: None, monkeypatch: pytest.MonkeyPatch, clip_dir: Path
) -> None:
    from transformers import CLIPModel

    seen: list[bool] = []
    real = CLIPModel.from_pretrained.__func__  # type: ignore[attr-defined]

    def recording(cls: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(hub_constants.HF_HUB_OFFLINE)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(CLIPModel, "from_pretrained", classmethod(recording))
    ClipEmbedder.load("tiny-random-clip", device="cpu", search_dirs=[clip_dir])
    assert seen == [True]
    assert hub_constants.HF_HUB_OFFLINE is False and "HF_HUB_OFFLINE" not in os.environ


def test_a_prompt_asked_again_is_answered_without_a_forward_pass_and_the_same(clip_dir: Path) -> None:
    embedder = ClipEmbedder.load("tiny-random-clip", device="cpu", precision="fp32", search_dirs=[clip_dir])
    forwards: list[int] = []
    embedder.on_use = lambda e: forwards.append(e.generation)
    first = embedder.embed_texts(["a woodblock print"])
    first[0, 0] += 1.0  # a caller changing its copy changes nothing for the next caller
    again = embedder.embed_texts(["a woodblock print"])
    assert forwards == [1] and np.array_equal(again, embedder.embed_texts(["a woodblock print"]))
    assert abs(float(np.linalg.norm(again[0])) - 1.0) < 1e-5 and again[0, 0] != first[0, 0]
    alone = embedder.embed_texts(["a watercolor"])
    assert len(forwards) == 2 and not np.array_equal(alone, again)
    batch = embedder.embed_texts(["a woodblock print", "a watercolor"])  # a batch always runs the model
    assert len(forwards) == 3 and np.allclose(batch, np.concatenate([again, alone]), atol=1e-5)
