#!/usr/bin/env bash
# The Kim & Rush (2016) pipeline over a tokenized corpus, with fairseq's commands and the plugin.
#
# Sourced by the recipes (recipes/*.sh) and the demo (examples/toy/demo.sh) after they set the
# variables below; `seqkd_pipeline` then runs every stage. Each stage records a marker in
# $RUN/.stages when it completes, so a killed run resumes where it stopped (fairseq-train itself
# resumes from checkpoint_last.pt). Delete a marker to redo that stage.
#
# Required: RUN, TOK (folder with {train,valid,test}.{SRC,TGT}, tokenized as the models see
#   them), SRC, TGT, TEST_REF (detokenized reference of the test set), TEST_SRC (source text
#   whose words words/s counts), TEACHER_ARCH, STUDENT_ARCH, TRAIN_ARGS, TEACHER_STEPS,
#   STUDENT_STEPS, FINETUNE_STEPS (fairseq options, e.g. "--max-epoch 8").
# Optional: DEVICE_ARGS (default --cpu), POST_PROCESS (e.g. sentencepiece), GEN_ARGS,
#   SEQKD_BEAM (5), SEQ_INTER_BEAM (35), KD_ALPHA (0.5), KD_TOPK (8), PRUNE_RATIO (0.8),
#   PRUNE_SCHEME (class-blind), PRUNE_STEPS, PRUNE_CURVE ("0.5 0.6 0.7 0.8 0.9"),
#   NUM_SHARDS (1) and SHARD_ID (all shards when unset), PAPER (e.g. wmt14_en_de),
#   STAGES (space-separated subset to run; default all), BLEU_TOKENIZE (13a),
#   TRAIN_LAUNCHER (prefix for fairseq-train, e.g. srun or "torchrun --no-python ..."),
#   EXPORT_CT2 (1; 0 for lstm models, which CTranslate2 does not convert),
#   FINETUNE_ARGS (fairseq options for every fine-tune: Seq-Inter, the combined student and the
#   pruned retraining; e.g. a fixed learning rate, since --finetune-from-model starts a fresh
#   scheduler and inverse_sqrt would warm up to its peak again and undo the student).
#   PRUNE_ARGS (more fairseq options for the pruned retraining only, after FINETUNE_ARGS, e.g. its
#   own --lr).
#   DISTILL_ARGS (fairseq options for the students that learn from the teacher's translations:
#   Seq-KD, Seq-Inter, the combined student and the pruned retraining; e.g. --label-smoothing 0,
#   the paper's plain likelihood on the teacher's output, where smoothing would spread the
#   student's probability off the teacher's mode).

set -euo pipefail

PLUGIN="${PLUGIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../fairseq_seqkd" && pwd)}"
DEVICE_ARGS="${DEVICE_ARGS---cpu}"
POST_PROCESS="${POST_PROCESS:-}"
GEN_ARGS="${GEN_ARGS:---batch-size 128}"
SEQKD_BEAM="${SEQKD_BEAM:-5}"
SEQ_INTER_BEAM="${SEQ_INTER_BEAM:-35}"
KD_ALPHA="${KD_ALPHA:-0.5}"
KD_TOPK="${KD_TOPK:-8}"
PRUNE_RATIO="${PRUNE_RATIO:-0.8}"
PRUNE_SCHEME="${PRUNE_SCHEME:-class-blind}"
PRUNE_CURVE="${PRUNE_CURVE:-0.5 0.6 0.7 0.8 0.9}"
NUM_SHARDS="${NUM_SHARDS:-1}"
BLEU_TOKENIZE="${BLEU_TOKENIZE:-13a}"
PAPER="${PAPER:-}"
STAGES="${STAGES:-data teacher baseline word_kd seq_kd seq_inter combined pruned export report}"

# fairseq drops up to 7 sentences per split unless the batch size multiple is 1.
NO_DROP="--required-batch-size-multiple 1"

log() { printf '%s | pipeline | %s\n' "$(date '+%F %T')" "$*" >&2; }

# run_stage NAME CMD...: run CMD unless NAME completed before; its log is appended to $RUN/logs/NAME.log.
run_stage() {
  local name="$1"; shift
  local marker="$RUN/.stages/$name"
  if [ -e "$marker" ]; then log "$name: done before, skipped (rm $marker to redo)"; return 0; fi
  mkdir -p "$RUN/.stages" "$RUN/logs"
  log "$name: running (log: $RUN/logs/$name.log)"
  local t0=$SECONDS
  # appended, not overwritten: a resumed stage keeps the log of the attempt before it
  printf '==== %s | %s\n' "$(date '+%F %T')" "$*" >>"$RUN/logs/$name.log"
  if ! "$@" >>"$RUN/logs/$name.log" 2>&1; then
    log "$name: FAILED after $((SECONDS - t0)) s; last lines of $RUN/logs/$name.log:"
    tail -n 25 "$RUN/logs/$name.log" >&2
    return 1
  fi
  touch "$marker"
  log "$name: done in $((SECONDS - t0)) s"
}

