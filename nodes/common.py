"""Names shared by every node of the pack. Node ids are frozen once shipped."""

NODE_PREFIX = "SketchRAG"
CATEGORY = "Sketch RAG"
