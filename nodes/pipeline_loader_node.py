"""The Hybrid Pipeline Loader node: dropdown names -> the engine's ``PipelineSpec`` on the ``pipeline`` socket.

It resolves each file name through ``folder_paths`` (``model_choices``), takes the device and VAE precision from
ComfyUI (``comfy_host``) and loads the spec into the engine's warm cache at once, so a bad file fails on this node
rather than on the sampler.
"""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..model_folders import CHECKPOINTS, CLIP_VISION, CONTROLNET, IPADAPTER
from ..precisions import PRECISIONS
from .comfy_host import torch_device, vae_precision_flag
from .common import CATEGORY, NODE_PREFIX
from .input_checks import unknown_options
from .model_choices import NONE_CHOICE, choices, full_path, register_ipadapter_folder
from .pipeline_socket import PipelineSpecType


class HybridPipelineLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        register_ipadapter_folder()
        return io.Schema(
            node_id=f"{NODE_PREFIX}HybridPipelineLoader",
            display_name="Hybrid Pipeline Loader (SD1.5 + ControlNet + IP-Adapter)",
            category=CATEGORY,
            description=(
                "Loads an SD1.5 checkpoint, a ControlNet (canny, lineart, scribble ...) and an IP-Adapter with its "
                "image encoder once and keeps them warm; changing one file reloads only that model."
            ),
            inputs=[
                io.Combo.Input(
                    "checkpoint",
                    options=choices(CHECKPOINTS),
                    tooltip="SD1.5 single-file checkpoint from models/checkpoints.",
                ),
                io.Combo.Input(
                    "controlnet",
                    options=choices(CONTROLNET),
                    tooltip="An SD1.5 ControlNet from models/controlnet (.pth or .safetensors): canny for the Canny "
                    "node's edges or lines, lineart/scribble for its lines mode.",
                ),
                io.Combo.Input(
                    "ip_adapter",
                    options=choices(IPADAPTER, optional=True),
                    tooltip="ip-adapter_sd15 or ip-adapter-plus_sd15 from models/ipadapter; 'none' "
                    "renders without style references.",
                ),
                io.Combo.Input(
                    "image_encoder",
                    options=choices(CLIP_VISION, optional=True),
                    tooltip="The ViT-H/14 image encoder the IP-Adapter was trained with, from "
                    "models/clip_vision; 'none' only together with ip_adapter 'none'.",
                ),
                io.Combo.Input(
                    "dtype", options=list(PRECISIONS), default="auto", tooltip="auto: fp16 on a GPU, fp32 on the CPU."
                ),
                io.Boolean.Input(
                    "attention_slicing",
                    default=False,
                    tooltip="Compute self-attention in slices: less GPU memory, a little slower.",
                ),
                io.Boolean.Input(
                    "vae_tiling",
                    default=False,
                    tooltip="Decode the image in tiles: needed for large images on small GPUs.",
                ),
            ],
            outputs=[
                PipelineSpecType.Output(display_name="pipeline", tooltip="The warm pipeline, for the Hybrid Sampler.")
            ],
        )

    @classmethod
    def validate_inputs(
        cls, checkpoint: str | None = None, controlnet: str | None = None, ip_adapter: str | None = None,
        image_encoder: str | None = None, dtype: str | None = None,
    ) -> bool | str:
        return unknown_options(cls, checkpoint=checkpoint, controlnet=controlnet, ip_adapter=ip_adapter,
                               image_encoder=image_encoder, dtype=dtype)

    @classmethod
    def execute(
        cls,
        checkpoint: str,
        controlnet: str,
        ip_adapter: str,
        image_encoder: str,
        dtype: str = "auto",
        attention_slicing: bool = False,
        vae_tiling: bool = False,
    ) -> io.NodeOutput:
        from ..rendering import DEFAULT_CACHE, PipelineSpec

        register_ipadapter_folder()
        spec = PipelineSpec(
            checkpoint=full_path(CHECKPOINTS, checkpoint),
            controlnet=full_path(CONTROLNET, controlnet),
            ip_adapter=None if ip_adapter == NONE_CHOICE else full_path(IPADAPTER, ip_adapter),
            image_encoder=None if image_encoder == NONE_CHOICE else full_path(CLIP_VISION, image_encoder),
            dtype=dtype,
            device=str(torch_device()),
            attention_slicing=attention_slicing,
            vae_tiling=vae_tiling,
            vae_precision=vae_precision_flag() or "auto",  # ComfyUI's --fp32-vae / --bf16-vae / --fp16-vae
        )
        DEFAULT_CACHE.get(spec)  # load now, so a bad file fails on the loader node, not on the sampler
        return io.NodeOutput(spec)
