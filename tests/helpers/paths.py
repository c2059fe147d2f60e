"""Where the tests find the repository, the installed ComfyUI and the shipped assets."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMFYUI_HOME = REPO / ".comfyui"
"""What ``./dev.sh setup`` installs ComfyUI into (``sketch-rag install-comfyui .comfyui``)."""
COMFYUI_DIR = COMFYUI_HOME / "ComfyUI"
COMFYUI_INSTALLED = (COMFYUI_DIR / "main.py").is_file()
NO_COMFYUI = (f"The node tier imports the installed ComfyUI, and there is none in {COMFYUI_DIR}: "
              "run ./dev.sh setup (or sketch-rag install-comfyui .comfyui), or deselect the tier with -m 'not node'.")
STYLE_LIBRARY = REPO / "style_library"
