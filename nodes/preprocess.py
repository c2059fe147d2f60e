"""Canny Sketch Preprocessor node: a sketch batch → ControlNet control images (Canny edges or centre lines)."""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from ..errors import InvalidParameterError
from ..rendering import (
    DEFAULT_HIGH_THRESHOLD,
    DEFAULT_LOW_THRESHOLD,
    MAX_BLUR,
    MAX_RESOLUTION,
    MAX_THICKEN,
    MODES,
    SIZE_MULTIPLE,
    CannySettings,
    sketch_to_edges,
)
from .comfy_host import Progress
from .common import CATEGORY, NODE_PREFIX
from .tensors import arrays_to_image_batch, image_batch_to_arrays


class CannySketchPreprocessor(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=f"{NODE_PREFIX}CannySketchPreprocessor",
            display_name="Canny Sketch Preprocessor",
            category=CATEGORY,
            description=(
                "Turns a line sketch into a control image (white lines on black) that locks the drawing's "
                "geometry through a ControlNet: Canny edges, or the strokes' own centre lines."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The sketch: dark-on-light or light-on-dark, any size."),
                io.Int.Input(
                    "low_threshold", default=DEFAULT_LOW_THRESHOLD, min=0, max=255, step=1,
                    tooltip="Edges weaker than this are dropped (0-255). Ignored when auto_threshold is on.",
                ),
                io.Int.Input(
                    "high_threshold", default=DEFAULT_HIGH_THRESHOLD, min=0, max=255, step=1,
                    tooltip="Edges stronger than this always count (0-255); must be at least low_threshold.",
                ),
                io.Boolean.Input(
                    "auto_threshold", default=False,
                    tooltip="Pick both thresholds from the sketch's own contrast (good for faint pencil).",
                ),
                io.Int.Input(
                    "resolution", default=0, min=0, max=MAX_RESOLUTION, step=SIZE_MULTIPLE,
                    tooltip="Short side of the edge map in pixels, aspect kept, sides multiples of 8. "
                    "0 keeps the sketch's size.",
                ),
                io.Float.Input(
                    "blur", default=0.0, min=0.0, max=MAX_BLUR, step=0.1,
                    tooltip="Gaussian smoothing (sigma, pixels) before detection; hides paper grain and hatching.",
                ),
                io.Int.Input(
                    "thicken", default=0, min=0, max=MAX_THICKEN, step=1,
                    tooltip="Grow strokes by this many pixels first; joins broken, faint pencil lines.",
                ),
                io.Combo.Input(
                    "mode", options=list(MODES), default="canny", optional=True,
                    tooltip="canny: Canny edges, which trace both sides of every stroke (each drawn line becomes "
                    "two). lines: each stroke thinned to one 1-pixel line down its middle; suits canny, "
                    "lineart and scribble ControlNets. The thresholds apply to canny only.",
                ),
            ],
            outputs=[io.Image.Output(display_name="edges", tooltip="White edges (or lines) on black, 3 channels.")],
        )

    @classmethod
    def validate_inputs(cls, low_threshold: object, high_threshold: object, mode: object = "canny") -> bool | str:
        # ComfyUI skips its own type and min/max checks for inputs named here, and does not hold an optional
        # combo to its options: check all of it, so a bad value is an HTTP 400 before the run, not a failed job.
        whole: dict[str, int] = {}
        for name, value in {"low_threshold": low_threshold, "high_threshold": high_threshold}.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
                return f"{name} must be a whole number from 0 to 255, got {value!r}."
            whole[name] = int(value)
        try:
            CannySettings(**whole, mode=str(mode)).validate()
        except InvalidParameterError as exc:
            return str(exc)
        return True

    @classmethod
    def execute(
        cls,
        image: torch.Tensor,
        low_threshold: int = DEFAULT_LOW_THRESHOLD,
        high_threshold: int = DEFAULT_HIGH_THRESHOLD,
        auto_threshold: bool = False,
        resolution: int = 0,
        blur: float = 0.0,
        thicken: int = 0,
        mode: str = "canny",
    ) -> io.NodeOutput:
        settings = CannySettings(
            low_threshold=low_threshold,
            high_threshold=high_threshold,
            auto_threshold=auto_threshold,
            resolution=resolution,
            blur=blur,
            thicken=thicken,
            mode=mode,
        )
        sketches = image_batch_to_arrays(image, "image")
        progress = Progress(len(sketches))
        edges = []
        for sketch in sketches:
            edges.append(sketch_to_edges(sketch, settings))
            progress.update(1)
        return io.NodeOutput(arrays_to_image_batch(edges))
