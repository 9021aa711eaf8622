#!/usr/bin/env bash
# A Thai->English smoke run with real Thai text through the IWSLT15 recipe (recipes/iwslt15_th_en.sh):
# sentencepiece on Thai, every stage, evaluated on the IWSLT15 test sets. About the Thai path working
# end to end, not about BLEU: 2,800 Tatoeba pairs cannot teach TED talks.
#
#   bash examples/th_en_small/run.sh          (rerunning resumes)
#
#   SMALL=../shared/data/th-en-small          Tatoeba pairs: tatoeba-manythings.{th,en}
#   TEST_DIR=../shared/data/iwslt15-th-en-test   tst2010-2013_th-en.{th,en}
#   RUN=runs/th_en_small
# Tatoeba has no development set: every 15th pair is held out as one (written into $RUN/raw).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$HERE/../.."
SMALL="${SMALL:-$ROOT/../shared/data/th-en-small}"
TEST_DIR="${TEST_DIR:-$ROOT/../shared/data/iwslt15-th-en-test}"
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

# Small models (a few minutes of training on 2 cores), a 2,000-piece joint vocabulary, outputs
# bounded by the source length (a weak model would otherwise repeat itself to 200 tokens).
export SMOKE=1 VOCAB_SIZE="${VOCAB_SIZE:-2000}"
export TRAIN_FILES="$RAW/train.th $RAW/train.en" VALID_FILES="$RAW/valid.th $RAW/valid.en"
export TEST_FILES="$TEST_DIR/tst2010-2013_th-en.th $TEST_DIR/tst2010-2013_th-en.en"
# shellcheck source=../../recipes/common.sh
source "$ROOT/recipes/common.sh"  # transformer_arch
export TEACHER_ARCH="${TEACHER_ARCH:-$(transformer_arch 2 128 512 4 0.3)}"
export STUDENT_ARCH="${STUDENT_ARCH:-$(transformer_arch 1 64 256 4 0.3)}"
export TEACHER_STEPS="${TEACHER_STEPS:---max-epoch 30}" STUDENT_STEPS="${STUDENT_STEPS:---max-epoch 20}"
export FINETUNE_STEPS="${FINETUNE_STEPS:---max-epoch 5}"
export GEN_ARGS="${GEN_ARGS:---batch-size 128 --max-len-a 1.2 --max-len-b 10}"
export PRUNE_CURVE="${PRUNE_CURVE:-0.5 0.8}"
exec bash "$ROOT/recipes/iwslt15_th_en.sh"
