"""What the Style Library sidebar tab does over HTTP, and libraries of a test's own under ComfyUI's user folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import requests

from sketch_rag.tiny_models.clip import TINY_CLIP_NAME
from tests.helpers.images import png

PREFIX = "/sketch_rag/library"
MODEL = {"model": TINY_CLIP_NAME}


class Tab:
    """What the sidebar tab does over HTTP, against one server and one library."""

    def __init__(self, url: str, **params: str) -> None:
        self.url, self.params = url, {**MODEL, **params}

    def get(self, route: str, **query: str) -> requests.Response:
        return requests.get(f"{self.url}{PREFIX}/{route}", params={**self.params, **query}, timeout=120)

    def fetch(self, relative_url: str) -> requests.Response:
        return requests.get(f"{self.url}{relative_url}", timeout=120)

    def styles(self) -> dict[str, Any]:
        response = self.get("styles")
        assert response.status_code == 200, response.text
        return response.json()

    def search(self, **body: Any) -> requests.Response:
        return requests.post(f"{self.url}{PREFIX}/search", params=self.params, json=body, timeout=120)

    def add(self, files: list[tuple[str, bytes]], **form: str) -> requests.Response:
        parts = [("file", (name, data, "application/octet-stream")) for name, data in files]
        return requests.post(f"{self.url}{PREFIX}/styles", params=self.params, files=parts, data=form, timeout=120)

    def edit(self, **body: Any) -> requests.Response:
        return requests.patch(f"{self.url}{PREFIX}/styles", params=self.params, json=body, timeout=120)

    def remove(self, item_id: str) -> requests.Response:
        return requests.delete(f"{self.url}{PREFIX}/styles", params={**self.params, "id": item_id}, timeout=120)


def own_library(base: Path, name: str, colours: dict[str, tuple[int, int, int]]) -> Path:
    folder = base / "user" / "sketch_rag" / "libraries" / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for stem, colour in colours.items():
        (folder / f"{stem}.png").write_bytes(png(colour))
    return folder
