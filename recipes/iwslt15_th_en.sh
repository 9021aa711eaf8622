#!/usr/bin/env bash
# IWSLT15 Thai->English, the paper's second setting: every stage, from the TED talks of WIT3 to the
# report, as a Snakemake graph. Its settings: recipes/config/iwslt15_th_en.yaml.
#
#   bash recipes/iwslt15_th_en.sh               # rerunning runs only what is missing or out of date
#   bash recipes/iwslt15_th_en.sh -n            # the plan
#   ARCH=lstm bash recipes/iwslt15_th_en.sh     # the paper's LSTMs (config/iwslt15_th_en.lstm.yaml)
#   SMOKE=1 RUN=/tmp/smoke-th bash recipes/iwslt15_th_en.sh
#   RAW_DIR=/data/iwslt15 bash recipes/iwslt15_th_en.sh   # WIT3's th-en.tgz unpacked there
#   bash recipes/iwslt15_th_en.sh --config 'test_files=[[/data/tst.th, /data/tst.en]]'
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
recipe_main iwslt15_th_en "$@"
