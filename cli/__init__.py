"""The ``sketch-rag`` command line: run a local ComfyUI with the pack, and the engine without one."""
