"""Rendering engine: sketch preprocessing and the SD1.5 + ControlNet + IP-Adapter pipeline.

Plain Python with no ComfyUI imports. Submodules are imported explicitly so that using
the Canny preprocessor never imports diffusers:

- ``canny``, ``lines``: edge maps and one-pixel line maps (numpy/OpenCV/scikit-image only).
- ``pipeline_spec``: what the ``pipeline`` socket carries; ``model_cache``: the warm models a spec is loaded into;
  ``pipeline_assembly``: the diffusers pipeline built over them; ``sampling``: ``render`` and its passes;
  ``vae_precision``: the VAE's own dtype and the fp32 redo of a non-finite decode; ``schedulers``: ComfyUI's
  samplers and their sigmas; ``render_request``: inputs and their checks.
- ``loading``, ``model_files``, ``architectures``: offline loading of single files and diffusers folders
  against the configs shipped in ``configs/``.
"""
