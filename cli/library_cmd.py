"""``sketch-rag library sync|add|query|list``: the style library from the command line.

The same engine as the nodes, and the same resolution rule (:mod:`..retrieval.locations`): the shipped
styles plus ``~/.sketch-rag/styles``, the first CLIP folder under ``<models-dir>/style_clip``, the index in
``~/.sketch-rag/store``. The CLI runs as the user, so it accepts any path the user gives it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LibraryError
from .paths import HOME

if TYPE_CHECKING:  # the engine is imported only when a command runs, so `--help` stays fast
    from ..retrieval import InputNames, LibraryHome, LibraryLocation



def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``library`` command and its subcommands to the CLI."""
    library = commands.add_parser("library", help="sync, add to, query or list a style library")
    sub = library.add_subparsers(required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--folder", type=Path, default=None,
                       help="library folder (default: the shipped styles plus ~/.sketch-rag/styles)")
        p.add_argument("--model", default=None,
                       help="CLIP folder, folder name under <models-dir>/style_clip, or a Hub id")
        p.add_argument("--models-dir", type=Path, default=HOME / "models",
                       help="a ComfyUI models/ folder (default: %(default)s)")
        p.add_argument("--store", default=str(HOME / "store"),
                       help="index folder, or a Chroma server URL http://host:port (default: %(default)s)")
        p.add_argument("--allow-download", action="store_true", help="allow fetching the model from the Hub")
        p.add_argument("--json", action="store_true", help="print one JSON document instead of text")

    sync = sub.add_parser("sync", help="index new, changed and deleted images")
    common(sync)
    sync.add_argument("--rebuild", action="store_true", help="drop and rebuild the index (e.g. after a model change)")
    sync.set_defaults(run=_sync)

    add = sub.add_parser("add", help="copy an image into the library with a name and tags, and index it")
    common(add)
    add.add_argument("image", type=Path)
    add.add_argument("--name", required=True)
    add.add_argument("--tags", default="", help="comma-separated")
    add.add_argument("--filename", default=None, help="file name inside the library (default: from the name)")
    add.set_defaults(run=_add)

    query = sub.add_parser("query", help="find the styles that best fit a text and/or an image")
    common(query)
    query.add_argument("text", nargs="?", default="")
    query.add_argument("--image", type=Path, default=None, help="query image")
    query.add_argument("--image-weight", type=float, default=0.5)
    query.add_argument("-k", type=int, default=3)
    query.add_argument("--tags", default="", help="comma-separated tags every result must carry")
    query.add_argument("--text-weight", type=float, default=0.0,
                       help="share of the score from the prompt vs the styles' names, tags and descriptions "
                            "(0 = images only; no effect without a text)")
    query.set_defaults(run=_query)

    listing = sub.add_parser("list", help="list the styles of a library")
    common(listing)
    listing.set_defaults(run=_list)


def cli_location(folder: Path | None, store: str, model: str | None, models_dir: Path,
                 names: InputNames | None = None) -> tuple[LibraryLocation, LibraryHome]:
    """The library location for a CLI command: the engine's one rule, with every path the user gives allowed.

    Relative paths are read against the working directory; the home is ``$SKETCH_RAG_HOME``.
    """
    from ..access import AccessPolicy
    from ..model_folders import STYLE_CLIP
    from ..retrieval import SHIPPED_LIBRARY, InputNames, LibraryHome, resolve_location

    home = LibraryHome(HOME, (models_dir / STYLE_CLIP,), relative_base=Path.cwd())
    flags = names or InputNames(folder="--folder", store="--store", model="--model")
    location = resolve_location(folder, store, model, policy=AccessPolicy.for_cli(read_only=[SHIPPED_LIBRARY]),
                                home=home, names=flags)
    if folder is not None and not location.roots[0].path.is_dir():
        raise LibraryError(
            f"The library folder {folder} ({location.roots[0].path}) does not exist; create it or check the path."
        )
    return location, home


def _open(args: argparse.Namespace, rebuild: bool = False) -> tuple[Any, Any]:
    from ..retrieval import ClipEmbedder, open_library

    location, home = cli_location(args.folder, args.store, args.model, args.models_dir)
    embedder = ClipEmbedder.load(location.model, allow_download=args.allow_download, search_dirs=home.model_dirs)
    return open_library(location.roots, embedder, location.store_dir, chroma_url=location.chroma_url,
                        rebuild=rebuild)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, ensure_ascii=False) if args.json else text)


def _sync(args: argparse.Namespace) -> int:
    _, report = _open(args, rebuild=args.rebuild)
    data = report.to_json()
    text = ("".join(f"{line}\n" for line in report.healed)
            + f"{report.total} styles; added {len(report.added)}, changed {len(report.changed)}, renamed "
            f"{len(report.renamed)}, removed {len(report.removed)}, embedded {report.embedded}"
            + "".join(f"\nskipped {f}: {r}" for f, r in report.skipped))
    _emit(args, data, text)
    return 0


def _add(args: argparse.Namespace) -> int:
    library, _ = _open(args)
    match = library.add(args.image, args.name, args.tags, filename=args.filename)
    _emit(args, {"id": match.item_id, "path": str(match.path), "name": match.name, "tags": list(match.meta.tags)},
          f"added {match.item_id} ({match.path})")
    return 0


def _query(args: argparse.Namespace) -> int:
    from ..imaging import read_image
    from ..retrieval import StyleQuery

    library, _ = _open(args)
    image = read_image(args.image) if args.image else None
    matches = library.query(StyleQuery(text=args.text, image=image, image_weight=args.image_weight, k=args.k,
                                       tags=tuple(args.tags.split(",")), text_weight=args.text_weight))
    # z-score and percentile: the score relative to the library for this query (raw cosines are not calibrated).
    rows = [{"id": m.item_id, "name": m.name, "score": round(m.score, 6), "z_score": round(m.z_score, 4),
             "percentile": round(m.percentile, 2), "weight": round(m.weight, 6), "path": str(m.path),
             "tags": list(m.meta.tags)} for m in matches]
    _emit(args, {"results": rows},
          "\n".join(f"{r['score']:.4f}  z {r['z_score']:+.2f}  {r['weight']:.3f}  {r['name']}  ({r['id']})"
                    for r in rows))
    return 0


def _list(args: argparse.Namespace) -> int:
    library, _ = _open(args)
    rows = [{"id": r.item_id, "name": r.meta.name, "tags": list(r.meta.tags), "sha256": r.sha256,
             **({"error": r.error} if r.error else {})} for r in library.entries()]
    _emit(args, {"styles": rows}, "\n".join(
        f"{r['id']}\t{r['name']}\t{', '.join(r['tags'])}" + (f"\tSKIPPED: {r['error']}" if "error" in r else "")
        for r in rows))
    return 0
