"""The unit tier: the engines, the CLI and the tools, with no ComfyUI imported and no server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.tiers import mark_tier


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tier(items, Path(__file__).parent, "unit")
