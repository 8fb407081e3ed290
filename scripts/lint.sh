#!/usr/bin/env bash
# The linters, as CI runs them before the tests: ruff (lint and format, pyproject.toml), snakefmt and snakemake --lint.
# Needs the .venv of scripts/setup.sh. Fix with: .venv/bin/ruff check --fix . && .venv/bin/ruff format . && .venv/bin/snakefmt Snakefile rules
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
run() { echo "lint: $*"; "$@" || status=1; }
run .venv/bin/ruff check .
run .venv/bin/ruff format --check .
run .venv/bin/snakefmt --check Snakefile rules
run .venv/bin/snakemake --lint --quiet
exit "$status"
