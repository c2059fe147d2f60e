"""File names for new styles: from a display name anyone can type to a name every file system accepts.

A style's name comes from a node input, so it may hold ``/``, ``..``, NUL, hundreds of characters,
or a name Windows reserves for a device (``CON``, ``NUL``, ``COM1``: ``con.png`` cannot be created
there, whatever the extension). The file stem keeps the name's letters and digits in any script,
lower-cased, joined by ``_``, and is cut to a byte length that leaves room for a suffix and a
counter on every common file system (255 bytes a name).
"""

from __future__ import annotations

import re
import unicodedata

MAX_STEM_BYTES = 96
"""UTF-8 bytes of a generated stem; with ``_<n>`` and ``.png`` far below the usual 255-byte name limit."""
FALLBACK_STEM = "style"
_WINDOWS_DEVICES = frozenset(
    {"con", "prn", "aux", "nul", "conin", "conout"}
    | {f"{port}{n}" for port in ("com", "lpt") for n in [*"123456789", "¹", "²", "³"]}
)
"""Names Windows reserves for devices in every folder and with any extension (compared lower-case)."""
_RESERVED_STEMS = frozenset({"library"})
"""Stems whose sidecar would be the library manifest (``library.json``)."""
_NOT_WORD = re.compile(r"[\W_]+")


def style_file_stem(name: str) -> str:
    """A safe, readable file stem for a style name: ``"Ukiyo-e / 浮世絵"`` → ``ukiyo_e_浮世絵``.

    Never empty, never a path (no separators, dots or ``..``), never hidden (no leading dot),
    never a Windows device name, never the manifest's stem, at most :data:`MAX_STEM_BYTES` bytes.
    """
    words = _NOT_WORD.sub("_", unicodedata.normalize("NFC", name)).strip("_").lower()
    stem = words.encode("utf-8")[:MAX_STEM_BYTES].decode("utf-8", errors="ignore").strip("_")
    if not stem:
        return FALLBACK_STEM
    if stem in _WINDOWS_DEVICES or stem in _RESERVED_STEMS:
        return f"{stem}_{FALLBACK_STEM}"
    return stem


def control_characters(text: str) -> list[str]:
    """The control characters (NUL, newlines, escapes...) in ``text``, as ``repr``s, for an error message."""
    return sorted({repr(c) for c in text if unicodedata.category(c) == "Cc"})
