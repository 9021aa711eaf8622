#!/usr/bin/env bash
# What the dataset recipes (wmt14_en_de.sh, iwslt15_th_en.sh, multi30k_en_de.sh) share: the
# device, downloads, the SMOKE=1 corpus and models, and the data step. Sourced, never run.
# Shell only: every piece of work is a fairseq or fairseq-seqkd command.

# gpu_present: whether an NVIDIA GPU is usable here (nvidia-smi lists one).
gpu_present() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }

# fetch URL DEST: download once, resuming a partial download; DEST appears only when complete.
fetch() {
  local url="$1" dest="$2"
  [ -s "$dest" ] && return 0
  mkdir -p "$(dirname "$dest")"
  log "downloading $url"
  if command -v curl >/dev/null 2>&1; then
    curl -fL --retry 3 -C - -o "$dest.part" "$url" || { fetch_failed "$url" "$dest"; return 1; }
  elif command -v wget >/dev/null 2>&1; then
    wget -c -O "$dest.part" "$url" || { fetch_failed "$url" "$dest"; return 1; }
  else
    log "error: neither curl nor wget is installed; download $url yourself into $(dirname "$dest")"
    return 1
  fi
  mv "$dest.part" "$dest"
}

fetch_failed() {
  log "error: could not download $1 (offline, or the file moved). Download it by hand to $2,"
  log "or unpack the data into RAW_DIR=$RAW_DIR with the file names listed in docs/recipes.md."
}

# fetch_tgz URL DIR WANTED: unless the file WANTED exists, download the archive and unpack it in DIR.
fetch_tgz() {
  local url="$1" dir="$2" wanted="$3" archive
  [ -e "$wanted" ] && return 0
  archive="$dir/downloads/$(basename "$url")"
  fetch "$url" "$archive"
  tar -xzf "$archive" -C "$dir"
  [ -e "$wanted" ] || { log "error: $archive did not contain $wanted"; return 1; }
}

# ---- model sizes ----

# lstm_arch LAYERS SIZE DROPOUT: fairseq's attentional LSTM (input feeding), the paper's "LAYERSxSIZE".
lstm_arch() {
  echo "--arch lstm --encoder-layers $1 --decoder-layers $1 --encoder-embed-dim $2 --encoder-hidden-size $2
    --decoder-embed-dim $2 --decoder-hidden-size $2 --decoder-out-embed-dim $2 --dropout $3"
}

# transformer_arch LAYERS DIM FFN HEADS DROPOUT: encoder and decoder alike, all embeddings shared
# (one joint sentencepiece vocabulary).
transformer_arch() {
  echo "--arch transformer --share-all-embeddings --encoder-layers $1 --decoder-layers $1
    --encoder-embed-dim $2 --decoder-embed-dim $2 --encoder-ffn-embed-dim $3 --decoder-ffn-embed-dim $3
    --encoder-attention-heads $4 --decoder-attention-heads $4 --dropout $5"
}

# The paper trained its LSTMs with SGD and a halving schedule; Adam with the same halving on a
# validation plateau gets there with less tuning. No label smoothing: the paper has none.
LSTM_TRAIN_ARGS="--optimizer adam --lr 0.001 --clip-norm 5.0 --lr-scheduler reduce_lr_on_plateau
  --lr-shrink 0.5 --criterion label_smoothed_cross_entropy --label-smoothing 0.0"
# transformer_train_args LR WARMUP: the usual inverse square root schedule, label smoothing 0.1.
transformer_train_args() {
  echo "--optimizer adam --adam-betas (0.9,0.98) --clip-norm 0.0 --lr $1 --lr-scheduler inverse_sqrt
    --warmup-updates $2 --weight-decay 0.0001 --criterion label_smoothed_cross_entropy --label-smoothing 0.1"
}
# transformer_finetune_args PEAK: fine-tunes continue at a fixed rate, a quarter of the peak PEAK
# (where inverse_sqrt stands after 16 times its warm-up); a fresh inverse_sqrt schedule would
# climb back to its peak and undo what the student learned (issue 7).
transformer_finetune_args() { echo "--lr-scheduler fixed --lr $(awk -v peak="$1" 'BEGIN { printf "%g", peak / 4 }')"; }
# Logging, seed, and a checkpoint every N updates so a killed long run loses little.
run_args() {
  echo "--log-interval 100 --no-progress-bar --seed 1 --save-interval-updates $1 --keep-interval-updates 1"
}

