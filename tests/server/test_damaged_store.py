"""A store damaged under a running ComfyUI heals on the Style Library node's next run, said on the node and once in
the log."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.client import RecordingClient
from tests.helpers.graphs import Schemas, retrieval_graph
from tests.helpers.stores import garbage, moved_aside


def test_style_library_node_heals_a_store_damaged_under_a_running_comfyui(
    comfy: RecordingClient, schemas: Schemas, comfy_base_dir: Path
) -> None:
    store = comfy_base_dir / "user" / "sketch_rag" / "damaged_store"

    def run(store_input: str) -> tuple[list[str], list[str]]:
        found = retrieval_graph(schemas, store=store_input, prompt="a great wave, woodblock print", k=3)
        run = comfy.run_recorded(found.graph, timeout=240)
        return list(run.outputs(found.retriever)["text"]), list(run.outputs(found.library).get("text", []))

    before, shown_before = run(str(store))
    assert not shown_before, "nothing healed: the loader shows nothing"
    garbage(store / "chroma" / "chroma.sqlite3")
    after, shown = run(f"{store}/")  # the same store (an edited input, so the loader runs again and syncs)
    assert after == before
    [healed] = shown  # the healing is in the node's UI output, not only in the log
    assert "was damaged" in healed and "moved it to" in healed
    [old] = moved_aside(store, "chroma")
    assert (old / "chroma.sqlite3").read_bytes()[:16] == bytes(range(16))  # the damaged file, kept
    log = (comfy_base_dir / "comfyui.log").read_text(encoding="utf-8", errors="replace")
    assert f"The style index store {store / 'chroma'} was damaged" in log and f"moved it to {old} " in log
    assert "Traceback" not in log.split(f"The style index store {store / 'chroma'}")[-1]
