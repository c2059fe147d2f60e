"""The warm model cache: one loaded model per role, swapped one at a time, released on the host's demand.

Loading SD1.5 costs seconds to tens of seconds; a render with warm models costs about a second on a GPU.
``PipelineCache`` keeps one loaded model per role (checkpoint, ControlNet, image encoder, IP-Adapter), keyed
by file identity + dtype + device, so changing one file in the loader reloads that model only, and a repeat
run loads nothing (``loads`` counts every load for tests and the benchmark). ``release()`` drops everything
so the host (ComfyUI's model management, the CLI) can get the memory back.

What is built from the loaded models (the assembled diffusers pipeline, the IP-Adapter inside the UNet) is
keyed by *load generation*: every load gets the next number of one counter. ``id()`` would not do: once the
old model is freed, CPython may give the new one the same address, and a cache keyed by it then keeps serving
the old UNet. A swap drops every reference to the old model first (its slot, the assembled pipeline, and
through :meth:`PipelineCache.add_replace_listener` the host's, e.g. ComfyUI's model patcher) and only then
loads the new one, so memory peaks at about one model's worth, not old + new.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InvalidParameterError, ModelNotFoundError
from . import loading
from .device_memory import free_memory
from .lora import LoraFusion
from .model_files import FileKey
from .pipeline_assembly import assemble, load_ip_adapter, set_memory_options, unload_ip_adapter
from .pipeline_spec import PipelineSpec, resolve_dtype
from .sampling import HybridPipeline
from .vae_precision import place_vae, resolve_vae_dtype

log = logging.getLogger(__name__)

ReplaceListener = Callable[[str], None]
"""Called with a role just before the cache drops that role's model to load its replacement."""

PIPELINE_ROLES = ("checkpoint", "controlnet", "image_encoder")
"""The roles the assembled diffusers pipeline holds a reference to."""


@dataclass(frozen=True)
class _Slot:
    key: Hashable
    value: Any
    generation: int


@dataclass(frozen=True)
class _Placement:
    """Where and in which precision a spec's models run, checked once per ``get``."""

    dtype: torch.dtype
    device: torch.device
    vae_dtype: torch.dtype

    def key(self) -> tuple[torch.dtype, str]:
        return self.dtype, str(self.device)


