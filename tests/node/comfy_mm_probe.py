"""Run inside a ComfyUI checkout (``cwd``): our models through ComfyUI's real model management, one JSON line out.

Called by ``test_model_management.py`` in a fresh interpreter, because importing ComfyUI's modules sets
process-wide state (its argument parser, torch flags, logging) that must not leak into the test session.

    python comfy_mm_probe.py '{"a": {spec A fields}, "b": {spec B fields}, "clip_dir": "..."}'
"""

from __future__ import annotations

import gc
import json
import sys
import weakref
from pathlib import Path
from typing import Any

import torch


def ours(mm: Any) -> list[Any]:
    """The ModuleDicts of our entries in ComfyUI's list of loaded models."""
    return [
        entry.model.model
        for entry in mm.current_loaded_models
        if entry.model is not None and isinstance(entry.model.model, torch.nn.ModuleDict)
    ]


def main() -> None:
    torch.set_num_threads(1)
    args = json.loads(sys.argv[1])
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = True  # what the test server runs with (``main.py --cpu``); set before model_management loads
    import comfy.model_management as mm

    from sketch_rag.nodes import model_memory
    from sketch_rag.rendering import loading
    from sketch_rag.rendering.model_cache import DEFAULT_CACHE, PIPELINE_ROLES
    from sketch_rag.rendering.pipeline_spec import PipelineSpec
    from sketch_rag.retrieval.embedder import ClipEmbedder

    def spec(fields: dict[str, str | None]) -> PipelineSpec:
        return PipelineSpec(**{k: (Path(v) if v else None) for k, v in fields.items()})

    report: dict[str, Any] = {}
    hybrid = DEFAULT_CACHE.get(spec(args["a"]))
    model_memory.register_with_model_management(hybrid)
    old = {"unet": weakref.ref(hybrid.pipe.unet), "vae": weakref.ref(hybrid.pipe.vae)}
    report["entries_after_a"] = [sorted(d.keys()) for d in ours(mm)]
    del hybrid

    real_load = loading.load_sd15

    def watching_load(*a: Any, **k: Any) -> Any:
        gc.collect()
        report["alive_at_b_load"] = sorted(name for name, ref in old.items() if ref() is not None)
        report["entries_at_b_load"] = len(ours(mm))
        return real_load(*a, **k)

    loading.load_sd15 = watching_load
    hybrid = DEFAULT_CACHE.get(spec(args["b"]))
    model_memory.register_with_model_management(hybrid)
    entries = ours(mm)
    report["entries_after_b"] = len(entries)
    report["entry_holds_b"] = bool(entries) and entries[0]["unet"] is hybrid.pipe.unet
    new_unet = weakref.ref(hybrid.pipe.unet)
    del hybrid, entries

    embedder = model_memory.managed_embedder(
        ClipEmbedder.load("tiny-random-clip", device=str(mm.get_torch_device()), search_dirs=[Path(args["clip_dir"])])
    )
    first = embedder.embed_texts(["ink"])
    report["entries_with_clip"] = len(ours(mm))

    mm.unload_all_models()  # what POST /free {"unload_models": true} runs
    gc.collect()
    report["after_unload"] = {
        "pipeline_roles": [r for r in PIPELINE_ROLES if DEFAULT_CACHE.generation(r) is not None],
        "unet_alive": new_unet() is not None,
        "clip_loaded": embedder.loaded,
        "entries": len(ours(mm)),
    }
    again = embedder.embed_texts(["ink"])
    report["clip_reloaded"] = {
        "loaded": embedder.loaded,
        "generation": embedder.generation,
        "same_embedding": bool((first == again).all()),
        "entries": len(ours(mm)),
    }
    sys.stdout.write(json.dumps(report) + "\n")


if __name__ == "__main__":
    main()
