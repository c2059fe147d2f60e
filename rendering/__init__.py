"""Rendering engine: sketch preprocessing and (later) the diffusers pipeline.

Plain Python with no ComfyUI imports. Submodules are imported explicitly so that using
the Canny preprocessor never imports diffusers.
"""
