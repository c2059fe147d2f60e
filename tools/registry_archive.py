"""The Comfy Registry archive of this pack, built the way ``comfy node pack`` builds it.

comfy-cli (``comfy_cli/file_utils.py``, ``zip_files``) zips the files ``git ls-files`` lists (every file under the
folder when that finds none), leaving out each path a ``.comfyignore`` pattern matches (gitwildmatch, blank lines and
``#`` comments skipped). This module reads the same two sources the same way, so the tests can load the pack from
exactly what the Registry ships and bandit can scan exactly that code:

    python tools/registry_archive.py             # the archive's files, one a line
    python tools/registry_archive.py --py        # only its Python files (what ./dev.sh test hands to bandit)
    python tools/registry_archive.py --zip OUT   # write the archive
"""

from __future__ import annotations

import argparse
import os
import subprocess  # nosec B404
import sys
import warnings
import zipfile
from pathlib import Path

from pathspec import PathSpec

ROOT = Path(__file__).resolve().parent.parent
IGNORE_FILE = ".comfyignore"


def ignore_spec(root: Path = ROOT) -> PathSpec | None:
    """The ``.comfyignore`` patterns as comfy-cli reads them, or None when there are none."""
    path = root / IGNORE_FILE
    if not path.is_file():
        return None
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    if not patterns:
        return None
    with warnings.catch_warnings():  # pathspec >= 1.0 deprecates the name comfy-cli uses; the matching is the same
        warnings.simplefilter("ignore", DeprecationWarning)
        return PathSpec.from_lines("gitwildmatch", patterns)


def tracked_files(root: Path = ROOT) -> list[str]:
    """``git ls-files`` in ``root`` (POSIX paths relative to it); every file under it when git lists none."""
    try:
        # Bandit B603/B607 (a process from PATH): a fixed git command, no shell, no outside input.
        listed = subprocess.run(["git", "-C", str(root), "ls-files"],  # nosec B603 B607
                                capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        listed = []
    if listed:
        return [line for line in listed if line.strip()]
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git"]
        found += [Path(folder, f).relative_to(root).as_posix() for f in files]
    return sorted(found)


def archive_files(root: Path = ROOT) -> list[str]:
    """The files the Registry archive holds: tracked, present, and matched by no ``.comfyignore`` pattern."""
    spec = ignore_spec(root)
    return [f for f in tracked_files(root)
            if (spec is None or not spec.match_file(f)) and (root / f).is_file()]


def write_archive(target: Path, root: Path = ROOT) -> list[str]:
    """Write the archive to ``target`` (a zip, paths relative to the pack folder) and return its files."""
    files = archive_files(root)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in files:
            archive.write(root / name, name)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--py", action="store_true", help="list only the Python files")
    parser.add_argument("--zip", type=Path, help="write the archive here instead of listing it")
    args = parser.parse_args(argv)
    if args.zip:
        write_archive(args.zip)
        return 0
    files = archive_files()
    for name in files:
        if not args.py or name.endswith(".py"):
            print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
