#!/usr/bin/env bash
# Sketch RAG developer entry point. On a fresh machine with Python 3.11 it installs everything
# it needs (a .venv with CPU torch, the pack, the dev tools, and a real ComfyUI in .comfyui/).
#
#   ./dev.sh demo [ARGS]     the main job: start ComfyUI with the pack, render an example sketch
#   ./dev.sh serve [ARGS]    ComfyUI with the pack on http://127.0.0.1:8188, for the graph editor
#   ./dev.sh test [ARGS]     the whole test suite: ruff, mypy, import layering, bandit, pytest (ARGS go to pytest)
#   ./dev.sh bench NAME      run bench/NAME.py
#   ./dev.sh setup           install only
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
PYTHON=${PYTHON:-python3.11}
VENV=$ROOT/.venv
PY=$VENV/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1

log() { echo "[dev.sh $(date +%H:%M:%S)] $*" >&2; }
pip_quiet() { "$PY" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

setup() {
  [ -x "$PY" ] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
  if ! "$PY" -c 'import torch' 2>/dev/null; then
    # Pinned: an unpinned torch pulls the multi-GB CUDA build. TORCH_SPEC may name another wheel.
    log "installing torch (${TORCH_SPEC:-torch==2.13.0})"
    pip_quiet install -q -c constraints.txt "${TORCH_SPEC:-torch==2.13.0}"
  fi
  local stamp="$VENV/.sketch-rag-$(cat pyproject.toml requirements.txt constraints.txt | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    log "installing the pack, its dev tools and the ray extra (the --ray batch tests)"
    pip_quiet install -q -c constraints.txt -r requirements.txt -e ".[dev,ray]"
    touch "$stamp"
  fi
  if "$PY" -m pip list 2>/dev/null | grep -qiE '^(nvidia-|triton )'; then
    log "CUDA packages found in $VENV: an unpinned torch slipped in"; exit 1
  fi
  if ! command -v chromium >/dev/null 2>&1; then
    # The browser test tier drives Debian's chromium (Playwright's own browser download cannot work here).
    log "installing chromium for the browser tests"
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi
  fi
  log "installing ComfyUI into .comfyui (skipped when present)"
  "$VENV/bin/sketch-rag" install-comfyui "$ROOT/.comfyui" >/dev/null
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  demo) setup; exec "$VENV/bin/sketch-rag" demo --comfyui-dir "$ROOT/.comfyui" "$@" ;;
  serve) setup; exec "$VENV/bin/sketch-rag" serve --comfyui-dir "$ROOT/.comfyui" "$@" ;;
  test)
    setup
    log "ruff"; "$VENV/bin/ruff" check .
    log "mypy"; "$VENV/bin/mypy" .
    log "import layering"; "$PY" tools/check_layers.py
    log "bandit (the Registry archive's Python files)"
    "$PY" tools/registry_archive.py --py | xargs "$VENV/bin/bandit" -q -ll
    log "pytest"; exec "$PY" -m pytest "$@"
    ;;
  bench) setup; name=$1; shift; exec "$PY" "bench/$name.py" "$@" ;;
  *) sed -n '2,10p' "$0"; exit 2 ;;
esac
