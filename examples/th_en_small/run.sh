#!/usr/bin/env bash
# A Thai->English smoke run with real Thai text through the IWSLT15 recipe (recipes/iwslt15_th_en.sh):
# sentencepiece on Thai, every stage, evaluated on the IWSLT15 test sets. About the Thai path working
# end to end, not about BLEU: 2,800 Tatoeba pairs cannot teach TED talks.
#
#   bash examples/th_en_small/run.sh [SNAKEMAKE_ARGS...]   (rerunning runs only what is missing)
#
#   SMALL=../shared/data/th-en-small          Tatoeba pairs: tatoeba-manythings.{th,en}
#   TEST_DIR=../shared/data/iwslt15-th-en-test   tst2010-2013_th-en.{th,en}
#   RUN=runs/th_en_small
# Tatoeba has no development set: every 15th pair is held out as one (written into $RUN/raw).
# Settings: examples/th_en_small/config.yaml over the recipe's SMOKE=1 layers.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$HERE/../.."
SMALL="$(cd "${SMALL:-$ROOT/../shared/data/th-en-small}" 2>/dev/null && pwd || echo "${SMALL:-}")"
TEST_DIR="$(cd "${TEST_DIR:-$ROOT/../shared/data/iwslt15-th-en-test}" 2>/dev/null && pwd || echo "${TEST_DIR:-}")"
export RUN="${RUN:-runs/th_en_small}"
for f in "$SMALL/tatoeba-manythings.th" "$SMALL/tatoeba-manythings.en" \
         "$TEST_DIR/tst2010-2013_th-en.th" "$TEST_DIR/tst2010-2013_th-en.en"; do
  [ -e "$f" ] || { echo "error: $f is missing; set SMALL and TEST_DIR to the Thai-English folders" >&2; exit 2; }
done

RAW="$RUN/raw"
mkdir -p "$RAW"
for lang in th en; do  # the split, written once (atomically) so a rerun resumes on the same data
  [ -e "$RAW/valid.$lang" ] && continue
  awk 'NR % 15 != 0' "$SMALL/tatoeba-manythings.$lang" >"$RAW/train.$lang.part"
  awk 'NR % 15 == 0' "$SMALL/tatoeba-manythings.$lang" >"$RAW/valid.$lang.part"
  mv "$RAW/train.$lang.part" "$RAW/train.$lang"
  mv "$RAW/valid.$lang.part" "$RAW/valid.$lang"
done

export SMOKE=1 CONFIGFILE="$HERE/config.yaml"
exec bash "$ROOT/recipes/iwslt15_th_en.sh" "$@" \
  --config "test_files=[['$TEST_DIR/tst2010-2013_th-en.th', '$TEST_DIR/tst2010-2013_th-en.en']]"
