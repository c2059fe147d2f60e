"""Every ComfyUI internal the pack uses, each detected before use: the one place to fix when ComfyUI changes.

ComfyUI promises compatibility only for its numbered V3 API (``comfy_api.v0_0_2``, which the node modules
import directly) and, in practice, ``folder_paths`` (how every pack finds models and the user folders; the
V3 API has no replacement for it). Everything else here is an internal: ``comfy.model_management``,
``comfy.model_patcher``, ``comfy.utils.ProgressBar``, ``latent_preview``, ``comfy.latent_formats``,
``comfy.cli_args`` and ``server.PromptServer``. Each buys an extra (see :data:`EXTRAS`); none is needed to
import the pack, register its nodes or render. When an internal is missing, or its signature no longer takes
the arguments we pass, the pack goes without that extra and one warning per extra says which internal is
gone and what is lost. A call that still fails with ``TypeError``/``AttributeError`` (the marks of an API
change) turns the extra off the same way instead of failing the run.

Internals are imported by name (:func:`importlib.import_module`) at the moment of use, never at import time.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Extra:
    """What one group of internals buys, and what the pack does without it."""

    name: str
    internals: str
    buys: str
    without: str


DEVICE = Extra(
    "ComfyUI's device choice",
    "comfy.model_management.get_torch_device",
    "models run on the device ComfyUI picked (--cpu, --cuda-device, DirectML, MPS)",
    "torch's own pick: CUDA when torch sees a GPU, else the CPU",
)
CANCEL = Extra(
    "the Cancel button",
    "comfy.model_management.processing_interrupted / throw_exception_if_processing_interrupted",
    "Cancel (POST /interrupt) stops a render or a library sync after the current step",
    "renders and syncs run to the end when cancelled",
)
MEMORY = Extra(
    "memory registration",
    "comfy.model_management.load_models_gpu + comfy.model_patcher.ModelPatcher / CallbacksMP.ON_DETACH",
    "ComfyUI counts our warm models when it makes room for its own and frees them on 'Unload models'",
    "our models stay loaded until the pack swaps them; ComfyUI neither counts nor frees them",
)
PROGRESS = Extra(
    "the progress bar",
    "comfy.utils.ProgressBar",
    "the node's progress bar (and the step previews drawn on it)",
    "no progress bar and no step previews",
)
PREVIEWS = Extra(
    "step previews",
    "latent_preview.get_previewer + comfy.latent_formats.SD15",
    "a preview of the image after each sampling step (with --preview-method)",
    "the progress bar without previews",
)
UPLOAD_LIMIT = Extra(
    "the --max-upload-size limit",
    "comfy.cli_args.args.max_upload_size",
    "the Style Library tab's uploads are held to ComfyUI's own upload limit",
    "uploads are held to ComfyUI's default, 100 MB",
)
VAE_FLAGS = Extra(
    "the VAE precision flags",
    "comfy.cli_args.args.fp32_vae / bf16_vae / fp16_vae / force_fp32",
    "--fp32-vae, --bf16-vae, --fp16-vae and --force-fp32 choose the precision our VAE decodes in",
    "the engine's own choice of VAE precision",
)
ROUTES = Extra(
    "the Style Library tab's routes",
    "server.PromptServer.instance.routes",
    "the sidebar tab's HTTP routes (list, search, add, edit, remove styles)",
    "no sidebar routes; the nodes work as usual",
)
EXTRAS = (DEVICE, CANCEL, MEMORY, PROGRESS, PREVIEWS, UPLOAD_LIMIT, VAE_FLAGS, ROUTES)
"""Every extra the internals buy, in the README's order."""

DEFAULT_MAX_UPLOAD_MB = 100.0
"""ComfyUI's own default for --max-upload-size."""

_lost: dict[str, str] = {}
"""Extra name -> why the pack goes without it (each logged once)."""
_failed: set[str] = set()
"""Extras turned off for the process because a call into their internals failed."""


class Unavailable(Exception):
    """An internal is missing or no longer takes our arguments; the message names it."""


