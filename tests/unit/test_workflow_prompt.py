"""The bundled sketch_to_render asks for the prompt once: one string node feeds the retriever and the sampler, in
the UI file, in its API copy, and through ``sketch-rag batch``'s binding of a job's ``prompt``."""

from __future__ import annotations

from sketch_rag.cli.workflows import bind, load_api_workflow, load_ui_workflow, nodes_titled, targets

RETRIEVER, SAMPLER = "SketchRAGClipStyleRetriever", "SketchRAGHybridSampler"


def test_the_ui_template_wires_one_prompt_node_into_both_prompt_inputs() -> None:
    ui = load_ui_workflow("sketch_to_render")
    (prompt,) = [n for n in ui["nodes"] if n.get("title") == "prompt"]
    links = {link[0]: link for link in ui["links"]}  # id, from node, from slot, to node, to slot, type
    fed = {}
    for node in ui["nodes"]:
        for slot in node.get("inputs", []):
            if slot["name"] == "prompt":
                link = links[slot["link"]]
                assert link[3] == node["id"] and node["inputs"][link[4]] is slot
                fed[node["type"]] = link[1]
    assert fed == {RETRIEVER: prompt["id"], SAMPLER: prompt["id"]}
    assert prompt["outputs"][0]["links"] == sorted(slot["link"] for n in ui["nodes"] for slot in n.get("inputs", [])
                                                   if slot["name"] == "prompt")


def test_the_api_copy_wires_the_same_prompt_node_into_both() -> None:
    api = load_api_workflow("sketch_to_render")
    (prompt_id,) = nodes_titled(api, "PrimitiveStringMultiline", "prompt")
    for class_type in (RETRIEVER, SAMPLER):
        (node_id,) = nodes_titled(api, class_type)
        assert api[node_id]["inputs"]["prompt"] == [prompt_id, 0], class_type


def test_a_jobs_prompt_is_written_once_and_reaches_both_through_the_links() -> None:
    api = load_api_workflow("sketch_to_render")
    (prompt_id,) = nodes_titled(api, "PrimitiveStringMultiline", "prompt")
    assert targets(api, "prompt") == [(prompt_id, "value")]
    bound = bind(api, {"prompt": "a windmill, ukiyo-e print"})
    assert bound[prompt_id]["inputs"]["value"] == "a windmill, ukiyo-e print"
    assert {k: v for k, v in bound.items() if k != prompt_id} == {k: v for k, v in api.items() if k != prompt_id}


def test_a_separate_style_query_replaces_only_the_retrievers_link() -> None:
    api = load_api_workflow("sketch_to_render")
    (prompt_id,) = nodes_titled(api, "PrimitiveStringMultiline", "prompt")
    (retriever,), (sampler,) = nodes_titled(api, RETRIEVER), nodes_titled(api, SAMPLER)
    bound = bind(api, {"prompt": "a windmill", "style_query": "ukiyo-e woodblock print"})
    assert bound[retriever]["inputs"]["prompt"] == "ukiyo-e woodblock print"
    assert bound[sampler]["inputs"]["prompt"] == [prompt_id, 0]
    assert bound[prompt_id]["inputs"]["value"] == "a windmill"


def test_a_workflow_with_the_prompt_typed_into_each_node_gets_it_written_into_each() -> None:
    api = load_api_workflow("sketch_to_render_core_controlnet")
    places = targets(api, "prompt")
    assert places and all(not isinstance(api[n]["inputs"][i], list) for n, i in places)
    bound = bind(api, {"prompt": "a lighthouse"})
    assert all(bound[n]["inputs"][i] == "a lighthouse" for n, i in places)
