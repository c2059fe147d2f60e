"""The Hybrid Sampler's ``style_weights`` input: comma-separated numbers, one per style image."""

from __future__ import annotations

from ..errors import InvalidParameterError


def parse_style_weights(text: str, count: int) -> list[float] | None:
    """One weight per style image from the sampler's ``style_weights`` text, or None (empty: weigh them equally).

    It reads what the CLIP Style Retriever's ``weights`` output writes (``0.7000, 0.3000``); a ``;`` separates as
    well as a comma.
    """
    if not text.strip():
        return None
    try:
        weights = [float(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError as exc:
        raise InvalidParameterError(
            f"style_weights {text!r} is not a comma-separated list of numbers; write e.g. '0.7, 0.3' or leave it empty."
        ) from exc
    if len(weights) != count:
        raise InvalidParameterError(
            f"style_weights has {len(weights)} value(s) for {count} style image(s); "
            "give one per image or leave it empty."
        )
    return weights
