"""Rendering engine: sketch preprocessing and the SD1.5 + ControlNet + IP-Adapter pipeline.

Plain Python with no ComfyUI imports. Submodules are imported explicitly so that using
the Canny preprocessor never imports diffusers:

- ``canny``, ``images``: edge maps and image I/O (numpy/OpenCV only).
- ``hybrid_pipeline``: the warm pipeline cache and ``render``; ``render_request``: inputs and their checks.
- ``loading``, ``model_files``, ``architectures``: offline loading of single files and diffusers folders
  against the configs shipped in ``configs/``.
- ``ldm_layout``, ``tiny_sd``: writing models in the original single-file layout (tiny test models).
"""
