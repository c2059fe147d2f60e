"""The exceptions Sketch RAG raises for problems a user can fix.

Every message says what was wrong, echoes the offending value and names the fix, so
ComfyUI can show it as-is in its error dialog and the CLI can print it without a traceback.
"""


class SketchRagError(Exception):
    """Base of every error this pack raises on purpose."""


class InvalidImageError(SketchRagError, ValueError):
    """An image that cannot be used: unreadable, empty, too large, or with bad pixel values."""


class InvalidParameterError(SketchRagError, ValueError):
    """A setting outside what the operation accepts (a threshold, a size, a count)."""


class ModelNotFoundError(SketchRagError, FileNotFoundError):
    """A model file or folder that is not where it was looked for."""


class ModelMismatchError(SketchRagError, ValueError):
    """A model file that exists but is not what the operation needs (wrong family, truncated, unreadable)."""


class RenderInterruptedError(SketchRagError):
    """Sampling stopped because the caller asked it to (ComfyUI's interrupt, Ctrl-C in the CLI)."""


class LibraryError(SketchRagError, ValueError):
    """A style library that cannot be used as asked: empty, missing, locked, or a path outside its folder."""


class LibraryModelMismatchError(LibraryError, ModelMismatchError):
    """A library index built with one embedding model, opened with another (their embeddings never mix)."""


class WorkflowError(SketchRagError, ValueError):
    """A workflow file that cannot be used: not API format, a node or input the server lacks, a bad value."""


class JobFileError(SketchRagError, ValueError):
    """A batch job file (CSV or JSONL) with rows that cannot be run; the message lists every bad row."""


class PreflightError(SketchRagError):
    """A batch that cannot run on the given servers; the message lists every problem found before queueing."""


class AccessDeniedError(SketchRagError, PermissionError):
    """A path or server URL outside what this ComfyUI may touch; the message says how to allow it."""


class ConfigFileError(SketchRagError, ValueError):
    """Sketch RAG's own config file (``user/sketch_rag/config.json``) that cannot be read as documented."""


class StyleNotFoundError(LibraryError, LookupError):
    """A style id that names no style of the library (never a file path: ids are looked up, not opened)."""


class UploadTooLargeError(InvalidParameterError):
    """An upload (or a request body) larger than the server accepts; refused before it is read to the end."""


class StoreUnavailableError(LibraryError):
    """A Chroma server that accepted a call and did not answer in time; the message names the server."""


class ServerBusyError(SketchRagError):
    """A request refused for now because the server is at a limit shared by all clients (try again shortly)."""
