#!/usr/bin/env bash
# The demo: the whole Kim & Rush (2016) pipeline (recipes/Snakefile) on the embedded synthetic
# corpus, on CPU, with the settings of examples/toy/demo.yaml; prints the results table.
# Usage: examples/toy/demo.sh [RUN_DIR] [SNAKEMAKE_ARGS...]   (make demo runs it in runs/toy;
# rerunning runs only what is missing or out of date; -n shows the plan)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../../recipes/common.sh
source "$HERE/../../recipes/common.sh"
RUN="${1:-runs/toy}"
[ $# -gt 0 ] && shift
run_pipeline "$RUN" "$HERE/demo.yaml" -- "$@"
