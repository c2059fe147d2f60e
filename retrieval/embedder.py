"""CLIP text and image embeddings through transformers, L2-normalised, from a local folder or the Hub.

Retrieval compares a prompt (text tower) with library images (vision tower) in CLIP's shared space,
so both must come from one model, and the model's identity travels with every embedding: the
``model_key`` (folder name + weights fingerprint) keys the embedding cache and is recorded in the
index, which is how embeddings of different models are kept apart.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import InvalidParameterError, ModelNotFoundError
from ..hashing import sha256_file
from ..hub_access import hub_access, hub_offline, process_is_offline
from ..precisions import PRECISIONS

logger = logging.getLogger(__name__)

DEFAULT_HUB_MODEL = "openai/clip-vit-base-patch32"
"""The seed's model: ViT-B/32, 512-d embeddings."""

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
"""Weight files a transformers CLIP folder may hold, preferred first (safetensors is not a pickle)."""

IMAGE_BATCH_SIZE = 32
"""Images per forward pass: large enough to use the device, small enough for 4 GB GPUs."""

MAX_TEXT_CHARS = 10_000
"""Longer prompts are refused: CLIP reads 77 tokens, and a 100 kB string is a wiring mistake."""

TEXT_CACHE_SIZE = 256
"""Recent prompts whose vectors an embedder keeps (a few hundred KB at CLIP's widths)."""

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each embedded batch."""



class Embedder(Protocol):
    """What a library needs from an embedding model (``ClipEmbedder``, or a test double with known geometry)."""

    @property
    def model_key(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_images(
        self, images: Sequence[Any], *, batch_size: int = ..., progress: ProgressCallback | None = ...
    ) -> np.ndarray: ...


def auto_precision(device: str) -> str:
    """fp16 on a GPU; bf16 on a CPU with native bf16 dot products (AVX512-BF16, AMX, Arm BF16); else fp32.

    A CLIP forward pass for one prompt is bound by reading its weights, so halving them halves
    the time (a ViT-B/32 text encode: 28 → 14 ms on 2 AVX512-BF16 cores); cosine scores move
    by ~1e-4. CPUs without those instructions emulate bf16 slower than fp32, so they keep fp32,
    as do older torch builds that cannot say.
    """
    if device.startswith("cuda"):
        return "fp16"
    if device != "cpu":
        return "fp32"
    import torch

    capabilities: dict[str, Any] = dict(getattr(torch.cpu, "get_capabilities", dict)())
    native = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
    return "bf16" if any(capabilities.get(name) for name in native) else "fp32"


def is_clip_folder(path: Path) -> bool:
    """True if ``path`` looks like a transformers CLIP folder: a config plus weights plus a tokenizer."""
    return (
        (path / "config.json").is_file()
        and any((path / name).is_file() for name in WEIGHT_FILES)
        and ((path / "tokenizer.json").is_file() or (path / "vocab.json").is_file())
    )


def clip_folder_names(dirs: Sequence[Path]) -> list[str]:
    """Names of the transformers CLIP folders inside ``dirs``, sorted (what a model dropdown offers)."""
    return sorted(
        {p.name for d in map(Path, dirs) if d.is_dir() for p in d.iterdir() if p.is_dir() and is_clip_folder(p)}
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-").lower() or "model"


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def weights_fingerprint(folder: Path) -> str:
    """sha256 of the weights file, memoised by (path, size, mtime) so a reload costs nothing.

    Two folders with the same name but different weights (a fine-tune, another random init)
    must not share cached embeddings or an index; the name alone cannot tell them apart.
    """
    weights = next(folder / name for name in WEIGHT_FILES if (folder / name).is_file())
    stat = weights.stat()
    key = (str(weights.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = sha256_file(weights)
    return _FINGERPRINTS[key]


@dataclass
class ClipEmbedder:
    """A loaded CLIP model and processor that turn texts and images into unit vectors.

    Build it with :meth:`load`; the constructor takes already-loaded parts (tests, notebooks).
    """

    model: Any
    processor: Any
    name: str
    fingerprint: str
    device: str = "cpu"
    folder: Path | None = None
    """Where the weights were read from; :meth:`release` needs it to load them again."""
    on_use: Callable[[ClipEmbedder], None] | None = field(default=None, repr=False, compare=False)
    """Called before every embedding (inside ComfyUI: tell its model management the model is in use)."""
    dim: int = field(init=False)
    precision: str = field(init=False)
    generation: int = field(default=1, init=False)
    """Counts loads of the weights (1, then +1 per reload after a release): which model a registration holds."""
    _dtype: Any = field(init=False, repr=False, compare=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False, compare=False)
    """Serialises the forward passes and (re)loads: inside ComfyUI one embedder serves the running prompt's nodes
    and the Style Library routes' worker threads at once, and neither may run the model while the other does."""
    _texts: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict, init=False, repr=False, compare=False)
    """The last :data:`TEXT_CACHE_SIZE` texts' vectors, most recent last (see :meth:`embed_texts`)."""
    _texts_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    """Guards ``_texts`` only, so a cache hit never waits behind another thread's forward pass."""

    def __post_init__(self) -> None:
        self.dim = int(self.model.config.projection_dim)
        self._dtype = self.model.dtype
        dtype = str(self.model.dtype).removeprefix("torch.")
        self.precision = {"float16": "fp16", "bfloat16": "bf16"}.get(dtype, "fp32")

    @property
    def model_key(self) -> str:
        """Identity of the embedding space: readable name plus the first 16 hex of the weights' sha256."""
        return f"{_slug(self.name)}@{self.fingerprint[:16]}"

    @classmethod
    def load(
        cls,
        source: str | os.PathLike[str],
        *,
        device: str | None = None,
        precision: str = "auto",
        allow_download: bool = False,
        search_dirs: Sequence[Path] = (),
    ) -> ClipEmbedder:
        """Load CLIP from a folder (or a folder name inside ``search_dirs``), or a Hub id if allowed.

        ``precision`` is one of :data:`PRECISIONS`; ``auto`` picks by device (:func:`auto_precision`).
        The model key does not depend on it: the same weights at another precision give the same
        embeddings to ~1e-4, so a library indexed on a GPU is searched on a CPU without re-embedding.

        Raises:
            ModelNotFoundError: no such folder, and the Hub was not allowed or did not have it.
            InvalidParameterError: an unknown precision.
        """
        import torch

        if precision not in PRECISIONS:
            raise InvalidParameterError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
        folder = _resolve_model_folder(str(source), search_dirs, allow_download)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if precision == "auto":
            precision = auto_precision(device)
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        processor = _load_processor(folder)
        model = _load_model(folder, dtype, device)
        name = str(source) if not Path(source).is_dir() else Path(source).name
        return cls(
            model=model,
            processor=processor,
            name=name,
            fingerprint=weights_fingerprint(folder),
            device=device,
            folder=folder,
        )

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory (False after :meth:`release` until the next embed)."""
        return self.model is not None

    def release(self) -> None:
        """Drop the model's weights so their memory can be reclaimed; the next embed loads them again.

        This is what ComfyUI's "Unload models" calls: libraries keep their embedder, so a later query reloads
        the same weights from :attr:`folder` at the same precision, with the same :attr:`model_key`.

        Raises:
            InvalidParameterError: the embedder was built from loaded parts (no folder to load them again from).
        """
        with self._lock:
            if self.model is None:
                return
            if self.folder is None:
                raise InvalidParameterError(
                    f"The CLIP embedder {self.name!r} was built from loaded parts, so it cannot load them again "
                    "after a release; build it with ClipEmbedder.load(folder) instead."
                )
            self.model = None
            with self._texts_lock:
                self._texts.clear()
            logger.info("Sketch RAG: released the CLIP model %s", self.name)

    def _ready_model(self) -> Any:
        """The model, loaded again first if it was released; then the ``on_use`` hook (ComfyUI's bookkeeping)."""
        with self._lock:
            model = self.model
            if model is None:
                if self.folder is None:  # unreachable through release(), which refuses such embedders
                    raise InvalidParameterError(f"The CLIP embedder {self.name!r} has no model and no folder.")
                model = self.model = _load_model(self.folder, self._dtype, self.device)
                self.generation += 1
        if self.on_use is not None:
            self.on_use(self)
        return model

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 ``(len(texts), dim)`` text embeddings; CLIP reads the first 77 tokens.

        The vectors of recent single texts are kept (:data:`TEXT_CACHE_SIZE`), so a text asked again costs no
        tokenizer run and no forward pass. The tab searches the same words again as its sliders move, and on a
        busy server a forward pass waits on the renders for the interpreter and the cores (measured: a search's
        few milliseconds of work became a hundred under load). Same weights, same vectors: a release clears it.

        Raises:
            InvalidParameterError: an empty or over-long text.
        """
        import torch

        for text in texts:
            if not text.strip():
                raise InvalidParameterError("The text to embed is empty; give a prompt or a style query.")
            if len(text) > MAX_TEXT_CHARS:
                raise InvalidParameterError(
                    f"The text to embed has {len(text)} characters (starting {text[:40]!r}); the limit is "
                    f"{MAX_TEXT_CHARS}. CLIP reads only the first 77 tokens: shorten it."
                )
        one = texts[0] if len(texts) == 1 else None  # batches are the sync's, whose vectors are cached on disk
        if one is not None:
            with self._texts_lock:
                known = self._texts.get(one)
                if known is not None:
                    self._texts.move_to_end(one)
                    return known[None].copy()  # a new array: a caller cannot alter the cache
        inputs = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        model = self._ready_model()
        with self._lock, torch.inference_mode():  # one forward pass at a time: see _lock
            features = _features(model.get_text_features(**inputs))
        vectors = _normalise(features.float().cpu().numpy())
        if one is not None:
            with self._texts_lock:
                self._texts[one] = vectors[0].copy()
                while len(self._texts) > TEXT_CACHE_SIZE:
                    self._texts.popitem(last=False)
        return vectors

    def embed_images(
        self,
        images: Sequence[Any],
        *,
        batch_size: int = IMAGE_BATCH_SIZE,
        progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Unit-length float32 ``(len(images), dim)`` embeddings of PIL RGB images, in batches."""
        import torch

        out = np.zeros((len(images), self.dim), dtype=np.float32)
        if not images:
            return out
        model = self._ready_model()
        for start in range(0, len(images), batch_size):
            batch = list(images[start : start + batch_size])
            inputs = self.processor(images=batch, return_tensors="pt")
            pixels = inputs["pixel_values"].to(self.device, model.dtype)
            with self._lock, torch.inference_mode():  # one forward pass at a time: see _lock
                features = _features(model.get_image_features(pixel_values=pixels))
            out[start : start + len(batch)] = _normalise(features.float().cpu().numpy())
            if progress is not None:
                progress(min(start + batch_size, len(images)), len(images))
        return out


def _load_processor(folder: Path) -> Any:
    """CLIP's tokenizer and image processor from ``folder``, refusing a tokenizer without its vocabulary."""
    from transformers import CLIPProcessor

    with hub_offline():
        # Bandit B615 (no pinned revision): a local folder with local_files_only, nothing is fetched.
        processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)  # nosec B615
    vocab_size = len(processor.tokenizer)
    if vocab_size < 256:
        raise ModelNotFoundError(
            f"The CLIP tokenizer in {folder} has only {vocab_size} tokens, so its vocab files are missing; "
            "copy vocab.json and merges.txt (or tokenizer.json) of the model into that folder."
        )
    return processor


