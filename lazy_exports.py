"""Module ``__getattr__`` for an engine's face: its public names, each imported from its submodule on first use.

An engine's ``__init__`` names its whole public surface, but importing it must stay as cheap as the part a caller
uses: the Canny preprocessor must not load diffusers because the renderer's names sit in the same face (PEP 562).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(namespace: dict[str, Any], homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A ``__getattr__`` for the package whose globals are ``namespace``: public name -> its submodule in ``homes``.

    A name is imported once and then stored in ``namespace``, so later lookups never reach ``__getattr__``.
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{home}", package), name)
        namespace[name] = value
        return value

    return __getattr__