want() { [[ " $STAGES " == *" $1 "* ]]; }

preprocess() {  # preprocess DEST [TRAINPREF]: binarize with one joined dictionary
  local dest="$1" trainpref="${2:-$TOK/train}"
  if [ "$trainpref" = "$TOK/train" ]; then
    fairseq-preprocess --source-lang "$SRC" --target-lang "$TGT" --trainpref "$trainpref" \
      --validpref "$TOK/valid" --testpref "$TOK/test" --destdir "$dest" --joined-dictionary --workers 2
  fi
}

train() {  # train SAVE_DIR DATA ARCH STEPS [extra fairseq-train options...]
  local save="$1" data="$2" arch="$3" steps="$4"; shift 4
  # shellcheck disable=SC2086
  ${TRAIN_LAUNCHER:-} fairseq-train "$data" --user-dir "$PLUGIN" --task translation_kd --source-lang "$SRC" --target-lang "$TGT" \
    $arch $TRAIN_ARGS $steps $DEVICE_ARGS $NO_DROP --save-dir "$save" --no-epoch-checkpoints "$@"
}

generate() {  # generate CKPT SUBSET BEAM OUT [extra options]: every sentence, 1-best first
  local ckpt="$1" subset="$2" beam="$3" out="$4"; shift 4
  # shellcheck disable=SC2086
  fairseq-generate "$RUN/data-bin" --user-dir "$PLUGIN" --task translation_kd --source-lang "$SRC" \
    --target-lang "$TGT" --path "$ckpt" --gen-subset "$subset" --beam "$beam" --nbest 1 \
    $GEN_ARGS $DEVICE_ARGS $NO_DROP "$@" >"$out.tmp" 2>"$out.log"
  mv "$out.tmp" "$out"
}

evaluate() {  # evaluate NAME CKPT: BLEU greedy and beam 5, perplexity, parameters
  local name="$1" ckpt="$2"
  mkdir -p "$RUN/eval"
  generate "$ckpt" test 1 "$RUN/eval/$name.greedy.txt" "${POST_ARGS[@]}"
  generate "$ckpt" test 5 "$RUN/eval/$name.beam.txt" "${POST_ARGS[@]}"
  # shellcheck disable=SC2086
  fairseq-validate "$RUN/data-bin" --user-dir "$PLUGIN" --task translation_kd --source-lang "$SRC" \
    --target-lang "$TGT" --path "$ckpt" --valid-subset test --max-tokens 8000 $DEVICE_ARGS $NO_DROP \
    >"$RUN/eval/$name.validate.txt" 2>&1
  fairseq-seqkd evaluate --greedy-output "$RUN/eval/$name.greedy.txt" --beam-output "$RUN/eval/$name.beam.txt" \
    --ref "$TEST_REF" --src "$TEST_SRC" --tokenize "$BLEU_TOKENIZE" --name "$name" --checkpoint "$ckpt" \
    --validate-log "$RUN/eval/$name.validate.txt" --results-dir "$RUN/results"
}

# check_export: the exported student runs in stock fairseq-generate (no --user-dir, task
# translation) on every test sentence.
check_export() {
  # shellcheck disable=SC2086
  fairseq-generate "$RUN/data-bin" --task translation --source-lang "$SRC" --target-lang "$TGT" \
    --path "$RUN/export/student.pt" --gen-subset test --beam 1 $GEN_ARGS $DEVICE_ARGS $NO_DROP \
    "${POST_ARGS[@]}" >"$RUN/eval/export.stock-fairseq.txt" 2>"$RUN/eval/export.stock-fairseq.log"
  fairseq-seqkd evaluate "$RUN/eval/export.stock-fairseq.txt" --log "$RUN/eval/export.stock-fairseq.log" --ref "$TEST_REF" --src "$TEST_SRC" \
    --name stock_fairseq --decoding greedy --tokenize "$BLEU_TOKENIZE" --results-dir "$RUN/eval/export-check"
}