# ---- SMOKE=1: a tiny synthetic corpus in the recipe's own file layout, tiny models, few updates ----

SMOKE_SIZES=(--train-size 600 --valid-size 30 --test-size 30)

# smoke_corpus DIR: the toy corpus as DIR/{train,valid,test}.{en,de} (the toy's own suffixes).
smoke_corpus() {
  [ -e "$1/test.de" ] || fairseq-seqkd toy-corpus "$1" "${SMOKE_SIZES[@]}" >/dev/null
}

# as_sgml IN OUT: one sentence per line -> WMT SGML (one <seg> per line in one <doc>).
as_sgml() {
  awk 'BEGIN { print "<srcset setid=\"smoke\" srclang=\"any\">"; print "<doc docid=\"smoke-1\" genre=\"news\">" }
       { printf "<seg id=\"%d\">%s</seg>\n", NR, $0 }
       END { print "</doc>"; print "</srcset>" }' "$1" >"$2"
}

# as_iwslt_xml IN OUT: -> IWSLT XML test file (talk metadata lines, then the <seg> lines).
as_iwslt_xml() {
  awk 'BEGIN { print "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"; print "<mteval>";
               print "<srcset setid=\"smoke\" srclang=\"any\">"; print "<doc docid=\"1\" genre=\"lectures\">";
               print "<url>http://www.ted.com/talks/smoke</url>"; print "<talkid>1</talkid>" }
       { printf "<seg id=\"%d\"> %s </seg>\n", NR, $0 }
       END { print "</doc>"; print "</srcset>"; print "</mteval>" }' "$1" >"$2"
}

# as_iwslt_tags IN OUT: -> IWSLT train.tags file (a talk's metadata lines every 100 sentences).
as_iwslt_tags() {
  awk '(NR - 1) % 100 == 0 { n++; printf "<url>http://www.ted.com/talks/smoke%d</url>\n<keywords>smoke</keywords>\n", n;
                             printf "<talkid>%d</talkid>\n<title>Talk %d</title>\n", n, n }
       { print }' "$1" >"$2"
}

# Models of the smoke runs: seconds per stage on one CPU core, nothing more.
SMOKE_TRAIN_ARGS="--optimizer adam --lr 0.005 --lr-scheduler inverse_sqrt --warmup-updates 10
  --max-tokens 2000 --criterion label_smoothed_cross_entropy --label-smoothing 0.1
  --log-interval 10 --no-progress-bar --seed 1 --num-workers 0"

# smoke_settings: the tiny models, updates and beams of a SMOKE=1 run (overridable as usual).
smoke_settings() {
  if [ "$ARCH" = lstm ]; then
    TEACHER_ARCH="${TEACHER_ARCH:-$(lstm_arch 1 32 0.1)}"
    STUDENT_ARCH="${STUDENT_ARCH:-$(lstm_arch 1 16 0.1)}"
  else
    TEACHER_ARCH="${TEACHER_ARCH:-$(transformer_arch 1 32 64 2 0.1)}"
    STUDENT_ARCH="${STUDENT_ARCH:-$(transformer_arch 1 16 32 2 0.1)}"
  fi
  TRAIN_ARGS="${TRAIN_ARGS:-$SMOKE_TRAIN_ARGS}"
  TEACHER_STEPS="${TEACHER_STEPS:---max-epoch 3}"
  STUDENT_STEPS="${STUDENT_STEPS:---max-epoch 2}"
  FINETUNE_STEPS="${FINETUNE_STEPS:---max-epoch 1}"
  # as the full recipes: fine-tunes at a fixed rate, the pruned retraining at its own, pruning
  # gradually (a ramp of 2 updates: 70% after the first, 80% from the second on)
  FINETUNE_ARGS="${FINETUNE_ARGS---lr-scheduler fixed --lr 0.001}"
  PRUNE_ARGS="${PRUNE_ARGS---lr 0.002 --prune-ramp-updates 2 --prune-interval 1}"
  DISTILL_ARGS="${DISTILL_ARGS---label-smoothing 0}"
  SEQ_INTER_BEAM="${SEQ_INTER_BEAM:-4}"
  # an untrained model repeats itself up to fairseq's 200-token limit: bound outputs by the source
  GEN_ARGS="${GEN_ARGS:---batch-size 128 --max-len-a 1 --max-len-b 5}"
  PRUNE_CURVE="${PRUNE_CURVE:-0.8}"
  VOCAB_SIZE="${VOCAB_SIZE:-300}"
}

