"""Style retrieval engine: CLIP embeddings of a style library searched in ChromaDB. No ComfyUI imports."""