def _lose(extra: Extra, why: str) -> None:
    if extra.name not in _lost:
        _lost[extra.name] = why
        log.warning("Sketch RAG goes without %s: %s. Instead: %s.", extra.name, why, extra.without)


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception as exc:  # absent, or broken by a change in its own imports: either way not usable
        raise Unavailable(f"ComfyUI's {name} cannot be imported ({type(exc).__name__}: {exc})") from exc


def _attribute(owner: Any, attr: str, where: str) -> Any:
    try:
        return getattr(owner, attr)
    except AttributeError as exc:
        raise Unavailable(f"ComfyUI's {where}.{attr} is missing") from exc


def _callable_with(func: Any, where: str, *args: Any, **kwargs: Any) -> Any:
    """``func`` if it takes these arguments (checked against its signature, not called)."""
    if not callable(func):
        raise Unavailable(f"ComfyUI's {where} is no longer callable")
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return func  # a builtin without a readable signature: trusted
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise Unavailable(f"ComfyUI's {where} has another signature {signature} ({exc})") from exc
    return func


def _probe(extra: Extra, find: Callable[[], Any]) -> Any:
    """What ``find`` returns, or None (the extra is lost, logged once) when an internal is unavailable."""
    if extra.name in _failed:
        return None
    try:
        return find()
    except Unavailable as exc:
        _lose(extra, str(exc))
        return None


def _fail(extra: Extra, exc: Exception) -> None:
    """A call into an internal failed the way an API change does: off for the process, logged once."""
    _failed.add(extra.name)
    _lose(extra, f"calling ComfyUI's {extra.internals} failed ({type(exc).__name__}: {exc})")


# -- device and interrupt --------------------------------------------------------------------------------------


def torch_device() -> torch.device:
    """The device ComfyUI runs models on; torch's own pick when ComfyUI's choice is unavailable."""

    def find() -> Any:
        mm = _module("comfy.model_management")
        return _callable_with(_attribute(mm, "get_torch_device", "comfy.model_management"),
                              "comfy.model_management.get_torch_device")

    get = _probe(DEVICE, find)
    if get is not None:
        try:
            return torch.device(get())
        except (TypeError, AttributeError, RuntimeError) as exc:
            _fail(DEVICE, exc)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _interrupt_checks() -> tuple[Callable[[], bool], Callable[[], None]] | None:
    def find() -> tuple[Callable[[], bool], Callable[[], None]]:
        mm = _module("comfy.model_management")
        where = "comfy.model_management."
        return (
            _callable_with(_attribute(mm, "processing_interrupted", where[:-1]), where + "processing_interrupted"),
            _callable_with(
                _attribute(mm, "throw_exception_if_processing_interrupted", where[:-1]),
                where + "throw_exception_if_processing_interrupted",
            ),
        )

    found: tuple[Callable[[], bool], Callable[[], None]] | None = _probe(CANCEL, find)
    return found


def interrupt_check() -> Callable[[], bool]:
    """Polled between steps: True once the user pressed Cancel (always False without the internal)."""
    checks = _interrupt_checks()
    if checks is None:
        return lambda: False
    interrupted = checks[0]

    def check() -> bool:
        try:
            return bool(interrupted())
        except (TypeError, AttributeError) as exc:
            _fail(CANCEL, exc)
            return False

    return check


def raise_if_interrupted() -> None:
    """Raise ComfyUI's own interrupt exception (its message, its handling) if the user pressed Cancel."""
    checks = _interrupt_checks()
    if checks is not None:
        try:
            checks[1]()
        except (TypeError, AttributeError) as exc:
            _fail(CANCEL, exc)


# -- progress and previews --------------------------------------------------------------------------------------


