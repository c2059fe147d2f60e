"""The precisions a user can pick for model weights, one list for the renderer, the embedder, the nodes and the CLI.

``auto`` leaves the choice to the engine (fp16 on a GPU; see ``rendering.pipeline_spec.resolve_dtype`` and
``retrieval.embedder.auto_precision`` for the CPU rules, which differ because the two models do).
"""

from __future__ import annotations

PRECISIONS = ("auto", "fp16", "bf16", "fp32")
