"""Tiny random-initialised models in the real file formats and folders, for tests, demos and CI.

Not part of either engine: the engines load these files exactly as they load real ones, and never import this
package. ``sd`` (SD1.5, ControlNet, IP-Adapter, image encoder; ``ldm_layout`` writes the original single-file
layout), ``lora`` (kohya/A1111 and diffusers LoRA files), ``clip`` (a transformers CLIP folder) and ``files``
(``sketch-rag tiny-models``: all of them into a ComfyUI ``models/`` folder).
"""
