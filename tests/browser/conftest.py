"""The browser tier: Debian's chromium (headless, through Playwright) against a real ComfyUI with the pack copied in."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.tiers import mark_tier


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_tier(items, Path(__file__).parent, "browser", "comfy", "slow")