def _load_model(folder: Path, dtype: Any, device: str) -> Any:
    """The CLIP model's weights from ``folder``, offline, ready for inference on ``device``."""
    import time

    from transformers import CLIPModel

    start = time.perf_counter()
    with hub_offline():
        # Bandit B615 (no pinned revision): a local folder with local_files_only, nothing is fetched.
        model = CLIPModel.from_pretrained(folder, local_files_only=True, dtype=dtype)  # nosec B615
    model = model.to(device).eval()  # type: ignore[arg-type]  # transformers' stubs type .to() oddly
    logger.info("Sketch RAG: loaded CLIP model from %s in %.2f s", folder, time.perf_counter() - start)
    return model


def _features(output: Any) -> Any:
    # transformers 5 returns an output object whose pooler_output is the projected embedding; 4.x a tensor.
    return getattr(output, "pooler_output", output)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def _resolve_model_folder(source: str, search_dirs: Sequence[Path], allow_download: bool) -> Path:
    """A local folder for ``source``: a path, a folder name in ``search_dirs``, or a (cached) Hub snapshot."""
    candidates = [Path(source), *(Path(d) / source for d in search_dirs)]
    for candidate in candidates:
        if candidate.is_dir() and is_clip_folder(candidate):
            return candidate
    if "/" in source and not Path(source).is_absolute():
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.txt", "model.safetensors"]
        try:
            with hub_access(allow_download):
                # Bandit B615 (no pinned revision): a revision cannot be pinned for a repository the user names;
                # the download is opt-in (allow_download, off by default) and fetches only JSON, text and
                # safetensors, none of it code.
                snapshot = snapshot_download(source, allow_patterns=patterns, local_files_only=not allow_download)  # nosec B615
                return Path(snapshot)
        except Exception as exc:  # noqa: BLE001 - hub errors come in many types; all mean "not available"
            logger.debug("hub lookup of %s failed: %s", source, exc)
        if allow_download and process_is_offline():
            raise ModelNotFoundError(
                f"No CLIP model {source!r} on this machine, and downloading it was allowed but this ComfyUI process "
                "has HF_HUB_OFFLINE set. Unset HF_HUB_OFFLINE where ComfyUI is started, or put the model folder "
                f"into {', '.join(str(d) for d in search_dirs) or 'the models folder'}."
            )
    found = clip_folder_names(search_dirs)
    where = ", ".join(str(d) for d in search_dirs) or "(no models folder given)"
    raise ModelNotFoundError(
        f"No CLIP model {source!r}: not a transformers CLIP folder and not in {where} "
        f"(found: {', '.join(found) or 'none'}). Put a CLIP folder (config.json, model.safetensors, tokenizer "
        f"files), e.g. a download of {DEFAULT_HUB_MODEL}, into one of those folders"
        + ("." if allow_download else ", or allow downloading from the Hugging Face Hub.")
    )
