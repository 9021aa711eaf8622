#!/usr/bin/env bash
# WMT14 English->German, the paper's main setting (Kim & Rush 2016, Table 1): every stage, from
# the official data to the report. Usage:  bash recipes/wmt14_en_de.sh   (rerunning resumes)
#
#   RUN=runs/wmt14_en_de    the run folder
#   RAW_DIR=$RUN/raw        the downloaded data; offline, unpack the official archives there:
#       training/europarl-v7.de-en.{en,de}          training-parallel-europarl-v7.tgz  (WMT13)
#       commoncrawl.de-en.{en,de}                    training-parallel-commoncrawl.tgz  (WMT13)
#       training/news-commentary-v9.de-en.{en,de}    training-parallel-nc-v9.tgz        (WMT14)
#       dev/newstest2013.{en,de}                     dev.tgz                            (WMT14)
#       test-full/newstest2014-deen-src.en.sgm, test-full/newstest2014-deen-ref.de.sgm
#                                                    test-full.tgz (WMT14; all 3,003 sentences)
#   TRAIN_FILES, VALID_FILES, TEST_FILES   (source, target) file pairs instead of the above
#   ARCH=transformer        transformer base teacher, 3+3-layer d=256 student (the modern default)
#   ARCH=lstm               the paper's LSTMs: teacher 4x1000, student 2x500 (STUDENT_SIZE=300: 2x300)
#   SMOKE=1                 a tiny synthetic corpus in the layout above and tiny models: minutes on CPU
#   and every variable of recipes/pipeline.sh (STAGES, NUM_SHARDS, SHARD_ID, SEQ_INTER_BEAM, ...).
# Scale-out (all local GPUs, several nodes, SLURM array jobs for the teacher's generation): docs/recipes.md.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"

SRC=en
TGT=de
SMOKE="${SMOKE:-0}"
ARCH="${ARCH:-transformer}"
RUN="$(mkdir -p "${RUN:-runs/wmt14_en_de}" && cd "${RUN:-runs/wmt14_en_de}" && pwd)"
RAW_DIR="$(mkdir -p "${RAW_DIR:-$RUN/raw}" && cd "${RAW_DIR:-$RUN/raw}" && pwd)"
TOK="$RUN/prepared"
TRAIN_FILES="${TRAIN_FILES:-$RAW_DIR/training/europarl-v7.de-en.en $RAW_DIR/training/europarl-v7.de-en.de
  $RAW_DIR/commoncrawl.de-en.en $RAW_DIR/commoncrawl.de-en.de
  $RAW_DIR/training/news-commentary-v9.de-en.en $RAW_DIR/training/news-commentary-v9.de-en.de}"
VALID_FILES="${VALID_FILES:-$RAW_DIR/dev/newstest2013.en $RAW_DIR/dev/newstest2013.de}"
TEST_FILES="${TEST_FILES:-$RAW_DIR/test-full/newstest2014-deen-src.en.sgm
  $RAW_DIR/test-full/newstest2014-deen-ref.de.sgm}"

download_wmt14() {
  local wmt13=https://www.statmt.org/wmt13 wmt14=https://www.statmt.org/wmt14
  fetch_tgz "$wmt13/training-parallel-europarl-v7.tgz" "$RAW_DIR" "$RAW_DIR/training/europarl-v7.de-en.de"
  fetch_tgz "$wmt13/training-parallel-commoncrawl.tgz" "$RAW_DIR" "$RAW_DIR/commoncrawl.de-en.de"
  fetch_tgz "$wmt14/training-parallel-nc-v9.tgz" "$RAW_DIR" "$RAW_DIR/training/news-commentary-v9.de-en.de"
  fetch_tgz "$wmt14/dev.tgz" "$RAW_DIR" "$RAW_DIR/dev/newstest2013.de"
  fetch_tgz "$wmt14/test-full.tgz" "$RAW_DIR" "$RAW_DIR/test-full/newstest2014-deen-ref.de.sgm"
}

smoke_layout() {  # the toy corpus under the official names: three training corpora, SGML test set
  local toy="$RAW_DIR/toy" lang
  smoke_corpus "$toy"
  mkdir -p "$RAW_DIR/training" "$RAW_DIR/dev" "$RAW_DIR/test-full"
  for lang in en de; do
    sed -n '1,300p' "$toy/train.$lang" >"$RAW_DIR/training/europarl-v7.de-en.$lang"
    sed -n '301,500p' "$toy/train.$lang" >"$RAW_DIR/commoncrawl.de-en.$lang"
    sed -n '501,$p' "$toy/train.$lang" >"$RAW_DIR/training/news-commentary-v9.de-en.$lang"
    cp "$toy/valid.$lang" "$RAW_DIR/dev/newstest2013.$lang"
  done
  as_sgml "$toy/test.en" "$RAW_DIR/test-full/newstest2014-deen-src.en.sgm"
  as_sgml "$toy/test.de" "$RAW_DIR/test-full/newstest2014-deen-ref.de.sgm"
}

if [ "$SMOKE" = 1 ]; then
  smoke_settings
elif [ "$ARCH" = lstm ]; then
  # Kim & Rush: teacher 4x1000 (dropout 0.3), students 2x500 and 2x300; 13 epochs
  TEACHER_ARCH="${TEACHER_ARCH:-$(lstm_arch 4 1000 0.3)}"
  STUDENT_ARCH="${STUDENT_ARCH:-$(lstm_arch 2 "${STUDENT_SIZE:-500}" 0.3)}"
  TRAIN_ARGS="${TRAIN_ARGS:-$LSTM_TRAIN_ARGS --max-tokens 4096 $(run_args 5000)}"
  TEACHER_STEPS="${TEACHER_STEPS:---max-epoch 13}"
  STUDENT_STEPS="${STUDENT_STEPS:---max-epoch 13}"
  FINETUNE_STEPS="${FINETUNE_STEPS:---max-epoch 2}"
  PAPER="${PAPER-wmt14_en_de}"  # the paper's own figures beside these
else
  # transformer base teacher (6+6, d=512); the student has half its depth and width
  TEACHER_ARCH="${TEACHER_ARCH:---arch transformer_wmt_en_de --share-all-embeddings --dropout 0.1}"
  STUDENT_ARCH="${STUDENT_ARCH:-$(transformer_arch 3 256 1024 4 0.1)}"
  TRAIN_ARGS="${TRAIN_ARGS:-$(transformer_train_args 0.0007 4000) --max-tokens 8192 $(run_args 5000)}"
  TEACHER_STEPS="${TEACHER_STEPS:---max-epoch 20}"
  STUDENT_STEPS="${STUDENT_STEPS:---max-epoch 20}"
  FINETUNE_STEPS="${FINETUNE_STEPS:---max-epoch 2}"
  FINETUNE_ARGS="${FINETUNE_ARGS-$(transformer_finetune_args 0.0007)}"
fi
VOCAB_SIZE="${VOCAB_SIZE:-32000}"  # one joint sentencepiece vocabulary for both languages
recipe_defaults

# shellcheck source=pipeline.sh
source "$HERE/pipeline.sh"
recipe_main download_wmt14 smoke_layout
