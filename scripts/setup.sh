#!/usr/bin/env bash
# Create .venv/ at the repo root and install the pinned stack (CPU or GPU torch from the local wheel cache/PyPI).
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip_install() {
  local status=0
  .venv/bin/python -m pip install --disable-pip-version-check -q "$@" >.venv/pip.log 2>&1 || status=$?
  grep -v "^WARNING: Location" .venv/pip.log || true # this machine's wheel mirror warns about absent folders
  return "$status"
}
stamp=.venv/.lever-plus-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # torch first and pinned: a bare `torch` requirement would pull a multi-GB build from the index.
  pip_install torch==2.14.1 torchvision==0.29.1
  pip_install -e ".[dev]"
  # open-flamingo pins torch==2.0.1; its real dependencies are already installed above.
  pip_install --no-deps open-flamingo==2.0.1
  .venv/bin/python -c "import torch, transformers, open_flamingo, open_clip, faiss, snakemake, lever_lm" \
    || { echo "setup: installation incomplete" >&2; exit 1; }
  touch "$stamp"
fi
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