evaluate_ct2() {  # evaluate_ct2 NAME CT2_DIR CKPT: the deployed student, greedy and beam 5
  local name="$1" model="$2" ckpt="$3" dec beam
  for dec in greedy beam; do
    beam=1; [ "$dec" = beam ] && beam=5
    fairseq-seqkd ct2-translate "$model" "$TOK/test.$SRC" --out "$RUN/eval/$name.$dec.txt" --beam "$beam" \
      --batch-size 128 ${POST_PROCESS:+--post-process "$POST_PROCESS"}
  done
  fairseq-seqkd evaluate --greedy-output "$RUN/eval/$name.greedy.txt" --beam-output "$RUN/eval/$name.beam.txt" \
    --ref "$TEST_REF" --src "$TEST_SRC" --tokenize "$BLEU_TOKENIZE" --name "$name" --checkpoint "$ckpt" \
    --results-dir "$RUN/results"
}

# The checkpoint a stage passes on. The teacher: its best by validation loss. A student: its last.
# Students train a fixed budget, and the validation loss is measured against the references,
# which a Seq-KD student learns not to reproduce (its loss there stops falling while it is still
# concentrating on the teacher's translations); a loss-picked checkpoint would stop it early, and
# every student is picked the same way.
best() { echo "$RUN/$1/checkpoint_best.pt"; }
last() { echo "$RUN/$1/checkpoint_last.pt"; }

# shards_to_run: the shard ids this process generates (SHARD_ID set: that one, e.g. a SLURM array task)
shards_to_run() { if [ -n "${SHARD_ID:-}" ]; then echo "$SHARD_ID"; else seq 0 $((NUM_SHARDS - 1)); fi; }

# generate_train NAME CKPT BEAM [options]: the teacher translates the training set, one stage per
# shard (a shard that died is rerun alone), with fairseq's own --num-shards/--shard-id.
generate_train() {
  local name="$1" ckpt="$2" beam="$3" i; shift 3
  mkdir -p "$RUN/$name-gen"
  for i in $(shards_to_run); do
    run_stage "$name.generate.shard$i" generate "$ckpt" train "$beam" "$RUN/$name-gen/shard$i.txt" \
      --num-shards "$NUM_SHARDS" --shard-id "$i" "$@"
  done
}

# extract NAME: merge the shards into a corpus in the original order, checked, binarized with
# the original dictionaries into $RUN/data-bin-NAME.
extract_corpus() {
  local name="$1"
  fairseq-seqkd extract "$RUN/$name-gen" --num-shards "$NUM_SHARDS" --data "$RUN/data-bin" \
    --source-lang "$SRC" --target-lang "$TGT" --out "$RUN/data-bin-$name"
}

# finetune SAVE DATA FROM STEPS [options]: start from FROM's weights (fresh optimizer, scheduler
# and data), with $FINETUNE_ARGS
finetune() {
  local save="$1" data="$2" from="$3" steps="$4"; shift 4
  # shellcheck disable=SC2086
  train "$save" "$data" "$STUDENT_ARCH" "$steps" --finetune-from-model "$from" ${FINETUNE_ARGS:-} "$@"
}

prune_curve() {  # offline pruning at several ratios, no retraining, greedy: the pruning curve
  local ckpt="$1" r
  mkdir -p "$RUN/curve"
  for r in $PRUNE_CURVE; do
    fairseq-seqkd prune "$ckpt" --ratio "$r" --scheme "$PRUNE_SCHEME" --out "$RUN/curve/r$r.pt"
    generate "$RUN/curve/r$r.pt" test 1 "$RUN/curve/r$r.greedy.txt" "${POST_ARGS[@]}"
    fairseq-seqkd evaluate "$RUN/curve/r$r.greedy.txt" --log "$RUN/curve/r$r.greedy.txt.log" --ref "$TEST_REF" \
      --src "$TEST_SRC" --name "r$r" --decoding greedy --tokenize "$BLEU_TOKENIZE" --set "prune_ratio=$r" \
      --results-dir "$RUN/results/curve"
  done
}

