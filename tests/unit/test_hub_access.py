"""Hub access is forced offline only inside our own loads; the process's setting is back afterwards."""

from __future__ import annotations

import os
import threading
import time

import huggingface_hub.constants as hub_constants
import pytest

from sketch_rag.hub_access import hub_access, hub_offline, process_is_offline


@pytest.fixture
def online_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process as ComfyUI starts it without HF_HUB_OFFLINE (the test session itself runs offline)."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_TELEMETRY", raising=False)


def test_offline_only_inside_the_scope_and_the_previous_value_is_restored(online_process: None) -> None:
    with hub_offline():
        assert process_is_offline() and os.environ["HF_HUB_OFFLINE"] == "1"
        assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert hub_constants.HF_HUB_OFFLINE is False
    assert "HF_HUB_OFFLINE" not in os.environ and "HF_HUB_DISABLE_TELEMETRY" not in os.environ


def test_a_process_that_was_offline_stays_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "yes")
    with hub_offline():
        pass
    assert hub_constants.HF_HUB_OFFLINE is True and os.environ["HF_HUB_OFFLINE"] == "yes"


def test_nested_scopes_and_an_exception_inside_restore_exactly(online_process: None) -> None:
    with pytest.raises(RuntimeError, match="load failed"), hub_offline():
        with hub_offline():
            pass
        assert process_is_offline()  # the inner scope put back the outer scope's value, not the process's
        raise RuntimeError("load failed")
    assert hub_constants.HF_HUB_OFFLINE is False and "HF_HUB_OFFLINE" not in os.environ


def test_works_as_a_decorator(online_process: None) -> None:
    @hub_offline()
    def load() -> bool:
        return process_is_offline()

    assert load() is True and load() is True
    assert hub_constants.HF_HUB_OFFLINE is False


def test_concurrent_loads_on_several_threads_leave_the_process_as_it_was(online_process: None) -> None:
    seen: list[bool] = []

    def load() -> None:
        for _ in range(20):
            with hub_offline():
                seen.append(process_is_offline())
                time.sleep(0.0005)

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [True] * 120
    assert hub_constants.HF_HUB_OFFLINE is False and "HF_HUB_OFFLINE" not in os.environ


def test_an_allowed_download_keeps_the_process_setting_and_waits_for_offline_scopes(online_process: None) -> None:
    with hub_access(allow_download=True):
        assert not process_is_offline()
    with hub_access(allow_download=False):
        assert process_is_offline()
    assert not process_is_offline()

    inside = threading.Event()
    release = threading.Event()
    observed: list[bool] = []

    def offline_load() -> None:
        with hub_offline():
            inside.set()
            release.wait(5)

    worker = threading.Thread(target=offline_load)
    worker.start()
    inside.wait(5)

    def download() -> None:
        with hub_access(allow_download=True):
            observed.append(process_is_offline())

    downloader = threading.Thread(target=download)
    downloader.start()
    time.sleep(0.05)
    assert observed == []  # still waiting for the other thread's offline load to finish
    release.set()
    worker.join()
    downloader.join()
    assert observed == [False]
