"""Prompt embeddings as ComfyUI builds them for SD1.5: long prompts in 75-token chunks, and ``clip_skip``.

CLIP's text encoder sees 77 positions (BOS + 75 tokens + EOS). diffusers cuts a longer prompt there, with only a
log line; ComfyUI instead splits the tokens into chunks of 75, wraps each in BOS/EOS (padded with EOS to 77),
encodes each chunk on its own and concatenates the results along the sequence. The UNet's cross-attention takes
any sequence length, so the whole prompt steers the render. A prompt of up to 75 tokens is one chunk, token for
token what diffusers' own ``encode_prompt`` encodes, so a short prompt renders exactly as diffusers renders it.

Positive and negative must have the same length to be batched for CFG. ComfyUI repeats each one to the least
common multiple of their lengths (``comfy/conds.py``, ``CONDCrossAttn.concat``): attention over keys repeated k
times equals attention over the keys once, so repeating changes nothing but the shape. We do the same.

``clip_skip`` follows A1111/Civitai usage: 1 = the text encoder's last layer (SD1.5's default), 2 = the
penultimate layer, which many anime-style checkpoints were trained on. As in ComfyUI and diffusers, the
skipped-to layer still goes through the encoder's final layer norm. Mapping: our ``clip_skip=N`` is ComfyUI's
``CLIPSetLastLayer(stop_at_clip_layer=-N)`` and diffusers' ``clip_skip=N-1`` (None for 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InvalidParameterError
from .render_request import CLIP_SKIP_CHOICES

CHUNK_TOKENS = 75  # 77 positions minus BOS and EOS
MAX_PROMPT_CHUNKS = 8  # 600 tokens; beyond that the positive/negative repeat to their LCM grows cross-attention a lot


@dataclass(frozen=True)
class PromptEmbeds:
    """``prompt_embeds`` (1, 77·n, dim) and, with CFG, ``negative_prompt_embeds`` of the same shape."""

    positive: torch.Tensor
    negative: torch.Tensor | None
    chunks: int


def token_chunks(tokenizer: Any, text: str, what: str = "prompt") -> list[list[int]]:
    """The prompt's token ids (no BOS/EOS) in chunks of at most 75; an empty prompt is one empty chunk.

    Raises:
        InvalidParameterError: more than ``MAX_PROMPT_CHUNKS`` chunks.
    """
    ids: list[int] = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    chunks = [ids[i : i + CHUNK_TOKENS] for i in range(0, len(ids), CHUNK_TOKENS)] or [[]]
    if len(chunks) > MAX_PROMPT_CHUNKS:
        raise InvalidParameterError(
            f"{what} has {len(ids)} tokens; the limit is {MAX_PROMPT_CHUNKS * CHUNK_TOKENS} ({MAX_PROMPT_CHUNKS} "
            f"chunks of {CHUNK_TOKENS}). Shorten it: CLIP weighs every chunk alike, so extra chunks dilute the prompt."
        )
    return chunks


def chunk_input_ids(tokenizer: Any, chunk: list[int]) -> torch.Tensor:
    """(1, 77) ids: BOS + chunk + EOS, padded with the tokenizer's pad token (EOS for SD1.5) as diffusers does."""
    width = CHUNK_TOKENS + 2
    ids = [tokenizer.bos_token_id, *chunk, tokenizer.eos_token_id]
    ids += [tokenizer.pad_token_id] * (width - len(ids))
    return torch.tensor([ids], dtype=torch.long)


def encode_chunk(text_encoder: Any, input_ids: torch.Tensor, clip_skip: int) -> torch.Tensor:
    """(1, 77, dim) hidden states of one chunk: the last layer, or with ``clip_skip=2`` the penultimate one.

    No attention mask, like diffusers for SD1.5's encoder (its config has no ``use_attention_mask``) and ComfyUI:
    the causal mask keeps the padding from reaching the prompt's tokens.
    """
    ids = input_ids.to(text_encoder.device)
    if clip_skip == 1:
        return text_encoder(ids, attention_mask=None)[0]
    hidden = text_encoder(ids, attention_mask=None, output_hidden_states=True).hidden_states[-clip_skip]
    # transformers 5 flattened CLIPTextModel (no ``text_model`` any more), which is why diffusers 0.42's own
    # ``clip_skip`` raises AttributeError there; 4.x keeps the norm one level down.
    final_layer_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
    return final_layer_norm(hidden)


def encode_text(tokenizer: Any, text_encoder: Any, text: str, clip_skip: int, what: str = "prompt") -> torch.Tensor:
    """(1, 77·n, dim): each 75-token chunk encoded on its own, concatenated along the sequence.

    Raises:
        InvalidParameterError: a prompt over the chunk limit, or a ``clip_skip`` other than 1 or 2.
    """
    if clip_skip not in CLIP_SKIP_CHOICES or isinstance(clip_skip, bool):
        raise InvalidParameterError(f"clip_skip is {clip_skip!r}; use 1 (last CLIP layer) or 2 (penultimate).")
    chunks = token_chunks(tokenizer, text, what)
    encoded = [encode_chunk(text_encoder, chunk_input_ids(tokenizer, chunk), clip_skip) for chunk in chunks]
    return encoded[0] if len(encoded) == 1 else torch.cat(encoded, dim=1)


def repeat_to(embeds: torch.Tensor, chunks: int) -> torch.Tensor:
    """``embeds`` repeated along the sequence to ``chunks`` chunks (a whole multiple of its own count)."""
    own = embeds.shape[1] // (CHUNK_TOKENS + 2)
    return embeds if own == chunks else embeds.repeat(1, chunks // own, 1)


def encode_prompts(pipe: Any, prompt: str, negative_prompt: str, clip_skip: int, cfg: bool) -> PromptEmbeds:
    """Both prompts for the pipeline call, the negative only when CFG runs (guidance_scale > 1).

    Raises:
        InvalidParameterError: a prompt over the chunk limit, or a bad ``clip_skip``.
    """
    positive = encode_text(pipe.tokenizer, pipe.text_encoder, prompt, clip_skip, "prompt")
    if not cfg:
        return PromptEmbeds(positive, None, positive.shape[1] // (CHUNK_TOKENS + 2))
    negative = encode_text(pipe.tokenizer, pipe.text_encoder, negative_prompt, clip_skip, "negative_prompt")
    width = CHUNK_TOKENS + 2
    chunks = math.lcm(positive.shape[1] // width, negative.shape[1] // width)
    return PromptEmbeds(repeat_to(positive, chunks), repeat_to(negative, chunks), chunks)
