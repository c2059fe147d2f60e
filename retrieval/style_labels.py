"""A style's name and tags as the library stores them: one rule for the Add node, the tab's uploads and its edits.

A name is a caption (one line of text, not a description); tags are short lower-case words used as filters. Every
way into the library goes through these checks, so a style added by the node can be edited in the tab and back.
"""

from __future__ import annotations

from typing import Any

from ..errors import LibraryError
from .file_names import control_characters
from .folder import normalise_tags

MAX_NAME_CHARS = 200
"""Longest style name accepted: a name is a caption, not a description."""
MAX_TAGS = 64
"""Most tags one style may carry."""
MAX_TAG_CHARS = 64
"""Longest tag accepted: a tag is a word or two such as 'line art'."""


def checked_name(name: Any) -> str:
    """A style name as the library stores it: one stripped line of at most :data:`MAX_NAME_CHARS` characters.

    Raises:
        LibraryError: not a string, empty, too long, or with control characters.
    """
    if not isinstance(name, str):
        raise LibraryError(f"The style name {name!r} is not text; give a name such as 'watercolour sketch'.")
    stripped = name.strip()
    if not stripped:
        raise LibraryError("The style name is empty; give a name such as 'watercolour sketch'.")
    if control_characters(stripped):
        raise LibraryError(
            f"The style name {stripped[:80]!r} contains control characters ({', '.join(control_characters(stripped))});"
            " remove them (a name is one line of text)."
        )
    if len(stripped) > MAX_NAME_CHARS:
        raise LibraryError(
            f"The style name {stripped[:40]!r}... is {len(stripped)} characters; use at most {MAX_NAME_CHARS}."
        )
    return stripped


def checked_tags(tags: Any) -> tuple[str, ...]:
    """Tags as the library stores them (lower-case, stripped, de-duplicated), within :data:`MAX_TAGS` and
    :data:`MAX_TAG_CHARS`. A comma-separated string is split.

    Raises:
        LibraryError: not a list of strings or a comma-separated string, too many, too long, or control characters.
    """
    if isinstance(tags, list | tuple) and not all(isinstance(t, str) for t in tags):
        raise LibraryError(f"The tags {tags!r} must all be text; give e.g. ['ink', 'line art'] or 'ink, line art'.")
    cleaned = normalise_tags(tags)
    bad = [t for t in cleaned if control_characters(t) or len(t) > MAX_TAG_CHARS]
    if bad:
        raise LibraryError(
            f"The tag {bad[0][:80]!r} is longer than {MAX_TAG_CHARS} characters or has control characters; use "
            "short words such as 'ink' or 'line art'."
        )
    if len(cleaned) > MAX_TAGS:
        raise LibraryError(f"{len(cleaned)} tags were given; a style takes at most {MAX_TAGS}.")
    return cleaned


def numbered_names(name: str, count: int) -> list[str]:
    """Display names for ``count`` styles added together under one name: the name itself for one, else
    ``name 1``, ``name 2``, … (the Add node and the Style Library tab follow the same rule)."""
    return [name] if count == 1 else [f"{name} {n + 1}" for n in range(count)]
