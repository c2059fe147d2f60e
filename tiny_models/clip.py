"""A tiny random-initialised CLIP in the real transformers format, so retrieval runs offline.

Tests, demos and CI need a full CLIP (text + vision towers, processor, tokenizer) that loads
through exactly the code path a real ``openai/clip-vit-base-patch32`` folder takes, without any
download. The tokenizer is a byte-level vocabulary with no merges: every UTF-8 byte of any
prompt (Latin or not) maps to a known token, so it never falls back to the silent 2-token
tokenizer ``CLIPTokenizer`` produces from a missing vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..model_folders import STYLE_CLIP

#: The folder name of the tiny model inside that subfolder ("tiny" marks it as not a real model).
TINY_CLIP_NAME = "tiny-random-clip"
#: The projection (embedding) dimension of the tiny model.
TINY_CLIP_DIM = 32
#: The seed the tiny weights are drawn from, so two builds give the same model.
TINY_CLIP_SEED = 0


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of GPT-2/CLIP byte-level BPE (the standard mapping)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def byte_level_vocab() -> dict[str, int]:
    """A 514-token byte-level CLIP vocabulary: each byte alone and word-final, plus start/end tokens."""
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}


def write_tiny_clip(models_dir: Path) -> list[Path]:
    """Write the tiny CLIP into ``models_dir/style_clip/tiny-random-clip`` and return the files written.

    Args:
        models_dir: a ComfyUI ``models/`` folder (created if missing).

    Returns:
        Every file written, so callers can report or clean them up.
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    target = models_dir / STYLE_CLIP / TINY_CLIP_NAME
    target.mkdir(parents=True, exist_ok=True)

    vocab = byte_level_vocab()
    vocab_file = target / "vocab.json"
    merges_file = target / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n", encoding="utf-8")
    # Loading from the two files works the same on transformers 4.x (slow tokenizer) and 5.x (tokenizers backend).
    tokenizer = CLIPTokenizer.from_pretrained(target, model_max_length=77)
    if len(tokenizer) != len(vocab):
        raise RuntimeError(f"tiny CLIP tokenizer has {len(tokenizer)} tokens, expected {len(vocab)}; files in {target}")

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
    )
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=TINY_CLIP_DIM,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(TINY_CLIP_SEED)
    try:
        model = CLIPModel(config).eval()
    finally:
        torch.random.set_rng_state(generator_state)
    model.save_pretrained(target, safe_serialization=True)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(target)
    return sorted(p for p in target.rglob("*") if p.is_file())
