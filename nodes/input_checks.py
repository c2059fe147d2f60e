"""Checks ComfyUI leaves to a node: a V3 combo's value against its options.

ComfyUI 0.3.75 checks a V3 node's numbers against their declared min and max before a run, but
not a V3 combo's value against its options (``execution.validate_inputs`` compares options only
for the V1 list form), so an API prompt could send any file name or mode. A node with combos names
them in its ``validate_inputs`` (with explicit parameters: a ``**kwargs`` signature would make
ComfyUI skip every built-in check of the node) and returns :func:`unknown_options` of them.
"""

from __future__ import annotations

from typing import Any

from comfy_api.v0_0_2 import io


def combo_options(node: type[io.ComfyNode]) -> dict[str, list[Any]]:
    """Each combo input of ``node`` and its options as the schema gives them now (model lists are re-read)."""
    return {i.id: list(i.options or []) for i in node.define_schema().inputs if isinstance(i, io.Combo.Input)}


def unknown_options(node: type[io.ComfyNode], **values: Any) -> bool | str:
    """True if every given combo value is one of its options, else a message naming the input and the choices.

    ``None`` is skipped: an optional combo left out, or one fed by a link (checked when it runs).
    """
    options = combo_options(node)
    for name, value in values.items():
        allowed = options.get(name)
        if value is None or allowed is None or value in allowed:
            continue
        shown = ", ".join(repr(o) for o in allowed[:12]) + (", ..." if len(allowed) > 12 else "")
        return f"{name} is {str(value)[:200]!r}, which is not one of its options ({shown}); pick one of those."
    return True
