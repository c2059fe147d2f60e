"""Benchmark: our hybrid node path against a plain diffusers ControlNet + IP-Adapter call, same models and inputs.

Builds random-initialised **full-size** SD1.5, ControlNet, ViT-H image encoder and IP-Adapter (timing and
memory do not depend on weight values), writes them as the single files ComfyUI users keep, loads them
through the engine (``PipelineCache``), then times ``HybridPipeline.render`` against
``StableDiffusionControlNetPipeline(...)(ip_adapter_image=...)`` on the very same modules.

    python bench/render.py                                     # CPU: 128 px, 4 steps, batch 1
    python bench/render.py --device cuda --size 512 --steps 20 --batch 1 4
    python bench/render.py --lcm-row --repeats 4               # + 4-step lcm against 20-step uni_pc

Ends with one JSON line: device, overhead_ratio, peak_mem_ratio, warm_loads, s_per_image (+ details); with
``--lcm-row`` also ``lcm_row``: the few-step path (lcm, 4 steps, CFG 1 = no CFG batch) against the default
(uni_pc, 20 steps, CFG 7.5) at the same size through the engine (goal: >= 4x faster), and against plain
diffusers with the same ``LCMScheduler`` doing the same 4 steps (our overhead). Plain diffusers runs the very
scheduler the engine builds (``schedulers.make_scheduler``: ComfyUI's sigmas), so only the pipeline code differs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from sketch_rag.rendering import architectures as arch  # noqa: E402
from sketch_rag.rendering.model_cache import PipelineCache  # noqa: E402
from sketch_rag.rendering.pipeline_spec import PipelineSpec  # noqa: E402
from sketch_rag.rendering.render_request import IpAdapterMode, RenderRequest  # noqa: E402
from sketch_rag.rendering.schedulers import make_scheduler  # noqa: E402
from sketch_rag.tiny_models.ldm_layout import controlnet_checkpoint, sd15_checkpoint  # noqa: E402
from sketch_rag.tiny_models.sd import cross_attention_widths  # noqa: E402

SD15 = arch.Sd15Widths((320, 640, 1280, 1280), 768, (128, 256, 512, 512), 768, 3072, 12, 49408, 77)


def write_full_size_models(root: Path) -> PipelineSpec:
    """Random full-size models as fp16 single files (checkpoint, ControlNet, IP-Adapter, ViT-H encoder)."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    for sub in ("checkpoints", "controlnet", "ipadapter", "clip_vision"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    unet = UNet2DConditionModel.from_config(arch.unet_config(SD15.unet_channels, SD15.cross_attention_dim))
    vae = AutoencoderKL.from_config(arch.vae_config(SD15.vae_channels))
    text = CLIPTextModel(CLIPTextConfig(**arch.text_encoder_config(SD15)))
    save_file(sd15_checkpoint(unet, vae, text, dtype=torch.float16), str(root / "checkpoints" / "sd15.safetensors"))
    del vae, text
    controlnet = ControlNetModel.from_unet(unet)
    save_file(
        controlnet_checkpoint(controlnet, prefix="", dtype=torch.float16),
        str(root / "controlnet" / "control_sd15_canny.safetensors"),
    )
    del controlnet
    ip: dict[str, torch.Tensor] = {
        "image_proj.proj.weight": torch.randn(768 * 4, 1024) * 0.02,
        "image_proj.proj.bias": torch.zeros(768 * 4),
        "image_proj.norm.weight": torch.ones(768),
        "image_proj.norm.bias": torch.zeros(768),
    }
    for index, hidden in cross_attention_widths(unet).items():
        ip[f"ip_adapter.{index}.to_k_ip.weight"] = torch.randn(hidden, 768) * 0.02
        ip[f"ip_adapter.{index}.to_v_ip.weight"] = torch.randn(hidden, 768) * 0.02
    save_file({k: v.half() for k, v in ip.items()}, str(root / "ipadapter" / "ip-adapter_sd15.safetensors"))
    del unet
    gc.collect()
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**arch.read_config(arch.IMAGE_ENCODER_CONFIG_DIR)))
    save_file(
        {k: v.half().contiguous() for k, v in vision.state_dict().items()},
        str(root / "clip_vision" / "CLIP-ViT-H-14.safetensors"),
    )
    del vision
    gc.collect()
    return PipelineSpec(
        root / "checkpoints" / "sd15.safetensors",
        root / "controlnet" / "control_sd15_canny.safetensors",
        root / "ipadapter" / "ip-adapter_sd15.safetensors",
        root / "clip_vision" / "CLIP-ViT-H-14.safetensors",
    )


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator on a GPU, sampled process RSS on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            self._process = psutil.Process()
            self._base = self._process.memory_info().rss
            self._top = self._base
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._top = max(self._top, self._process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = self._top - self._base


def measure(run: Callable[[], Any], device: torch.device) -> tuple[float, int]:
    """Seconds and peak memory of one warm run."""
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, memory.peak


def side_by_side(
    ours: Callable[[], Any], plain: Callable[[], Any], device: torch.device, repeats: int
) -> dict[str, Any]:
    """Interleaved pairs (ours/plain, then plain/ours, ...) so drift of the machine hits both sides alike.

    The ratio is the median of the per-pair ratios; ``ratio_halves`` is that median over the first and the
    second half of the pairs, i.e. two runs' worth of agreement inside one run.
    """
    ours_s, plain_s, ratios, ours_mem, plain_mem = [], [], [], [], []
    for i in range(repeats):
        if i % 2:
            p, pm = measure(plain, device)
            o, om = measure(ours, device)
        else:
            o, om = measure(ours, device)
            p, pm = measure(plain, device)
        ours_s.append(o)
        plain_s.append(p)
        ratios.append(o / p)
        ours_mem.append(om)
        plain_mem.append(pm)
    half = max(1, repeats // 2)
    return {
        "ours_s": statistics.median(ours_s),
        "plain_s": statistics.median(plain_s),
        "ratio": statistics.median(ratios),
        "ratio_halves": [round(statistics.median(ratios[:half]), 4), round(statistics.median(ratios[half:]), 4)],
        "ratio_spread": round(max(ratios) - min(ratios), 4),
        "ours_mem": max(ours_mem),
        "plain_mem": max(plain_mem),
    }


def bench_request(edges: np.ndarray, style: np.ndarray, size: int, steps: int, **changes: Any) -> RenderRequest:
    """The one render every row times (the plain-diffusers side mirrors these settings), with a row's changes."""
    return RenderRequest(
        "a watercolor house", edges, [style], negative_prompt="blurry", num_inference_steps=steps, width=size,
        height=size, ip_adapter_scale=0.8, ip_adapter_mode=IpAdapterMode.FULL, **changes,
    )


def plain_render(plain: Any, edges: np.ndarray, style: np.ndarray, size: int, steps: int, *, guidance: float = 7.5,
                 batch: int = 1) -> Any:
    """The plain diffusers pipeline doing what :func:`bench_request` asks of ours (full IP-Adapter at 0.8)."""
    from PIL import Image

    plain.set_ip_adapter_scale(0.8)
    with torch.inference_mode():
        return plain(
            "a watercolor house",
            negative_prompt="blurry",
            image=Image.fromarray(edges).convert("RGB"),
            ip_adapter_image=Image.fromarray(style),
            num_inference_steps=steps,
            height=size,
            width=size,
            guidance_scale=guidance,
            controlnet_conditioning_scale=1.5,
            num_images_per_prompt=batch,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        ).images


HIRES_UPSCALE = 1.5
HIRES_DENOISE = 0.5


def hires_row(
    cache: PipelineCache, spec: PipelineSpec, plain: Any, edges: np.ndarray, style: np.ndarray, size: int,
    steps: int, repeats: int, device: torch.device,
) -> dict[str, Any]:
    """Base render + 1.5x hires pass: ours against plain diffusers doing the same two passes, and against base."""
    from diffusers import StableDiffusionControlNetImg2ImgPipeline
    from PIL import Image

    from sketch_rag.rendering.refine import hires_size

    control = Image.fromarray(edges).convert("RGB")
    big = hires_size(size, size, HIRES_UPSCALE)
    img2img: Any = StableDiffusionControlNetImg2ImgPipeline(**plain.components, requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=True)
    request = bench_request(edges, style, size, steps, upscale=HIRES_UPSCALE, hires_denoise=HIRES_DENOISE)

    def ours() -> Any:
        return cache.get(spec).render(request, on_step=lambda i, n, x: None, should_stop=lambda: False)

    def reference() -> Any:
        common: dict[str, Any] = {
            "negative_prompt": "blurry", "ip_adapter_image": Image.fromarray(style), "guidance_scale": 7.5,
            "controlnet_conditioning_scale": 1.5, "num_inference_steps": steps, "output_type": "pil",
        }
        with torch.inference_mode():
            plain.set_ip_adapter_scale(0.8)
            plain.scheduler = make_scheduler("uni_pc", plain.scheduler.config, 0)
            base = plain("a watercolor house", image=control, height=size, width=size,
                         generator=torch.Generator().manual_seed(0), **common).images
            img2img.scheduler = make_scheduler("uni_pc", plain.scheduler.config, 0)
            return img2img("a watercolor house", image=[b.resize(big, Image.Resampling.LANCZOS) for b in base],
                           control_image=control, strength=HIRES_DENOISE, height=big[1], width=big[0],
                           generator=torch.Generator().manual_seed(0), **common).images

    ours()
    reference()
    pair = side_by_side(ours, reference, device, repeats)
    return {
        "size": list(big),
        "ours_s": round(pair["ours_s"], 3),
        "plain_s": round(pair["plain_s"], 3),
        "overhead_ratio": round(pair["ratio"], 4),
        "overhead_ratio_halves": pair["ratio_halves"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=None, help="square side (default: 128 on CPU, 512 on CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="default: 4 on CPU, 20 on CUDA")
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=8, help="interleaved pairs per batch size")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--no-hires", dest="hires", action="store_false", help="skip the hires 1.5x row")
    parser.add_argument("--models-dir", type=Path, default=None, help="reuse full-size files written here before")
    parser.add_argument("--lcm-row", action="store_true", help="add the 4-step lcm vs 20-step uni_pc row")
    parser.add_argument("--lcm-guidance", type=float, default=1.0, help="CFG of the lcm side (1 skips CFG)")
    args = parser.parse_args()
    device = torch.device(args.device)
    size = args.size or (512 if device.type == "cuda" else 128)
    steps = args.steps or (20 if device.type == "cuda" else 4)

    tmp = None
    root = args.models_dir
    if root is None or not (root / "checkpoints" / "sd15.safetensors").exists():
        if root is None:
            tmp = tempfile.TemporaryDirectory(prefix="sketch-rag-bench-")
            root = Path(tmp.name)
        start = time.perf_counter()
        spec = write_full_size_models(root)
        print(f"wrote full-size random models in {time.perf_counter() - start:.1f} s")
    spec = PipelineSpec(
        root / "checkpoints" / "sd15.safetensors",
        root / "controlnet" / "control_sd15_canny.safetensors",
        root / "ipadapter" / "ip-adapter_sd15.safetensors",
        root / "clip_vision" / "CLIP-ViT-H-14.safetensors",
        dtype=args.dtype,
        device=str(device),
    )

    cache = PipelineCache()
    start = time.perf_counter()
    hybrid = cache.get(spec)
    load_s = time.perf_counter() - start
    print(f"cold load through the engine: {load_s:.1f} s, loads {dict(cache.loads)}")

    edges = np.zeros((size, size), np.uint8)
    edges[size // 4 : 3 * size // 4, size // 4] = edges[size // 4, size // 4 : 3 * size // 4] = 255
    style = (np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8)

    from diffusers import StableDiffusionControlNetPipeline

    p = hybrid.pipe
    plain: Any = StableDiffusionControlNetPipeline(
        vae=p.vae,
        text_encoder=p.text_encoder,
        tokenizer=p.tokenizer,
        unet=p.unet,
        controlnet=p.controlnet,
        scheduler=make_scheduler("uni_pc", p.scheduler.config, 0),
        safety_checker=None,
        feature_extractor=p.feature_extractor,
        image_encoder=p.image_encoder,
        requires_safety_checker=False,
    )
    plain.set_progress_bar_config(disable=True)

    results: dict[str, Any] = {}
    for batch in args.batch:
        request = bench_request(edges, style, size, steps, num_images_per_prompt=batch)

        def ours(request: RenderRequest = request) -> Any:
            return cache.get(spec).render(request, on_step=lambda i, n, x: None, should_stop=lambda: False)

        def reference(batch: int = batch) -> Any:
            return plain_render(plain, edges, style, size, steps, batch=batch)

        ours()  # warm-up (kernels, allocator); also the "second run" whose loads we count
        loads_before = sum(cache.loads.values())
        reference()
        pair = side_by_side(ours, reference, device, args.repeats)
        warm_loads = sum(cache.loads.values()) - loads_before
        results[str(batch)] = {
            "ours_s": round(pair["ours_s"], 3),
            "plain_s": round(pair["plain_s"], 3),
            "overhead_ratio": round(pair["ratio"], 4),
            "overhead_ratio_halves": pair["ratio_halves"],
            "overhead_ratio_spread": pair["ratio_spread"],
            "peak_mem_ours_mb": round(pair["ours_mem"] / 2**20, 1),
            "peak_mem_plain_mb": round(pair["plain_mem"] / 2**20, 1),
            "peak_mem_ratio": round(pair["ours_mem"] / max(pair["plain_mem"], 1), 4),
            "warm_loads": warm_loads,
            "s_per_image": round(pair["ours_s"] / batch, 3),
            "images_per_s": round(batch / pair["ours_s"], 3),
        }
        print(f"batch {batch}: {results[str(batch)]}")

    lcm_row = (
        few_step_row(cache, spec, plain, edges, style, size, args.lcm_guidance, device, args.repeats)
        if args.lcm_row
        else None
    )

    hires = hires_row(cache, spec, plain, edges, style, size, steps, args.repeats, device) if args.hires else None
    first = results[str(args.batch[0])]
    if hires:
        hires["vs_base"] = round(hires["ours_s"] / first["ours_s"], 3)
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(device)
                if device.type == "cuda"
                else f"cpu ({torch.get_num_threads()} threads)",
                "overhead_ratio": first["overhead_ratio"],
                "overhead_ratio_halves": first["overhead_ratio_halves"],
                "peak_mem_ratio": first["peak_mem_ratio"],
                "warm_loads": max(r["warm_loads"] for r in results.values()),
                "s_per_image": first["s_per_image"],
                "size": size,
                "steps": steps,
                "dtype": str(hybrid.pipe.unet.dtype).replace("torch.", ""),
                "cold_load_s": round(load_s, 2),
                "by_batch": results,
                **({"lcm_row": lcm_row} if lcm_row is not None else {}),
                **({"hires": hires} if hires else {}),
            }
        )
    )
    if tmp is not None:
        tmp.cleanup()


LCM_STEPS, DEFAULT_RENDER_STEPS = 4, 20


def few_step_row(
    cache: PipelineCache,
    spec: PipelineSpec,
    plain: Any,
    edges: np.ndarray,
    style: np.ndarray,
    size: int,
    lcm_guidance: float,
    device: torch.device,
    repeats: int,
) -> dict[str, Any]:
    """4-step lcm vs 20-step uni_pc through the engine, and 4-step lcm ours vs plain diffusers, side by side."""

    def engine(sampler: str, steps: int, guidance: float) -> Callable[[], Any]:
        request = bench_request(edges, style, size, steps, guidance_scale=guidance, sampler=sampler)
        return lambda: cache.get(spec).render(request, on_step=lambda i, n, x: None, should_stop=lambda: False)

    lcm = engine("lcm", LCM_STEPS, lcm_guidance)
    unipc = engine("uni_pc", DEFAULT_RENDER_STEPS, 7.5)

    def plain_lcm() -> Any:
        plain.scheduler = make_scheduler("lcm", plain.scheduler.config, 0)
        return plain_render(plain, edges, style, size, LCM_STEPS, guidance=lcm_guidance)

    lcm(), unipc(), plain_lcm()  # warm-up of each path
    speed = side_by_side(lcm, unipc, device, repeats)
    overhead = side_by_side(lcm, plain_lcm, device, repeats)
    row = {
        "lcm_steps": LCM_STEPS,
        "lcm_guidance": lcm_guidance,
        "uni_pc_steps": DEFAULT_RENDER_STEPS,
        "uni_pc_guidance": 7.5,
        "lcm_s": round(speed["ours_s"], 3),
        "uni_pc_s": round(speed["plain_s"], 3),
        "speedup": round(1 / speed["ratio"], 3),  # median of per-pair uni_pc/lcm
        "speedup_halves": [round(1 / r, 3) for r in speed["ratio_halves"]],
        "plain_lcm_s": round(overhead["plain_s"], 3),
        "overhead_ratio": round(overhead["ratio"], 4),
        "overhead_ratio_halves": overhead["ratio_halves"],
    }
    print(f"lcm row: {row}")
    return row


if __name__ == "__main__":
    main()