class Progress:
    """A node's progress bar in ComfyUI's UI, or nothing when ``comfy.utils.ProgressBar`` is unavailable."""

    def __init__(self, total: int) -> None:
        def find() -> Any:
            bar_class = _attribute(_module("comfy.utils"), "ProgressBar", "comfy.utils")
            _callable_with(bar_class, "comfy.utils.ProgressBar", total)
            _callable_with(_attribute(bar_class, "update_absolute", "comfy.utils.ProgressBar"),
                           "comfy.utils.ProgressBar.update_absolute", None, 1, total, None)
            return bar_class

        bar_class = _probe(PROGRESS, find)
        self._bar: Any = None
        self._done, self._total = 0, total
        if bar_class is not None:
            try:
                self._bar = bar_class(total)
            except (TypeError, AttributeError) as exc:
                _fail(PROGRESS, exc)

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def update_absolute(self, value: int, total: int, preview: Any = None) -> None:
        self._done, self._total = value, total
        if self._bar is None:
            return
        try:
            self._bar.update_absolute(value, total, preview)
        except (TypeError, AttributeError) as exc:
            _fail(PROGRESS, exc)
            self._bar = None

    def update(self, done: int) -> None:
        """``done`` more units finished."""
        self.update_absolute(self._done + done, self._total)


def _previewer() -> Any:
    """ComfyUI's latent previewer for SD1.5 latents (None when previews are off, i.e. --preview-method none)."""

    def find() -> Any:
        fmt_class = _attribute(_module("comfy.latent_formats"), "SD15", "comfy.latent_formats")
        get = _attribute(_module("latent_preview"), "get_previewer", "latent_preview")
        _callable_with(get, "latent_preview.get_previewer", torch.device("cpu"), None)
        return lambda: get(torch_device(), fmt_class())

    make = _probe(PREVIEWS, find)
    if make is None:
        return None
    try:
        previewer = make()
        if previewer is not None:
            _callable_with(getattr(previewer, "decode_latent_to_preview_image", None),
                           "LatentPreviewer.decode_latent_to_preview_image", "JPEG", None)
        return previewer
    except Unavailable as exc:
        _lose(PREVIEWS, str(exc))
    except (TypeError, AttributeError) as exc:
        _fail(PREVIEWS, exc)
    return None


def sampler_progress(total: int) -> Callable[[int, int, torch.Tensor], None]:
    """ComfyUI's progress bar with a latent preview each step, as the engine's per-step callback."""
    bar = Progress(total)
    previewer = _previewer() if bar.shown else None

    def on_step(step: int, steps: int, latents: torch.Tensor) -> None:
        nonlocal previewer
        preview = None
        if previewer is not None:
            # diffusers' latents are already scaled by the VAE factor: the space SD15's preview factors expect.
            try:
                preview = previewer.decode_latent_to_preview_image("JPEG", latents[:1].float())
            except (TypeError, AttributeError) as exc:
                _fail(PREVIEWS, exc)
                previewer = None
        bar.update_absolute(step, steps, preview)

    return on_step


# -- command-line flags -----------------------------------------------------------------------------------------


def _args(extra: Extra, *names: str) -> Any:
    def find() -> Any:
        args = _attribute(_module("comfy.cli_args"), "args", "comfy.cli_args")
        for name in names:
            _attribute(args, name, "comfy.cli_args.args")
        return args

    return _probe(extra, find)


def max_upload_bytes() -> int:
    """Bytes one upload may have: ComfyUI's own ``--max-upload-size`` (its aiohttp ``client_max_size``)."""
    args = _args(UPLOAD_LIMIT, "max_upload_size")
    megabytes = DEFAULT_MAX_UPLOAD_MB if args is None else float(args.max_upload_size)
    return round(megabytes * 1024 * 1024)


def vae_precision_flag() -> str | None:
    """The VAE precision ComfyUI's flags ask for: "fp32", "bf16", "fp16", or None for the engine's own choice.

    The same precedence as ComfyUI's ``model_management.vae_dtype``: an explicit --fp16-vae, --bf16-vae or
    --fp32-vae first (argparse keeps them exclusive), then --force-fp32, which rules out half precision.
    """
    args = _args(VAE_FLAGS, "fp16_vae", "bf16_vae", "fp32_vae", "force_fp32")
    if args is None:
        return None
    for flag, precision in (("fp16_vae", "fp16"), ("bf16_vae", "bf16"), ("fp32_vae", "fp32"), ("force_fp32", "fp32")):
        if getattr(args, flag):
            return precision
    return None


# -- server routes ----------------------------------------------------------------------------------------------


