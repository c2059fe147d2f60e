"""What the tiers share: configs, folders outside ComfyUI, images and pixels, render requests, graphs and a client
that records what ComfyUI ran. Import the module you need (``from tests.helpers.images import png``)."""
