#!/usr/bin/env bash
# Issue 11's one-GPU check (about 4 minutes on one H100): everything its closing note needs, in one run.
#
#   0. The fast-vs-naive tests on CUDA (tiny models, fp32; the adapters take CUDA when it is there): identical beams,
#      |delta score| <= 1e-4, scores independent of score_token_budget / vision_token_budget (<= 1e-5), the work
#      counters, the key/value pool's gather and in-place cache, Qwen's grouped vision attention with host grids.
#   1. fp32 exactness on CUDA (scaled dims, both models, 2 anchors, cand 64): fast vs naive beams and max |delta score|
#      (issue: identical beams, |delta| <= 1e-4).
#   2. --dims 3b --precision bf16 --cand 64 (real Qwen2.5-VL-3B / OpenFlamingo-3B sizes, random init), both models:
#      naive on 1 anchor, fast paths on 2 anchors with score_batch_size 32 (default), 128 (the issue's reference
#      setting, 2.2 s/anchor Qwen, 0.43 s/anchor Flamingo) and token-budget batches (1024 rows at most, at most
#      32768 padded LM tokens per batch: score_token_budget), then --profile (kernel time / wall, matmul share,
#      kernel launches, cudaStreamSynchronize / cudaMemcpyAsync per anchor). Prints s/anchor, LM tokens, the adapters'
#      counters (forwards, host syncs, H2D copies), TFLOP/s, MFU (vs 989 TFLOP/s bf16) and peak GPU memory per path,
#      and bf16 exactness (share of identical beams, max |delta step score|).
#
# Prepare here once (needs pip's index; the device machine has no network and transformers 5.x, no open_clip and
# no open_flamingo):   bash benchmarks/gpu_check.sh --prepare
# Run on the device machine (device tool `run`, carry [".whl"], timeout_s 600; the steps stop at 120 + 100 + 330 s):
#   bash benchmarks/gpu_check.sh
# The log is also written to $OUT/gpu_check.log when $OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 open_clip_torch==3.3.0 open-flamingo==2.0.1
        ftfy==6.3.1 wcwidth==0.9.4 einops-exts==0.0.4 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
        referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0)  # the .venv's versions (README); manylinux cp312 where binary
if [[ "${1:-}" == "--prepare" ]]; then
  mkdir -p .whl  # git-ignored
  PIP=(python3 -m pip); [[ -x .venv/bin/python ]] && PIP=(.venv/bin/python -m pip)
  exec "${PIP[@]}" download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
fi

LOG=/dev/null; [[ -n "${OUT:-}" ]] && LOG="$OUT/gpu_check.log"
exec > >(tee "$LOG") 2>&1
PY=python3
if [[ -d .whl ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: installing .whl failed"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, transformers, open_clip, open_flamingo; print('torch', torch.__version__, '| transformers', transformers.__version__, '| open_clip', open_clip.__version__, '| cuda', torch.cuda.is_available())" \
  || { echo "gpu_check: imports failed (run --prepare here and carry .whl)"; exit 1; }
BENCH=($PY benchmarks/bench_beam_search.py --device cuda --threads 8 --cand 64)
date -u +"start %T"
echo "### 0. fast-vs-naive tests on CUDA (fp32, tiny models)"
timeout 120 $PY -m pytest -q -x -p no:cacheprovider tests/test_beam_search.py tests/test_lvlm_qwen.py \
  tests/test_lvlm_flamingo.py tests/test_kv_pool.py -k "tiny_models or counters or fast_equals_naive or token_budget \
  or fixed_number or one_attention_call or prefilled or stored_prefixes"
date -u +"step 0 done %T"
echo "### 1. fp32 exactness on CUDA (scaled dims)"
timeout 100 "${BENCH[@]}" --precision fp32 --dims scaled --anchors 2 --fast-settings 32 1024:32768
date -u +"step 1 done %T"
echo "### 2. 3B sizes, bf16"
timeout 330 "${BENCH[@]}" --precision bf16 --dims 3b --anchors 2 --naive-anchors 1 --fast-settings 32 128 1024:32768 --profile
date -u +"step 2 done %T"