seqkd_pipeline() {
  : "${RUN:?}" "${TOK:?}" "${SRC:?}" "${TGT:?}" "${TEST_REF:?}" "${TEST_SRC:?}"
  : "${TEACHER_ARCH:?}" "${STUDENT_ARCH:?}" "${TRAIN_ARGS:?}" "${TEACHER_STEPS:?}" "${STUDENT_STEPS:?}"
  : "${FINETUNE_STEPS:?}"
  PRUNE_STEPS="${PRUNE_STEPS:-$FINETUNE_STEPS}"
  POST_ARGS=()
  [ -n "$POST_PROCESS" ] && POST_ARGS=(--post-process "$POST_PROCESS")
  mkdir -p "$RUN"
  log "run folder: $RUN"
  local kd=(--criterion word_kd --kd-alpha "$KD_ALPHA")

  want data && run_stage data preprocess "$RUN/data-bin"

  if want teacher; then
    run_stage teacher.train train "$RUN/teacher" "$RUN/data-bin" "$TEACHER_ARCH" "$TEACHER_STEPS"
    run_stage teacher.eval evaluate teacher "$(best teacher)"
  fi
  if [ -n "${SHARD_ID:-}" ]; then  # one shard of the teacher's work (a SLURM array task): only that
    want seq_kd && generate_train seqkd "$(best teacher)" "$SEQKD_BEAM"
    want seq_inter && generate_train seqinter "$(best teacher)" "$SEQ_INTER_BEAM" --seq-inter
    return 0
  fi
  if want baseline; then
    run_stage baseline.train train "$RUN/baseline" "$RUN/data-bin" "$STUDENT_ARCH" "$STUDENT_STEPS"
    run_stage baseline.eval evaluate baseline "$(last baseline)"
  fi
  if want word_kd; then
    run_stage word_kd.cache fairseq-seqkd cache "$RUN/data-bin" --path "$(best teacher)" --split train \
      --topk "$KD_TOPK" --out "$RUN/cache" $DEVICE_ARGS
    run_stage word_kd.train train "$RUN/word_kd" "$RUN/data-bin" "$STUDENT_ARCH" "$STUDENT_STEPS" \
      --teacher-cache "$RUN/cache" "${kd[@]}"
    run_stage word_kd.eval evaluate word_kd "$(last word_kd)"
  fi
  if want seq_kd; then
    generate_train seqkd "$(best teacher)" "$SEQKD_BEAM"
    run_stage seq_kd.extract extract_corpus seqkd
    # shellcheck disable=SC2086
    run_stage seq_kd.train train "$RUN/seq_kd" "$RUN/data-bin-seqkd" "$STUDENT_ARCH" "$STUDENT_STEPS" \
      ${DISTILL_ARGS:-}
    run_stage seq_kd.eval evaluate seq_kd "$(last seq_kd)"
  fi
  if want seq_inter; then
    generate_train seqinter "$(best teacher)" "$SEQ_INTER_BEAM" --seq-inter
    run_stage seq_inter.extract extract_corpus seqinter
    # shellcheck disable=SC2086
    run_stage seq_inter.train finetune "$RUN/seq_inter" "$RUN/data-bin-seqinter" "$(last baseline)" \
      "$FINETUNE_STEPS" ${DISTILL_ARGS:-}
    run_stage seq_inter.eval evaluate seq_inter "$(last seq_inter)"
  fi
  local combined=seq_kd_seq_inter_word_kd
  if want combined; then
    run_stage combined.cache fairseq-seqkd cache "$RUN/data-bin-seqinter" --path "$(best teacher)" \
      --split train --topk "$KD_TOPK" --out "$RUN/cache-seqinter" $DEVICE_ARGS
    # shellcheck disable=SC2086
    run_stage combined.train finetune "$RUN/$combined" "$RUN/data-bin-seqinter" "$(last seq_kd)" \
      "$FINETUNE_STEPS" --teacher-cache "$RUN/cache-seqinter" "${kd[@]}" ${DISTILL_ARGS:-}
    run_stage combined.eval evaluate "$combined" "$(last $combined)"
  fi
  if want pruned; then
    run_stage pruned.curve prune_curve "$(last $combined)"
    # shellcheck disable=SC2086
    run_stage pruned.train finetune "$RUN/pruned" "$RUN/data-bin-seqkd" "$(last $combined)" "$PRUNE_STEPS" \
      --prune-ratio "$PRUNE_RATIO" --prune-scheme "$PRUNE_SCHEME" ${DISTILL_ARGS:-} ${PRUNE_ARGS:-}
    run_stage pruned.eval evaluate pruned "$(last pruned)"
  fi
  if want export; then
    if [ "${EXPORT_CT2:-1}" = 1 ]; then
      run_stage export fairseq-seqkd export "$(last pruned)" --out "$RUN/export/student.pt" \
        --ct2 "$RUN/export/ct2-int8" --quantization int8
    else  # CTranslate2 converts fairseq transformers only (not lstm)
      run_stage export fairseq-seqkd export "$(last pruned)" --out "$RUN/export/student.pt"
    fi
    run_stage export.check check_export
    if [ "${EXPORT_CT2:-1}" = 1 ]; then
      run_stage export.eval evaluate_ct2 pruned_ct2_int8 "$RUN/export/ct2-int8" "$RUN/export/student.pt"
    fi
  fi
  if want report; then
    fairseq-seqkd report "$RUN" ${PAPER:+--paper "$PAPER"} >"$RUN/logs/report.log"
    cat "$RUN/report.md"
  fi
  return 0
}
