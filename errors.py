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