# ---- the data step ----

# all_present "FILE ...": whether every file exists.
all_present() { local f; for f in $1; do [ -e "$f" ] || return 1; done; }

# prepare_data: clean, sentencepiece and encode TRAIN_FILES/VALID_FILES/TEST_FILES into $TOK. Each
# variable lists (source, target) file pairs, paths without spaces; several pairs are concatenated.
prepare_data() {
  local args=() split var files i
  for split in train valid test; do
    var="${split^^}_FILES"
    # shellcheck disable=SC2206  # the list is split on any whitespace, newlines included
    files=(${!var})
    if [ ${#files[@]} -eq 0 ] || [ $(( ${#files[@]} % 2 )) -ne 0 ]; then
      log "error: $var must list (source, target) file pairs; it is: '${!var}'"
      return 1
    fi
    for ((i = 0; i < ${#files[@]}; i += 2)); do args+=(--"$split" "${files[i]}" "${files[i + 1]}"); done
  done
  # shellcheck disable=SC2086
  fairseq-seqkd prepare "$TOK" --src "$SRC" --tgt "$TGT" "${args[@]}" --vocab-size "$VOCAB_SIZE" $PREPARE_ARGS
}

# recipe_defaults: device and training settings every recipe shares; call after the recipe's own.
recipe_defaults() {
  case "$ARCH" in transformer|lstm) ;; *) echo "error: ARCH=$ARCH: use transformer or lstm" >&2; exit 2;; esac
  TRAIN_ARGS="$TRAIN_ARGS ${EXTRA_TRAIN_ARGS:-}"  # e.g. --update-freq 4, or the --distributed-* options
  if gpu_present; then
    DEVICE_ARGS="${DEVICE_ARGS-}"
    # half precision on GPU, for training only (generation and caching run as DEVICE_ARGS says)
    TRAIN_ARGS="$TRAIN_ARGS ${FP16_ARGS---fp16}"
  else
    DEVICE_ARGS="${DEVICE_ARGS---cpu}"
  fi
  # CTranslate2 converts transformers only: an LSTM student is exported for fairseq alone
  if [ "$ARCH" = lstm ]; then EXPORT_CT2="${EXPORT_CT2:-0}"; else EXPORT_CT2="${EXPORT_CT2:-1}"; fi
  POST_PROCESS=sentencepiece
  TEST_REF="$TOK/test.raw.$TGT"
  TEST_SRC="$TOK/test.raw.$SRC"
  BLEU_TOKENIZE="${BLEU_TOKENIZE:-13a}"
  PREPARE_ARGS="${PREPARE_ARGS:-}"
}

# recipe_main DOWNLOAD SMOKE_LAYOUT: get the data (the function DOWNLOAD, or with SMOKE=1 the
# toy corpus written by SMOKE_LAYOUT into the same file names) unless it is there, prepare it,
# then run every stage of recipes/pipeline.sh.
recipe_main() {
  if [ ! -e "$RUN/.stages/prepare" ] && ! all_present "$TRAIN_FILES $VALID_FILES $TEST_FILES"; then
    if [ "$SMOKE" = 1 ]; then "$2"; else "$1"; fi
  fi
  run_stage prepare prepare_data
  seqkd_pipeline
}
