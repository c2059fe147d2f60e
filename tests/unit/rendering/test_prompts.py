"""Prompt encoding on the tiny SD1.5: long prompts in 75-token chunks as ComfyUI builds them, and clip_skip.

diffusers' own ``encode_prompt`` (which cuts at 77 tokens) and transformers' CLIP text model are the independent
readers: a chunk must be exactly what they make of that chunk's text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from sketch_rag.errors import InvalidParameterError
from sketch_rag.rendering.model_cache import PipelineCache
from sketch_rag.rendering.pipeline_spec import PipelineSpec
from sketch_rag.rendering.prompt_embeds import CHUNK_TOKENS, MAX_PROMPT_CHUNKS, encode_prompts, encode_text
from sketch_rag.rendering.render_request import MAX_PROMPT_CHARS, RenderRequest

# Words the CLIP tokenizer keeps whole (one token each), so "the first 75 words" is exactly the first chunk.
WORDS = "red house tree river cat dog blue sky hill road green field stone wall door roof".split()


def words(count: int, start: int = 0) -> str:
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(count))


@pytest.fixture(scope="module")
def hybrid(cache: PipelineCache, make_spec: Callable[..., PipelineSpec]) -> Any:
    return cache.get(make_spec(ip_adapter=None))


def diffusers_encoding(pipe: Any, text: str, clip_skip: int | None = None) -> torch.Tensor:
    with torch.inference_mode():
        positive, _negative = pipe.encode_prompt(text, pipe.text_encoder.device, 1, False, clip_skip=clip_skip)
    return positive


def test_the_word_list_is_one_token_per_word(hybrid: Any) -> None:
    ids = hybrid.pipe.tokenizer(words(200), add_special_tokens=False)["input_ids"]
    assert len(ids) == 200


def test_a_short_prompt_is_exactly_diffusers_own_encoding(hybrid: Any) -> None:
    pipe = hybrid.pipe
    for text in ("a watercolor house", "", words(CHUNK_TOKENS)):
        with torch.inference_mode():
            ours = encode_text(pipe.tokenizer, pipe.text_encoder, text, clip_skip=1)
        assert ours.shape == (1, 77, pipe.text_encoder.config.hidden_size)
        assert torch.equal(ours, diffusers_encoding(pipe, text))


def test_a_200_token_prompt_is_three_chunks_each_the_text_encoders_own_output(hybrid: Any) -> None:
    pipe = hybrid.pipe
    with torch.inference_mode():
        ours = encode_text(pipe.tokenizer, pipe.text_encoder, words(200), clip_skip=1)
    assert ours.shape[1] == 3 * 77
    chunk_texts = [words(75, 0), words(75, 75), words(50, 150)]
    for i, text in enumerate(chunk_texts):
        assert torch.equal(ours[:, i * 77 : (i + 1) * 77], diffusers_encoding(pipe, text)), f"chunk {i}"
    # and by transformers directly: BOS, the chunk's tokens, EOS, EOS padding
    tok = pipe.tokenizer
    last = tok(chunk_texts[2], add_special_tokens=False)["input_ids"]
    ids = [tok.bos_token_id, *last, tok.eos_token_id] + [tok.eos_token_id] * (77 - len(last) - 2)
    with torch.inference_mode():
        direct = pipe.text_encoder(torch.tensor([ids])).last_hidden_state
    assert torch.equal(ours[:, 2 * 77 :], direct)


def test_the_negative_is_repeated_to_the_positives_chunks_as_comfyui_does(hybrid: Any) -> None:
    pipe = hybrid.pipe
    with torch.inference_mode():
        embeds = encode_prompts(pipe, words(200), "blurry", clip_skip=1, cfg=True)
        short_negative = encode_text(pipe.tokenizer, pipe.text_encoder, "blurry", clip_skip=1)
        assert embeds.chunks == 3 and embeds.negative is not None
        assert embeds.negative.shape == embeds.positive.shape == (1, 3 * 77, pipe.text_encoder.config.hidden_size)
        for i in range(3):
            assert torch.equal(embeds.negative[:, i * 77 : (i + 1) * 77], short_negative)
        # two and three chunks meet at six (the least common multiple), like ComfyUI's CONDCrossAttn.concat
        both = encode_prompts(pipe, words(200), words(100), clip_skip=1, cfg=True)
        assert both.chunks == 6 and both.positive.shape == both.negative.shape
        without_cfg = encode_prompts(pipe, words(200), words(100), clip_skip=1, cfg=False)
    assert without_cfg.negative is None and without_cfg.chunks == 3


def test_repeating_the_negative_does_not_change_attention(hybrid: Any) -> None:
    """Why repeating is a safe way to pad: softmax attention over keys repeated k times is attention over them once."""
    query = torch.randn(1, 10, 32, generator=torch.Generator().manual_seed(0))
    keys = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    once = torch.nn.functional.scaled_dot_product_attention(query, keys, keys)
    thrice = torch.nn.functional.scaled_dot_product_attention(query, keys.repeat(1, 3, 1), keys.repeat(1, 3, 1))
    assert torch.allclose(once, thrice, atol=1e-6)


def test_a_long_prompt_changes_the_render_beyond_its_first_77_tokens(hybrid: Any, edge_image) -> None:
    settings: dict[str, Any] = {"control_image": edge_image, "num_inference_steps": 3, "width": 64, "height": 64}
    long = hybrid.render(RenderRequest(prompt=words(200), **settings))
    cut = hybrid.render(RenderRequest(prompt=words(75), **settings))  # what diffusers alone would have kept
    assert np.isfinite(long).all()
    assert not np.array_equal(long, cut)
    assert np.array_equal(long, hybrid.render(RenderRequest(prompt=words(200), **settings)))
    # a long negative too, and a long prompt with the IP-Adapter pipeline's CFG batch
    both = hybrid.render(RenderRequest(prompt=words(200), negative_prompt=words(120, 3), **settings))
    assert np.isfinite(both).all() and not np.array_equal(both, long)


def test_clip_skip_2_is_the_penultimate_layer_through_the_final_layer_norm(hybrid: Any) -> None:
    pipe = hybrid.pipe
    text = "a watercolor house"
    with torch.inference_mode():
        last = encode_text(pipe.tokenizer, pipe.text_encoder, text, clip_skip=1)
        skipped = encode_text(pipe.tokenizer, pipe.text_encoder, text, clip_skip=2)
        ids = pipe.tokenizer(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
        hidden = pipe.text_encoder(ids, output_hidden_states=True).hidden_states
        penultimate = pipe.text_encoder.final_layer_norm(hidden[-2])
    assert len(hidden) == pipe.text_encoder.config.num_hidden_layers + 1  # the embeddings, then each layer
    assert not torch.allclose(skipped, last)
    assert torch.equal(skipped, penultimate)
    assert torch.equal(last, diffusers_encoding(pipe, text, clip_skip=None))
    # diffusers counts layers skipped (its clip_skip=1 is this clip_skip=2); 0.42.1 reaches for
    # ``text_encoder.text_model``, which transformers 5 removed, so its path only compares where it runs.
    try:
        theirs = diffusers_encoding(pipe, text, clip_skip=1)
    except AttributeError as exc:
        assert "text_model" in str(exc)
    else:
        assert torch.equal(skipped, theirs)


def test_clip_skip_2_changes_the_render(hybrid: Any, edge_image) -> None:
    settings: dict[str, Any] = {"control_image": edge_image, "num_inference_steps": 3, "width": 64, "height": 64}
    one = hybrid.render(RenderRequest(prompt="a house", **settings))
    two = hybrid.render(RenderRequest(prompt="a house", clip_skip=2, **settings))
    assert np.isfinite(two).all() and not np.array_equal(one, two)
    assert np.array_equal(one, hybrid.render(RenderRequest(prompt="a house", clip_skip=1, **settings)))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"prompt": words(MAX_PROMPT_CHUNKS * CHUNK_TOKENS + 1)}, "prompt has 601 tokens; the limit is 600"),
        ({"negative_prompt": words(700)}, "negative_prompt has 700 tokens; the limit is 600"),
        ({"prompt": "a" * (MAX_PROMPT_CHARS + 1)}, "prompt is 10001 characters long; the limit is 10000"),
    ],
)
def test_a_prompt_over_the_limit_is_refused_before_sampling_and_the_pipeline_renders_as_before(
    hybrid: Any, edge_image, changes: dict[str, Any], expected: str
) -> None:
    settings: dict[str, Any] = {"prompt": "a house", "control_image": edge_image, "num_inference_steps": 2}
    settings.update(width=64, height=64)
    good = hybrid.render(RenderRequest(**settings))
    steps: list[int] = []
    with pytest.raises(InvalidParameterError, match=expected):
        hybrid.render(RenderRequest(**{**settings, **changes}), on_step=lambda i, n, x: steps.append(i))
    assert steps == []
    assert np.array_equal(hybrid.render(RenderRequest(**settings)), good)
