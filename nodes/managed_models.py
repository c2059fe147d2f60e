"""Our warm models as entries in ComfyUI's model management, so ComfyUI counts and frees them like its own.

ComfyUI keeps the models it manages in ``comfy.model_management.current_loaded_models``, which holds each
``ModelPatcher`` only weakly. A :class:`ManagedModels` wraps the torch modules of one warm model (the SD1.5
pipeline, the Style Library's CLIP) in a patcher that only it references, and marks them in use through
``load_models_gpu`` before each run. ComfyUI then accounts for their memory when it makes room for other
models, and when it unloads them (to free memory, or on ``POST /free {"unload_models": true}`` / the "Unload
models" button) the patcher's ``ON_DETACH`` callback asks the owner to release them. Dropping the patcher
(:meth:`ManagedModels.drop`) removes ComfyUI's entry too: its weak reference dies with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import torch

log = logging.getLogger(__name__)


class ManagedModels:
    """One ``ModelPatcher`` standing for a set of our modules in ComfyUI's model management.

    Args:
        label: what the models are, for log lines ("the hybrid pipeline").
        on_unload: called when ComfyUI unloads the models; the owner drops its own references there.
    """

    def __init__(self, label: str, on_unload: Callable[[], None]) -> None:
        self.label = label
        self._on_unload = on_unload
        self._patcher: Any = None
        self._key: Hashable = None
        self._reloading = False

    def use(self, key: Hashable, modules: Mapping[str, torch.nn.Module]) -> None:
        """Tell ComfyUI that ``modules`` (identified by ``key``, e.g. their load generation) are about to run.

        A new key replaces the previous entry (its patcher is dropped first); the same key only marks the
        models as in use, which also moves them to the front of ComfyUI's unload order.
        """
        import comfy.model_management as mm

        if self._key != key or self._patcher is None:
            self.drop()
            self._patcher = self._new_patcher(dict(modules))
            self._key = key
        # load_models_gpu detaches a patcher it already holds before loading it again: not an unload.
        self._reloading = True
        try:
            mm.load_models_gpu([self._patcher], force_full_load=True)
        finally:
            self._reloading = False

    def drop(self) -> None:
        """Forget the models without calling ``on_unload``: their owner is replacing or has released them.

        The patcher's module references go now, and with the patcher ComfyUI's entry (it holds it weakly).
        Never call this from inside ComfyUI's own unload loop (``on_unload`` runs there): the entry's
        finalizer would edit the list ComfyUI is iterating.
        """
        patcher, self._patcher, self._key = self._patcher, None, None
        if patcher is not None:
            held: torch.nn.ModuleDict = patcher.model
            held.clear()

    def _new_patcher(self, modules: dict[str, torch.nn.Module]) -> Any:
        from comfy.model_patcher import CallbacksMP, ModelPatcher

        wrapped = torch.nn.ModuleDict(modules)
        device = next(wrapped.parameters()).device
        patcher = ModelPatcher(wrapped, load_device=device, offload_device=device)

        def detached(p: Any, _unpatch_all: bool) -> None:
            # A patcher being replaced or reloaded is not an unload of the current models.
            if self._reloading or p is not self._patcher:
                return
            log.info("Sketch RAG: ComfyUI unloads %s", self.label)
            self._on_unload()
            held: torch.nn.ModuleDict = p.model
            held.clear()  # the ModuleDict's references too, or the weights would outlive the release
            # The patcher itself stays referenced until the next use(): dropping it here, inside ComfyUI's
            # free_memory loop, would let its finalizer edit the list ComfyUI is iterating.
            self._key = None

        patcher.add_callback(CallbacksMP.ON_DETACH, detached)
        return patcher
