"""Every shipped node's schema is locked: ids, inputs, outputs and defaults match a committed snapshot.

A change that would break saved workflows (a renamed input, a removed node, a new default) fails
here until the snapshot is regenerated on purpose:

    SKETCH_RAG_UPDATE_SNAPSHOTS=1 ./dev.sh test tests/server/test_node_schemas.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sketch_rag.cli.comfyui_client import ComfyClient

SNAPSHOT = Path(__file__).parent / "snapshots" / "node_schemas.json"
PREFIX = "SketchRAG"
# What a saved workflow depends on; display text (descriptions, tooltips) may change freely.
LOCKED_KEYS = ("input", "input_order", "output", "output_is_list", "output_name", "output_node", "category")


def locked_schema(entry: dict[str, Any]) -> dict[str, Any]:
    schema = {key: entry.get(key) for key in LOCKED_KEYS}
    for section in (schema["input"] or {}).values():
        for spec in section.values():
            if len(spec) > 1 and isinstance(spec[1], dict):
                spec[1] = {k: v for k, v in spec[1].items() if k != "tooltip"}
    return json.loads(json.dumps(schema))


def test_node_schemas_match_the_snapshot(comfy: ComfyClient) -> None:
    current = {
        node_id: locked_schema(entry)
        for node_id, entry in sorted(comfy.object_info().items())
        if node_id.startswith(PREFIX)
    }
    assert current, "the server lists none of our nodes"
    if os.environ.get("SKETCH_RAG_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    shipped = json.loads(SNAPSHOT.read_text())
    assert sorted(current) == sorted(shipped), "nodes added or removed: regenerate the snapshot on purpose"
    for node_id, schema in shipped.items():
        assert current[node_id] == schema, f"{node_id} changed its schema"
