"""ComfyUI glue: thin node classes over the engine packages. The only place that imports ComfyUI."""
