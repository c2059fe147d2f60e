"""Where the CLI keeps its data: ``$SKETCH_RAG_HOME``, else ``~/.sketch-rag`` (ComfyUI, models, store, styles).

The nodes keep theirs in ComfyUI's ``user/sketch_rag`` instead; see ``retrieval.locations.LibraryHome``.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME = Path(os.environ.get("SKETCH_RAG_HOME", Path.home() / ".sketch-rag"))
