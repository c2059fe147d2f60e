"""Every input of every node of the pack is held to its declared range and options by the real server.

Walks ``/object_info``, so an input added later is covered without a new test: for each numeric
input, a value just below its min and just above its max, and for each combo an option it does not
list, ``POST /prompt`` must answer HTTP 400 naming that input before anything runs; the same prompt
with the input's default must not name it (so the 400 is about the value, not the rest of the graph).

Inputs that take links (IMAGE, the pack's own types) are left unconnected (a node with none gets a
malformed link on a text or switch input), so every prompt here is refused and nothing runs: those
errors name other inputs.
A node that is not an output node is validated through a core ``PreviewAny`` after it.
"""

from __future__ import annotations

from typing import Any

import requests

from sketch_rag.cli.comfyui_client import ComfyClient
from sketch_rag.cli.comfyui_server import ComfyServer

PREFIX = "SketchRAG"
UNKNOWN = "no such option (sketch_rag test)"


def _options(spec: list[Any]) -> list[Any] | None:
    kind, extra = spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return list(extra.get("options", []))
    return None


def _widget_value(spec: list[Any]) -> Any:
    """The declared default of a widget input, or None for one that takes a link."""
    kind, extra = spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    options = _options(spec)
    if options is not None:
        return extra.get("default", options[0] if options else None)
    if kind in ("INT", "FLOAT", "STRING", "BOOLEAN"):
        return extra.get("default", {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[kind])
    return None


def _bad_values(spec: list[Any]) -> list[Any]:
    kind, extra = spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if _options(spec) is not None:
        return [UNKNOWN]
    if kind not in ("INT", "FLOAT"):
        return []
    step = 1 if kind == "INT" else 1e-3
    bad = []
    if "min" in extra:
        bad.append(extra["min"] - step)
    if "max" in extra:
        bad.append(extra["max"] + step)
    return bad


def _cases(info: dict[str, dict[str, Any]]) -> list[tuple[str, str, Any]]:
    return [
        (node_id, name, value)
        for node_id, entry in sorted(info.items()) if node_id.startswith(PREFIX)
        for section in ("required", "optional")
        for name, spec in sorted(entry["input"].get(section, {}).items())
        for value in _bad_values(spec)
    ]


def _prompt(entry: dict[str, Any], node_id: str, name: str, value: Any) -> dict[str, Any]:
    inputs, links, plain = {}, [], []
    for section in ("required", "optional"):
        for input_name, spec in entry["input"].get(section, {}).items():
            default = _widget_value(spec)
            if default is None:
                links.append(section == "required")
            else:
                inputs[input_name] = default
                if spec[0] in ("STRING", "BOOLEAN") and input_name != name:
                    plain.append(input_name)
    inputs[name] = value
    if not any(links):
        # Nothing required is missing: a text or switch input gets a malformed link, so the prompt is refused
        # whatever the value under test and nothing runs; that error names the other input, never this one.
        inputs[plain[0]] = ["1", 0, 0]
    prompt: dict[str, Any] = {"1": {"class_type": node_id, "inputs": inputs}}
    if not entry.get("output_node"):
        prompt["2"] = {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}
    return prompt


def _errors_naming(response: requests.Response, name: str) -> list[dict[str, Any]]:
    if response.status_code != 400:
        return []
    node = response.json().get("node_errors", {}).get("1", {})
    return [e for e in node.get("errors", [])
            if e.get("extra_info", {}).get("input_name") == name or e.get("details", "").split(" ")[0] == name]


def test_every_numeric_input_outside_its_range_and_every_unknown_option_is_refused_before_running(
    comfy: ComfyClient, comfy_server: ComfyServer
) -> None:
    info = comfy.object_info()
    cases = _cases(info)
    assert len({c[0] for c in cases}) >= 5, "the server lists too few of our nodes' inputs"
    missed = []
    for node_id, name, value in cases:
        entry = info[node_id]
        bad = requests.post(f"{comfy_server.url}/prompt", json={"prompt": _prompt(entry, node_id, name, value)},
                            timeout=60)
        spec = entry["input"].get("required", {}).get(name) or entry["input"]["optional"][name]
        good = requests.post(f"{comfy_server.url}/prompt",
                             json={"prompt": _prompt(entry, node_id, name, _widget_value(spec))}, timeout=60)
        assert bad.status_code == 400 and good.status_code == 400, (bad.text[:300], good.text[:300])
        if not _errors_naming(bad, name) or _errors_naming(good, name):
            missed.append(f"{node_id}.{name}={value!r}: {bad.status_code} {bad.text[:200]}")
    assert not missed, "accepted or refused for the wrong reason:\n" + "\n".join(missed)
