"""``sketch-rag``: the command-line entry point.

Each subcommand is a thin shell over the engine or the ComfyUI harness; errors the user can fix
are printed as one line (no traceback) with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import SketchRagError
from ..rendering import MODES
from .batch_cmd import register as register_batch
from .demo_cmd import register as register_demo
from .library_cmd import register as register_library
from .paths import HOME
from .render_cmd import register as register_render


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return int(args.run(args) or 0)
    except SketchRagError as exc:
        print(f"sketch-rag: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sketch-rag", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    register_library(commands)
    register_render(commands)
    register_batch(commands)
    register_demo(commands)

    serve = commands.add_parser("serve", help="start a local ComfyUI with the Sketch RAG nodes (installs if missing)")
    serve.add_argument("--comfyui-dir", type=Path, default=HOME / "comfyui",
                       help="where ComfyUI lives or is installed (default: %(default)s)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8188, help="port (default: %(default)s)")
    serve.add_argument("--cpu", action="store_true", help="run ComfyUI on the CPU even if a GPU is present")
    serve.set_defaults(run=_serve)

    install = commands.add_parser("install-comfyui", help="install ComfyUI into a folder and this environment")
    install.add_argument("target", type=Path, help="folder that will hold ComfyUI/")
    install.set_defaults(run=_install_comfyui)

    canny = commands.add_parser("canny", help="write the control image of a sketch: Canny edges or centre lines")
    canny.add_argument("sketch", type=Path)
    canny.add_argument("--out", type=Path, required=True, help="output PNG")
    canny.add_argument("--low-threshold", type=int, default=None)
    canny.add_argument("--high-threshold", type=int, default=None)
    canny.add_argument("--auto-threshold", action="store_true")
    canny.add_argument("--resolution", type=int, default=0, help="short side in pixels; 0 keeps the size")
    canny.add_argument("--blur", type=float, default=0.0)
    canny.add_argument("--thicken", type=int, default=0)
    canny.add_argument("--mode", choices=MODES, default="canny",
                       help="canny: both sides of every stroke; lines: each stroke's 1-pixel centre line "
                       "(default: %(default)s)")
    canny.set_defaults(run=_canny)

    tiny = commands.add_parser(
        "tiny-models", help="write tiny random-initialised models into a ComfyUI models/ folder (offline demos, tests)"
    )
    tiny.add_argument("models_dir", type=Path, help="a ComfyUI models/ folder")
    tiny.set_defaults(run=_tiny_models)
    return parser


def _tiny_models(args: argparse.Namespace) -> int:
    from ..tiny_models.files import write_tiny_models

    for path in write_tiny_models(args.models_dir):
        print(path)
    return 0


def _install_comfyui(args: argparse.Namespace) -> int:
    from .comfyui_install import install_comfyui
    from .comfyui_server import link_pack

    comfy_dir = install_comfyui(args.target)
    link_pack(comfy_dir)
    print(comfy_dir)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .comfyui_install import install_comfyui
    from .comfyui_server import link_pack, start_server

    comfy_dir = install_comfyui(args.comfyui_dir)
    link_pack(comfy_dir)
    # A service manager's SIGTERM must stop ComfyUI too, not orphan it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server = start_server(comfy_dir, host=args.host, port=args.port, cpu=args.cpu)
    try:
        print(f"ComfyUI with Sketch RAG is running at {server.url} (log: {server.log_path}). Ctrl-C stops it.")
        failures = server.import_failures()
        if failures:
            print("Some custom nodes failed to import:\n" + "\n".join(failures), file=sys.stderr)
        return server.process.wait()
    finally:
        server.stop()


def _canny(args: argparse.Namespace) -> int:
    from ..imaging import read_image, write_image
    from ..rendering import DEFAULT_HIGH_THRESHOLD, DEFAULT_LOW_THRESHOLD, CannySettings, sketch_to_edges

    settings = CannySettings(
        low_threshold=DEFAULT_LOW_THRESHOLD if args.low_threshold is None else args.low_threshold,
        high_threshold=DEFAULT_HIGH_THRESHOLD if args.high_threshold is None else args.high_threshold,
        auto_threshold=args.auto_threshold,
        resolution=args.resolution,
        blur=args.blur,
        thicken=args.thicken,
        mode=args.mode,
    )
    edges = sketch_to_edges(read_image(args.sketch), settings)
    write_image(args.out, edges)
    print(json.dumps({"sketch": str(args.sketch), "edges": str(args.out),
                      "width": int(edges.shape[1]), "height": int(edges.shape[0])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