class PipelineCache:
    """One warm model per role, swapped individually. Thread-safe; one render at a time."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._slots: dict[str, _Slot] = {}
        self._pipe: Any = None
        self._pipe_key: Hashable = None
        self._memory_key: Hashable = None
        self._generations = itertools.count(1)
        self._listeners: list[ReplaceListener] = []
        self._loras = LoraFusion()
        self.loads: Counter[str] = Counter()

    def add_replace_listener(self, listener: ReplaceListener) -> None:
        """Have ``listener(role)`` called before a loaded model is dropped for a replacement (once per listener).

        A host that holds references to the models (ComfyUI's model patcher) drops them there, so the old
        model is really freed before the new one loads. Not called by :meth:`release`: the host that asks for
        a release is already letting go.
        """
        with self._lock:
            if listener not in self._listeners:
                self._listeners.append(listener)

    def get(self, spec: PipelineSpec) -> HybridPipeline:
        """The warm pipeline for ``spec``, loading only the models whose file, dtype or device changed.

        One step per role, in the order each depends on the last: the checkpoint (with its LoRAs), the
        ControlNet (which must match the checkpoint's text width), the image encoder, the assembled pipeline,
        the IP-Adapter (inside the assembled UNet), then the memory options over all of it.

        Raises:
            InvalidParameterError: an IP-Adapter without its image encoder or the reverse.
            ModelNotFoundError: a file is gone.
            ModelMismatchError: a file is not the SD1.5 model its role needs.
        """
        with self._lock:
            placement = _checked_placement(spec)
            checkpoint = self._checkpoint(spec, placement)
            controlnet = self._controlnet(spec, placement, checkpoint.value)
            encoder = self._image_encoder(spec, placement)
            pipe_key = (checkpoint.generation, controlnet.generation, encoder.generation if encoder else None)
            pipe = self._assembled(pipe_key, checkpoint.value, controlnet.value, encoder.value if encoder else None)
            adapter = self._ip_adapter(spec, pipe, checkpoint, encoder)
            ip_generation = adapter.generation if adapter else None
            self._apply_memory_options(spec, (pipe_key, ip_generation))
            return HybridPipeline(
                self, pipe, spec, adapter.value if adapter else None, (*pipe_key, ip_generation)
            )

    def _checkpoint(self, spec: PipelineSpec, placement: _Placement) -> _Slot:
        """The SD1.5 checkpoint's slot, its VAE in its own precision, with the spec's LoRAs fused into its weights."""

        def load(checked: Any) -> loading.Sd15Parts:
            sd = loading.load_sd15(spec.checkpoint, placement.dtype, placement.device, checked)
            place_vae(sd.vae, placement.vae_dtype, placement.dtype)
            return sd

        slot = self._slot(
            "checkpoint",
            (FileKey.of(spec.checkpoint), *placement.key(), placement.vae_dtype),
            load,
            lambda: loading.check_sd15(spec.checkpoint),
        )
        sd: loading.Sd15Parts = slot.value
        # LoRAs go into the weights, before the IP-Adapter replaces the attention processors (see lora.py).
        if lora_reads := self._loras.apply(
            {"unet": sd.unet, "text_encoder": sd.text_encoder}, spec.loras, spec.checkpoint.name
        ):
            self.loads["lora"] += lora_reads
        return slot

    def _controlnet(self, spec: PipelineSpec, placement: _Placement, sd: loading.Sd15Parts) -> _Slot:
        """The ControlNet's slot; its key holds the checkpoint's text width, which the ControlNet must share."""
        cad = int(sd.unet.config.cross_attention_dim)
        return self._slot(
            "controlnet",
            (FileKey.of(spec.controlnet), *placement.key(), cad),
            lambda state: loading.load_controlnet(spec.controlnet, placement.dtype, placement.device, cad, state),
            lambda: loading.check_controlnet(spec.controlnet, cad),
        )

    def _image_encoder(self, spec: PipelineSpec, placement: _Placement) -> _Slot | None:
        """The image encoder's slot, or None for a spec without style input (a held encoder is freed then)."""
        path = spec.image_encoder
        if path is None:
            if "image_encoder" in self._slots:
                self._drop_for_replacement("image_encoder")
            return None
        return self._slot(
            "image_encoder",
            (FileKey.of(path), *placement.key()),
            lambda state: loading.load_image_encoder(path, placement.dtype, placement.device, state),
            lambda: loading.check_image_encoder(path),
        )

    def _assembled(self, pipe_key: Hashable, sd: loading.Sd15Parts, controlnet: Any, encoder: Any) -> Any:
        """The diffusers pipeline over the held models, wired again whenever one of them is a new load."""
        if self._pipe is None or self._pipe_key != pipe_key:
            self._pipe = assemble(sd, controlnet, encoder)  # cheap: only wires the loaded models together
            self._pipe_key = pipe_key
            self._memory_key = None
        return self._pipe

    def _ip_adapter(self, spec: PipelineSpec, pipe: Any, checkpoint: _Slot, encoder: _Slot | None) -> _Slot | None:
        """The IP-Adapter's slot (its value: the adapter's info), or None: then no adapter is left in the UNet.

        The adapter lives inside the UNet (attention processors + image projection), so it is keyed by the
        UNet it was loaded into: a new checkpoint needs it loaded again, a new ControlNet does not.
        """
        path = spec.ip_adapter
        if path is None or encoder is None:
            self._slots.pop("ip_adapter", None)
            unload_ip_adapter(pipe)
            return None
        image_encoder = encoder.value
        return self._slot(
            "ip_adapter",
            (FileKey.of(path), checkpoint.generation, encoder.generation),
            lambda weights: load_ip_adapter(pipe, weights),
            lambda: loading.load_ip_adapter_weights(
                path,
                int(pipe.unet.config.cross_attention_dim),
                int(image_encoder.config.projection_dim),
                int(image_encoder.config.hidden_size),
            ),
        )

    def _apply_memory_options(self, spec: PipelineSpec, models_key: Hashable) -> None:
        """Attention slicing and VAE tiling, set again only when the models or the options changed.

        Loading an adapter replaces the attention processors, so its generation is part of ``models_key``;
        otherwise the options stay applied and a warm ``get`` (every render asks again) rebuilds nothing.
        """
        memory_key = (models_key, spec.attention_slicing, spec.vae_tiling)
        if memory_key != self._memory_key:
            set_memory_options(self._pipe, spec)
            self._memory_key = memory_key

    def _slot(
        self, role: str, key: Hashable, load: Callable[[Any], Any], check: Callable[[], Any] | None = None
    ) -> _Slot:
        """The held model for ``key``, or a fresh one: ``check()``'s result (what it read) goes to ``load``."""
        held = self._slots.get(role)
        if held is not None and held.key == key:
            return held
        del held  # no local reference may keep the old model alive through the load below
        # A wrong or damaged file fails in check(), while the warm model is still in place.
        checked = check() if check is not None else None
        self._drop_for_replacement(role)
        start = time.perf_counter()
        value = load(checked)
        self.loads[role] += 1
        source = key[0].path if isinstance(key, tuple) and isinstance(key[0], FileKey) else key
        log.info("Sketch RAG: loaded %s from %s in %.2f s", role, source, time.perf_counter() - start)
        slot = _Slot(key, value, next(self._generations))
        self._slots[role] = slot
        return slot

    def _drop_for_replacement(self, role: str) -> None:
        """Let go of ``role``'s model and of everything built from it, before its replacement is loaded."""
        if role not in self._slots:
            return
        for listener in list(self._listeners):
            listener(role)
        del self._slots[role]
        if role in PIPELINE_ROLES:
            # The assembled pipeline (and the IP-Adapter inside its UNet) references the old model.
            self._forget_pipe()
        free_memory()

    def release(self) -> None:
        """Drop every model so their memory can be reclaimed (the next ``get`` loads again)."""
        with self._lock:
            if self._slots:
                log.info("Sketch RAG: released the warm models (%s)", ", ".join(sorted(self._slots)))
            self._slots.clear()
            self._loras.forget()
            self._forget_pipe()
            free_memory()

    def _forget_pipe(self) -> None:
        self._pipe = None
        self._pipe_key = None
        self._memory_key = None

    @property
    def lock(self) -> threading.RLock:
        """Held while a model is loaded or an image rendered: one pipeline, one user at a time."""
        return self._lock

    def generation(self, role: str) -> int | None:
        """The load generation of ``role``'s held model (None: not loaded); a new load, a new number."""
        with self._lock:
            held = self._slots.get(role)
            return held.generation if held else None


def _checked_placement(spec: PipelineSpec) -> _Placement:
    """The spec's device and dtype, after refusing what no load could serve (a missing file, half a style pair).

    Raises:
        InvalidParameterError: an IP-Adapter without its image encoder or the reverse; an unknown precision.
        ModelNotFoundError: a file is gone.
    """
    device = torch.device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    vae_dtype = resolve_vae_dtype(spec.vae_precision, device)
    if (spec.ip_adapter is None) != (spec.image_encoder is None):
        raise InvalidParameterError(
            "An IP-Adapter needs its image encoder and vice versa; pick both (ip-adapter_sd15 + "
            "CLIP-ViT-H-14) or neither."
        )
    for path in (spec.checkpoint, spec.controlnet, spec.ip_adapter, spec.image_encoder):
        if path is not None and not path.exists():
            raise ModelNotFoundError(f"Model file {path} does not exist (any more); pick another in the loader.")
    return _Placement(dtype, device, vae_dtype)


DEFAULT_CACHE = PipelineCache()
"""The process-wide warm cache the nodes and the CLI share."""
