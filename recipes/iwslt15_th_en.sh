#!/usr/bin/env bash
# IWSLT15 Thai->English, the paper's second setting (Kim & Rush 2016, Table 1): every stage, from
# the TED talks of WIT3 to the report. Usage:  bash recipes/iwslt15_th_en.sh   (rerunning resumes)
#
#   RUN=runs/iwslt15_th_en  the run folder
#   RAW_DIR=$RUN/raw        the downloaded data; offline, unpack WIT3's th-en.tgz (IWSLT 2015,
#                           https://wit3.fbk.eu/2015-01) there, which gives:
#       th-en/train.tags.th-en.{th,en}                 training talks (tag lines are skipped)
#       th-en/IWSLT15.TED.dev2010.th-en.{th,en}.xml    validation
#       th-en/IWSLT15.TED.tst201{0,1,2,3}.th-en.{th,en}.xml   test: the four sets concatenated
#   TRAIN_FILES, VALID_FILES, TEST_FILES   (source, target) file pairs instead of the above, e.g.
#                           TEST_FILES="../shared/data/iwslt15-th-en-test/tst2010-2013_th-en.th
#                                       ../shared/data/iwslt15-th-en-test/tst2010-2013_th-en.en"
#   ARCH=transformer        a 6+6-layer d=512 teacher, 3+3-layer d=256 student (the modern default)
#   ARCH=lstm               the paper's LSTMs: teacher 2x500, student 2x100
#   SMOKE=1                 tiny models; and, where the data is absent, a tiny synthetic corpus in
#                           the layout above (th/en suffixes): minutes on CPU
#   and every variable of recipes/pipeline.sh (STAGES, NUM_SHARDS, SHARD_ID, SEQ_INTER_BEAM, ...).
# Thai is written without spaces between words: sentencepiece segments it (character coverage 1.0).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"

SRC=th
TGT=en
SMOKE="${SMOKE:-0}"
ARCH="${ARCH:-transformer}"
RUN="$(mkdir -p "${RUN:-runs/iwslt15_th_en}" && cd "${RUN:-runs/iwslt15_th_en}" && pwd)"
RAW_DIR="$(mkdir -p "${RAW_DIR:-$RUN/raw}" && cd "${RAW_DIR:-$RUN/raw}" && pwd)"
TOK="$RUN/prepared"
IWSLT_URL="${IWSLT_URL:-https://wit3.fbk.eu/archive/2015-01/texts/th/en/th-en.tgz}"
IWSLT_VALID="${IWSLT_VALID:-dev2010}"
if [ "$SMOKE" = 1 ]; then  # two sets still exercise the concatenation, with half the decoding
  IWSLT_TEST="${IWSLT_TEST:-tst2012 tst2013}"
else
  IWSLT_TEST="${IWSLT_TEST:-tst2010 tst2011 tst2012 tst2013}"
fi
D="$RAW_DIR/th-en"
xml_pairs() { local s; for s in $1; do echo "$D/IWSLT15.TED.$s.th-en.th.xml $D/IWSLT15.TED.$s.th-en.en.xml"; done; }
TRAIN_FILES="${TRAIN_FILES:-$D/train.tags.th-en.th $D/train.tags.th-en.en}"
VALID_FILES="${VALID_FILES:-$(xml_pairs "$IWSLT_VALID")}"
TEST_FILES="${TEST_FILES:-$(xml_pairs "$IWSLT_TEST")}"

download_iwslt15() {
  fetch_tgz "$IWSLT_URL" "$RAW_DIR" "$D/train.tags.th-en.th"
}

smoke_layout() {  # the toy corpus (source side as "th") under WIT3's names and formats
  local toy="$RAW_DIR/toy" s
  smoke_corpus "$toy"
  mkdir -p "$D"
  as_iwslt_tags "$toy/train.en" "$D/train.tags.th-en.th"
  as_iwslt_tags "$toy/train.de" "$D/train.tags.th-en.en"
  as_iwslt_xml "$toy/valid.en" "$D/IWSLT15.TED.$IWSLT_VALID.th-en.th.xml"
  as_iwslt_xml "$toy/valid.de" "$D/IWSLT15.TED.$IWSLT_VALID.th-en.en.xml"
  for s in $IWSLT_TEST; do  # the same small test set under each name: the concatenation is exercised
    as_iwslt_xml "$toy/test.en" "$D/IWSLT15.TED.$s.th-en.th.xml"
    as_iwslt_xml "$toy/test.de" "$D/IWSLT15.TED.$s.th-en.en.xml"
  done
}

if [ "$SMOKE" = 1 ]; then
  smoke_settings
elif [ "$ARCH" = lstm ]; then
  # Kim & Rush: teacher 2x500, student 2x100 (dropout 0.3)
  TEACHER_ARCH="${TEACHER_ARCH:-$(lstm_arch 2 500 0.3)}"
  STUDENT_ARCH="${STUDENT_ARCH:-$(lstm_arch 2 100 0.3)}"
  TRAIN_ARGS="${TRAIN_ARGS:-$LSTM_TRAIN_ARGS --max-tokens 4096 $(run_args 2000)}"
  TEACHER_STEPS="${TEACHER_STEPS:---max-epoch 30}"
  STUDENT_STEPS="${STUDENT_STEPS:---max-epoch 30}"
  FINETUNE_STEPS="${FINETUNE_STEPS:---max-epoch 3}"
else
  # fairseq's IWSLT transformer (6+6, d=512, 4 heads); the student has half its depth and width
  TEACHER_ARCH="${TEACHER_ARCH:---arch transformer_iwslt_de_en --share-all-embeddings --dropout 0.3}"
  STUDENT_ARCH="${STUDENT_ARCH:-$(transformer_arch 3 256 512 4 0.3)}"
  TRAIN_ARGS="${TRAIN_ARGS:-$(transformer_train_args 0.0005 4000) --max-tokens 4096 $(run_args 2000)}"
  TEACHER_STEPS="${TEACHER_STEPS:---max-epoch 50}"
  STUDENT_STEPS="${STUDENT_STEPS:---max-epoch 50}"
  FINETUNE_STEPS="${FINETUNE_STEPS:---max-epoch 5}"
  FINETUNE_ARGS="${FINETUNE_ARGS-$(transformer_finetune_args 0.0005)}"
fi
VOCAB_SIZE="${VOCAB_SIZE:-16000}"  # joint Thai+English sentencepiece vocabulary (~90k training pairs)
# Thai's alphabet is small: cover every character rather than map rare ones to <unk>
PREPARE_ARGS="${PREPARE_ARGS:---character-coverage 1.0}"
recipe_defaults

# shellcheck source=pipeline.sh
source "$HERE/pipeline.sh"
recipe_main download_iwslt15 smoke_layout
