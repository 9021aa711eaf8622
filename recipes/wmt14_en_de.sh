#!/usr/bin/env bash
# WMT14 English->German, the paper's main setting (Kim & Rush 2016, Table 1): every stage, from the
# official data to the report, as a Snakemake graph. Its settings: recipes/config/wmt14_en_de.yaml.
#
#   bash recipes/wmt14_en_de.sh                 # rerunning runs only what is missing or out of date
#   bash recipes/wmt14_en_de.sh -n              # the plan: each job and why it would run
#   ARCH=lstm bash recipes/wmt14_en_de.sh       # the paper's LSTMs (config/wmt14_en_de.lstm.yaml)
#   SMOKE=1 RUN=/tmp/smoke bash recipes/wmt14_en_de.sh   # tiny models, a tiny corpus: minutes on CPU
#   RAW_DIR=/data/wmt14 bash recipes/wmt14_en_de.sh      # the unpacked official archives (names: docs/recipes.md)
#   bash recipes/wmt14_en_de.sh --profile recipes/profiles/slurm   # every job a SLURM job
#   bash recipes/wmt14_en_de.sh --config num_shards=32 seq_inter_beam=35   # settings: config/defaults.yaml
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
recipe_main wmt14_en_de "$@"
