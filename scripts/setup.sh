#!/usr/bin/env bash
# Create .venv/ at the repo root and install the pinned stack (CPU or GPU torch from the local wheel cache/PyPI).
# Idempotent: a second run only checks that everything is installed. One line per step; pip's full output goes
# to .venv/pip.log, and each download it makes is echoed with its size so a long step does not look like a hang.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
STEPS=5
step() { echo "setup: [$1/$STEPS] $2"; }

pip_install() {
  local status
  set +e
  .venv/bin/python -m pip install --disable-pip-version-check --progress-bar off "$@" 2>&1 \
    | tee -a .venv/pip.log \
    | grep --line-buffered -E '^\s*Downloading |^Installing collected|^ERROR' | sed -u -e 's/^ */         /'
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then
    echo "setup: pip failed (exit $status); the last lines of .venv/pip.log:" >&2
    grep -v "^WARNING: Location" .venv/pip.log | tail -n 20 >&2 # this machine's wheel mirror warns about absent folders
  fi
  return "$status"
}

if [ ! -x .venv/bin/python ]; then
  step 1 "virtualenv .venv ($("$PYTHON" --version))"
  "$PYTHON" -m venv .venv
else
  step 1 "virtualenv .venv exists"
fi
stamp=.venv/.lever-plus-installed
if [ -f "$stamp" ] && [ "$(cat "$stamp")" != "gpu=${LEVER_PLUS_GPU:-0}" ]; then
  rm "$stamp" # the faiss build asked for changed
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  : >.venv/pip.log
  # torch first and pinned: a bare `torch` requirement would pull a multi-GB build from the index.
  step 2 "torch 2.14.1 + torchvision 0.29.1 (pinned; the largest step)"
  pip_install torch==2.14.1 torchvision==0.29.1
  step 3 "lever-plus and its pinned dependencies (transformers, open_clip, faiss, snakemake, ...)"
  pip_install -e ".[dev]"
  # open-flamingo pins torch==2.0.1; its real dependencies are already installed above.
  step 4 "open-flamingo 2.0.1 (--no-deps: it pins torch 2.0.1)"
  pip_install --no-deps open-flamingo==2.0.1
  if [ "${LEVER_PLUS_GPU:-0}" = 1 ]; then
    # the `gpu` extra's faiss build replaces faiss-cpu: both install the `faiss` module
    echo "setup:       LEVER_PLUS_GPU=1: faiss-gpu-cu12 replaces faiss-cpu"
    faiss_gpu=$(.venv/bin/python -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["gpu"][0])')
    .venv/bin/python -m pip uninstall -y -q faiss-cpu
    pip_install "$faiss_gpu"
    pip_install --no-deps --force-reinstall "$faiss_gpu" # its files again, should faiss-cpu's removal have taken them
    .venv/bin/python -c "import faiss; assert hasattr(faiss, 'StandardGpuResources')" \
      || { echo "setup: faiss-gpu-cu12 did not install a GPU build of faiss" >&2; exit 1; }
  fi
  step 5 "import check"
  .venv/bin/python -c "import torch, transformers, open_flamingo, open_clip, faiss, snakemake, lever_lm" \
    || { echo "setup: installation incomplete" >&2; exit 1; }
  echo "gpu=${LEVER_PLUS_GPU:-0}" >"$stamp"
else
  step 5 "already installed (delete $stamp to reinstall)"
fi
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
