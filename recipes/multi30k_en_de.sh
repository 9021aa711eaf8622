#!/usr/bin/env bash
# Multi30k English->German: the paper's findings on real data on 2 CPU cores (docs/results-multi30k.md),
# every stage as a Snakemake graph. Its settings: recipes/config/multi30k_en_de.yaml.
#
#   bash recipes/multi30k_en_de.sh -j 2         # two one-thread jobs at once on 2 cores
#   bash recipes/multi30k_en_de.sh -n           # the plan
#   SMOKE=1 RUN=/tmp/smoke-m30k bash recipes/multi30k_en_de.sh
# The raw files: RAW_DIR (read only), else the one saved with the run, else ../shared/data/multi30k-en-de
# beside this checkout when present, else downloaded from github.com/multi30k/dataset into RUN/raw.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SHARED="$RECIPES/../../shared/data/multi30k-en-de"
if [ "${SMOKE:-0}" != 1 ] && [ -d "$SHARED" ]; then RAW_DIR_DEFAULT="$(cd "$SHARED" && pwd)"; fi
recipe_main multi30k_en_de "$@"
