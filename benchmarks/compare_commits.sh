#!/usr/bin/env bash
# The beam-search benchmark at an earlier commit and at the working tree, alternated in one run on one machine, so
# "no slower than before" is measured under the same load (the machines here are noisy; compare within a run only).
#
#   bash benchmarks/compare_commits.sh BASE_REV [ROUNDS] -- [bench_beam_search.py arguments]
#   bash benchmarks/compare_commits.sh e684fb0 2 -- --model qwen --anchors 2 --cand 64 --naive-anchors 1 --count-ops
#
# Both sides run THIS tree's benchmarks/bench_beam_search.py (its flags and counters; counters the old code lacks
# print n/a) against their own lever_lm package. Output: one block per (round, side), in order.
# BENCH=<file in benchmarks/> runs another benchmark the same way, e.g. the import cost per job:
#   BENCH=bench_startup.py bash benchmarks/compare_commits.sh e684fb0 1 -- --repeats 3
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
base="${1:?usage: compare_commits.sh BASE_REV [ROUNDS] -- [bench arguments]}"
shift
rounds=1
if [[ $# -gt 0 && "$1" != "--" ]]; then
    rounds="$1"
    shift
fi
[[ "${1:-}" == "--" ]] && shift
bench="${BENCH:-bench_beam_search.py}"
old="$(mktemp -d /tmp/lever_bench_base.XXXXXX)"
trap 'git -C "$here" worktree remove --force "$old" >/dev/null 2>&1 || rm -rf "$old"' EXIT
git -C "$here" worktree add --detach "$old" "$base" >/dev/null
cp "$here/benchmarks/$bench" "$old/benchmarks/$bench"
python="$here/.venv/bin/python"
for round in $(seq 1 "$rounds"); do
    for side in base head; do
        root="$here"
        label="working tree ($(git -C "$here" rev-parse --short HEAD)+)"
        if [[ "$side" == base ]]; then
            root="$old"
            label="base $(git -C "$old" rev-parse --short HEAD)"
        fi
        echo "##### round $round: $label"
        (cd "$root" && HF_HUB_OFFLINE=1 "$python" "benchmarks/$bench" "$@")
    done
done
