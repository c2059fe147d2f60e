"""Rendering engine: sketch preprocessing and the SD1.5 + ControlNet + IP-Adapter pipeline.

Plain Python with no ComfyUI imports. Submodules are imported explicitly so that using
the Canny preprocessor never imports diffusers:

- ``canny``, ``lines``: edge maps and one-pixel line maps (numpy/OpenCV/scikit-image only).
- ``hybrid_pipeline``: the warm pipeline cache and ``render``; ``render_request``: inputs and their checks.
- ``loading``, ``model_files``, ``architectures``: offline loading of single files and diffusers folders
  against the configs shipped in ``configs/``.
"""