def route_table() -> Any:
    """ComfyUI's aiohttp route table (``PromptServer.instance.routes``), or None without a running server."""

    def find() -> Any:
        server_class = _attribute(_module("server"), "PromptServer", "server")
        instance = _attribute(server_class, "instance", "server.PromptServer")
        routes = _attribute(instance, "routes", "server.PromptServer.instance")
        for method in ("get", "post", "patch", "delete"):
            _callable_with(_attribute(routes, method, "server.PromptServer.instance.routes"),
                           f"server.PromptServer.instance.routes.{method}", "/path")
        return routes

    return _probe(ROUTES, find)


# -- model management -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MemoryHooks:
    load_models_gpu: Callable[..., Any]
    patcher_class: Any
    on_detach: Any


def _memory_hooks() -> _MemoryHooks | None:
    def find() -> _MemoryHooks:
        mm = _module("comfy.model_management")
        load = _callable_with(_attribute(mm, "load_models_gpu", "comfy.model_management"),
                              "comfy.model_management.load_models_gpu", [], force_full_load=True)
        patching = _module("comfy.model_patcher")
        patcher_class = _attribute(patching, "ModelPatcher", "comfy.model_patcher")
        device = torch.device("cpu")
        _callable_with(patcher_class, "comfy.model_patcher.ModelPatcher", None, load_device=device,
                       offload_device=device)
        _callable_with(_attribute(patcher_class, "add_callback", "comfy.model_patcher.ModelPatcher"),
                       "comfy.model_patcher.ModelPatcher.add_callback", None, "key", print)
        callbacks = _attribute(patching, "CallbacksMP", "comfy.model_patcher")
        on_detach = _attribute(callbacks, "ON_DETACH", "comfy.model_patcher.CallbacksMP")
        return _MemoryHooks(load, patcher_class, on_detach)

    hooks: _MemoryHooks | None = _probe(MEMORY, find)
    return hooks


class ManagedModels:
    """Our warm models as one entry in ComfyUI's model management, so ComfyUI counts and frees them like its own.

    ComfyUI keeps the models it manages in ``comfy.model_management.current_loaded_models``, which holds each
    ``ModelPatcher`` only weakly. This wraps the torch modules of one warm model (the SD1.5 pipeline, the
    Style Library's CLIP) in a patcher that only it references, and marks them in use through
    ``load_models_gpu`` before each run. ComfyUI then accounts for their memory when it makes room for other
    models, and when it unloads them (to free memory, or on ``POST /free {"unload_models": true}`` / the
    "Unload models" button) the patcher's ``ON_DETACH`` callback asks the owner to release them. Dropping the
    patcher (:meth:`drop`) removes ComfyUI's entry too: its weak reference dies with it. Without the internals
    (:data:`MEMORY`) every method does nothing.

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
        hooks = _memory_hooks()
        if hooks is None:
            self.drop()
            return
        try:
            if self._key != key or self._patcher is None:
                self.drop()
                self._patcher = self._new_patcher(hooks, dict(modules))
                self._key = key
            # load_models_gpu detaches a patcher it already holds before loading it again: not an unload.
            self._reloading = True
            try:
                hooks.load_models_gpu([self._patcher], force_full_load=True)
            finally:
                self._reloading = False
        except (TypeError, AttributeError) as exc:
            _fail(MEMORY, exc)
            self.drop()

    def drop(self) -> None:
        """Forget the models without calling ``on_unload``: their owner is replacing or has released them.

        The patcher's module references go now, and with the patcher ComfyUI's entry (it holds it weakly).
        Never call this from inside ComfyUI's own unload loop (``on_unload`` runs there): the entry's
        finalizer would edit the list ComfyUI is iterating.
        """
        patcher, self._patcher, self._key = self._patcher, None, None
        held = getattr(patcher, "model", None)
        if isinstance(held, torch.nn.ModuleDict):
            held.clear()

    def _new_patcher(self, hooks: _MemoryHooks, modules: dict[str, torch.nn.Module]) -> Any:
        wrapped = torch.nn.ModuleDict(modules)
        device = next(wrapped.parameters()).device
        patcher = hooks.patcher_class(wrapped, load_device=device, offload_device=device)

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

        patcher.add_callback(hooks.on_detach, detached)
        return patcher

