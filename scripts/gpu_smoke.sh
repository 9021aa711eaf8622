#!/usr/bin/env bash
# GPU smoke test: every CUDA path of fairseq-seqkd once, on tiny models (a few minutes on one GPU).
#
# Usage: scripts/gpu_smoke.sh [OUT_DIR]          (or: make gpu-check [GPU_CHECK_DIR=...])
#   OUT_DIR (default runs/gpu_smoke) gets the toy data, the models, logs/NAME.log per path and
#   summary.tsv (path, result, seconds, note). Prints PASS, FAIL or SKIP (with the reason) per path
#   and a summary table.
#   Exit status: 0 nothing failed (skips allowed); 1 some path failed; 0 with "no GPU: nothing to
#   check" where torch sees no CUDA device.
#   GPU_SMOKE_ALLOW_CPU=1: with no GPU, run the same commands on CPU without the half-precision
#   flags (--fp16, --amp, --memory-efficient-fp16 dropped; --cpu added): it checks the commands,
#   paths and checks of this script, not the CUDA paths themselves; the checks that only mean
#   something on a GPU (2 GPUs, fp16/amp losses against fp32, max_memory_reserved, the GPU BLEU
#   test) run what they can on CPU and report SKIP with the reason.
#   GPU_SMOKE_ONLY="NAME ...": run only these paths, in the work folder of an earlier run (for a
#   rerun of one failed path). It uses the fairseq-* commands on PATH, else those of the repository's
#   .venv. The trainings validate every epoch and load data in a worker process (--num-workers 1), as
#   the WMT14 recipe does.
#
# Paths (one line each in the summary):
#   data              toy corpus (fairseq-seqkd toy-corpus) binarized by fairseq-preprocess
#   train_fp16        fairseq-train --fp16 (the teacher): FP16Optimizer, fairseq's flat fp32 master copy
#   train_fp32        a student trained in fp32 (the model of the loss comparison)
#   cache_fp32        fairseq-seqkd cache on the GPU in fp32
#   cache_fp16        the same with --fp16 and a loader worker
#   cache_compare     the two caches: same sentences and tokens, top-1 ids agree, top-k distributions close
#   kd_cache_{fp16,amp,mefp16}   word_kd from the cache under --fp16 / --amp / --memory-efficient-fp16
#   kd_online_{fp16,amp,mefp16}  word_kd with the online teacher, full vocabulary (--kd-topk 0),
#                                --kd-temperature 2 (the chunked KD loss on the GPU)
#   loss_{ce,kd_cache,kd_online} one fixed batch's loss (label-smoothed CE; word_kd from the cache; the
#                                online teacher at T=2) in fp32 and under --fp16 and --amp: FAIL beyond
#                                LOSS_TOLERANCE relative (scripts/gpu_smoke_checks.py losses)
#   prune_{fp16,amp,mefp16}      --prune-ratio 0.8 retraining from the teacher, then a resume: the
#                                pruned weights exactly 0 in both checkpoints, masks restored, fairseq's
#                                "Loaded checkpoint ... @ 15 updates"
#   finetune_fp16     --finetune-from-model the teacher (as every Seq-Inter row), then a resume
#   ddp2_kd_prune     2 GPUs (fairseq's own spawn, NCCL): word_kd from the cache, --prune-ratio, fine-tuned
#                     from the teacher, --fp16; SKIP with fewer than 2 GPUs
#   ddp2_resume       the same save dir again on 2 GPUs: the broadcast checkpoint resumed, masks restored
#   seq_inter         fairseq-generate --seq-inter (beam 5) on the GPU: every test sentence
#   beam35_memory     beam 35 over the worst batch of the recipes' generate_args on a transformer-base in
#                     fp16: torch.cuda.max_memory_reserved() beside benchmarks/beam_memory.py's prediction,
#                     FAIL above it by more than a third (scripts/gpu_smoke_checks.py beam-memory)
#   export            fairseq-seqkd export of the fp16-trained pruned student (and --ct2 if
#                     ctranslate2 is installed); stock fairseq-generate (no --user-dir) on it
#   sentence_bleu_gpu the GPU test of tests/test_sentence_bleu.py (pytest)
# Every fp16/amp training's log is read for fairseq's skipped steps ("gradient overflow detected",
# "AMP: overflow detected"): the count is printed, and the path FAILs when more than
# MAX_OVERFLOW_PCT percent of its steps overflowed or "Minimum loss scale reached" appears (fairseq
# skips a NaN batch as an overflow: a finite logged loss does not mean none was NaN).

# ${PREC[...]} is one option, or nothing in CPU mode: expanded unquoted on purpose
# shellcheck disable=SC2086
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-runs/gpu_smoke}"
mkdir -p "$OUT/logs"
OUT="$(cd "$OUT" && pwd)"
LOGS="$OUT/logs"
PLUGIN="$ROOT/fairseq_seqkd"
# the project's venv, when there is one and it is not on PATH yet
if [ -x "$ROOT/.venv/bin/fairseq-train" ] && ! command -v fairseq-seqkd >/dev/null; then
    PATH="$ROOT/.venv/bin:$PATH"
fi
PY="${PYTHON:-$(command -v python || command -v python3)}"
LIMIT="${GPU_SMOKE_TIMEOUT:-300}"  # seconds per command
LOSS_TOLERANCE=5e-3   # largest relative difference of a half-precision loss from fp32 on one batch (as tests/test_fp16.py on a GPU)
MAX_OVERFLOW_PCT=20   # largest share of a half-precision training's steps that may overflow (percent)
SKIP=77               # a step's exit status for "skipped"

if ! GPUS="$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>"$LOGS/torch.log")"; then
    echo "gpu_smoke: cannot import torch with $PY (see $LOGS/torch.log)" >&2
    exit 2
fi
if [ "$GPUS" -gt 0 ]; then
    MODE=gpu
    DEV=()
    CACHE_DEV=()
    declare -A PREC=([fp16]="--fp16" [amp]="--amp" [mefp16]="--memory-efficient-fp16")
    CACHE_FP16=(--fp16)
    command -v nvidia-smi >/dev/null && nvidia-smi >"$LOGS/nvidia-smi.log" 2>&1
    # one GPU per path (fairseq-train starts a process per visible GPU), the first two for the 2-GPU paths
    IFS=, read -r -a VISIBLE <<<"${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $((GPUS - 1)))}"
    TWO_GPUS="${VISIBLE[0]},${VISIBLE[1]:-}"
    export CUDA_VISIBLE_DEVICES="${VISIBLE[0]}"
elif [ "${GPU_SMOKE_ALLOW_CPU:-0}" = 1 ]; then
    MODE=cpu
    echo "gpu_smoke: no GPU; GPU_SMOKE_ALLOW_CPU=1: the same commands on CPU, without half precision"
    DEV=(--cpu)
    CACHE_DEV=(--cpu)
    declare -A PREC=([fp16]="" [amp]="" [mefp16]="")
    CACHE_FP16=()
    TWO_GPUS=
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
else
    echo "no GPU: nothing to check (torch sees no CUDA device; GPU_SMOKE_ALLOW_CPU=1 runs the commands on CPU)"
    exit 0
fi

W="$OUT/work"
DATA="$W/data-bin"
TEACHER="$W/teacher/checkpoint_last.pt"
TEST_SENTENCES=61
TINY=(--arch transformer --share-all-embeddings --encoder-layers 1 --decoder-layers 1
      --encoder-embed-dim 64 --decoder-embed-dim 64 --encoder-ffn-embed-dim 128 --decoder-ffn-embed-dim 128
      --encoder-attention-heads 2 --decoder-attention-heads 2)
# validation every epoch and one loader worker: fairseq's defaults, which the WMT14 recipe keeps
TRAIN=(--user-dir "$PLUGIN" --optimizer adam --lr 0.005 --lr-scheduler inverse_sqrt
       --warmup-updates 10 --max-tokens 2000 --required-batch-size-multiple 1 --no-progress-bar
       --log-interval 5 --seed 1 --no-epoch-checkpoints --num-workers 1 "${DEV[@]}")
KD=(--task translation_kd --criterion word_kd --kd-alpha 0.5 --label-smoothing 0.1)
# the teacher's translations keep fairseq's loader worker; evaluations run without (recipes/Snakefile)
GEN=(--gen-subset test --beam 5 --nbest 1 --max-tokens 2000 --required-batch-size-multiple 1 "${DEV[@]}")

NAMES=()
RESULTS=()
SECS=()
NOTES=()

# check NAME FUNCTION [ARGS...]: run FUNCTION with its output in logs/NAME.log; record PASS, FAIL or
# SKIP (exit status $SKIP), with the notes it left (note ...)
check() {
    local name=$1 t0=$SECONDS result rc text=
    shift
    if [ -n "${GPU_SMOKE_ONLY:-}" ] && [[ " $GPU_SMOKE_ONLY " != *" $name "* ]]; then return; fi
    export NOTE_FILE="$W/notes/$name"
    rm -f "$NOTE_FILE"
    (cd "$W" && "$@") >"$LOGS/$name.log" 2>&1
    rc=$?
    case $rc in 0) result=PASS ;; "$SKIP") result=SKIP ;; *) result=FAIL ;; esac
    [ -f "$NOTE_FILE" ] && text=$(awk 'NR > 1 { printf "; " } { printf "%s", $0 }' "$NOTE_FILE")
    NAMES+=("$name")
    RESULTS+=("$result")
    SECS+=($((SECONDS - t0)))
    NOTES+=("$text")
    printf 'gpu_smoke: %-18s %s (%ds)%s%s\n' "$name" "$result" $((SECONDS - t0)) "${text:+  $text}" \
        "$([ "$result" = FAIL ] && echo "  see $LOGS/$name.log")"
}

note() {  # a line for the summary of the path that runs
    echo "note: $*"
    echo "$*" >>"$NOTE_FILE"
}

run() {  # a command with the per-command time limit, echoed into the log
    echo "+ $*"
    timeout "$LIMIT" "$@"
}

no_nan() {  # a fairseq-train log without a nan/inf loss and with its final update
    ! grep -E "loss (nan|inf)|nll_loss (nan|inf)|kd_loss (nan|inf)" "$1" && grep -q "done training" "$1"
}

overflows() {  # overflows LOG: fairseq's skipped (overflowed) steps in one fairseq-train log, counted
    local log=$1 n first last steps
    n=$(grep -cE "gradient overflow detected|AMP: overflow detected" "$log")
    last=$(grep -oE "num_updates [0-9]+" "$log" | tail -n 1 | grep -oE "[0-9]+")
    # a resumed run starts at the loaded checkpoint's updates
    first=$(grep -oE "Loaded checkpoint .* @ [0-9]+ updates" "$log" | tail -n 1 | grep -oE "[0-9]+ updates$" |
            grep -oE "[0-9]+")
    steps=$((${last:-0} - ${first:-0} + n))
    note "$(basename "$log" .log): $n of $steps steps overflowed"
    if grep -q "Minimum loss scale reached" "$log"; then
        echo "$log: fairseq reached the minimum loss scale"
        return 1
    fi
    if [ $((n * 100)) -gt $((MAX_OVERFLOW_PCT * steps)) ]; then
        echo "$log: $n of $steps steps overflowed, more than $MAX_OVERFLOW_PCT%"
        return 1
    fi
}

train() {  # train LOG ARGS...: fairseq-train ARGS teed to LOG; it finished, no nan/inf loss, overflows counted
    local log=$1
    shift
    run fairseq-train "$@" 2>&1 | tee "$log"
    [ "${PIPESTATUS[0]}" = 0 ] && no_nan "$log" && overflows "$log"
}

resumed_at() {  # resumed_at LOG N: fairseq resumed the save dir's checkpoint at N updates
    grep -E "Loaded checkpoint .* @ $2 updates\)" "$1" && return
    echo "$1: no 'Loaded checkpoint ... @ $2 updates'"
    return 1
}

step_data() {
    run fairseq-seqkd toy-corpus raw --train-size 800 --valid-size 64 --test-size "$TEST_SENTENCES" &&
    run fairseq-preprocess --source-lang en --target-lang de --trainpref raw/train --validpref raw/valid \
        --testpref raw/test --destdir "$DATA" --joined-dictionary --workers 1
}

step_train_fp16() {
    train teacher.log "$DATA" --task translation "${TINY[@]}" "${TRAIN[@]}" ${PREC[fp16]} --max-update 60 \
        --save-dir teacher || return 1
    grep -q "valid on 'valid' subset" teacher.log || { echo "no validation in teacher.log"; return 1; }
    run "$PY" - "$TEACHER" "$MODE" <<'EOF'
import sys
from fairseq_seqkd.checkpoints.storage import load_checkpoint
state = load_checkpoint(sys.argv[1])
name = state["optimizer_history"][-1]["optimizer_name"]
print("optimizer:", name, "| updates:", state["optimizer_history"][-1]["num_updates"])
# FP16Optimizer is fairseq's fp16 with a flat fp32 master copy of the weights
assert sys.argv[2] != "gpu" or name == "FP16Optimizer", name
assert sys.argv[2] != "gpu" or "loss_scale" in state["last_optimizer_state"], "no loss scale saved"
EOF
}

step_train_fp32() {  # the student whose losses are compared across precisions
    train student32.log "$DATA" --task translation "${TINY[@]}" "${TRAIN[@]}" --max-update 30 --save-dir student32
}

step_cache() {  # step_cache OUT_FOLDER [OPTIONS]
    local out=$1
    shift
    run fairseq-seqkd cache "$DATA" --path "$TEACHER" --split train --out "$out" --topk 8 --max-tokens 4000 \
        --no-progress-bar "${CACHE_DEV[@]}" "$@"
}

step_cache_compare() {
    run "$PY" - cache32 cache16 <<'EOF'
import sys
import numpy as np
from fairseq_seqkd.teacher_cache.reader import TeacherCache
a, b = TeacherCache(sys.argv[1], "train"), TeacherCache(sys.argv[2], "train")
assert len(a) == len(b) and a.num_tokens == b.num_tokens, (len(a), len(b))
same = total = 0
worst = 0.0
for i in range(len(a)):
    (ia, la), (ib, lb) = a[i], b[i]
    # format 3 stores log(p_i / p_1): the renormalised top-k distribution is their softmax
    pa, pb = (np.exp(x.astype(np.float64)) / np.exp(x.astype(np.float64)).sum(-1, keepdims=True) for x in (la, lb))
    same += int((ia[:, 0] == ib[:, 0]).sum())
    total += len(ia)
    worst = max(worst, float(np.abs(pa[:, 0] - pb[:, 0]).max()))
print(f"{len(a)} sentences, {total} tokens: top-1 ids agree on {same / total:.4f}, "
      f"largest difference of the top-1 share of the top-k {worst:.4f}")
assert same / total >= 0.98 and worst <= 0.05
EOF
}

step_kd() {  # step_kd NAME PRECISION ARGS...: word_kd training for 20 updates
    local name=$1 prec=$2
    shift 2
    train "$name.log" "$DATA" "${KD[@]}" "${TINY[@]}" "${TRAIN[@]}" ${PREC[$prec]} --max-update 20 \
        --save-dir "$name" "$@" && grep -q "kd_loss" "$name.log"
}

step_loss() {  # step_loss ARGS...: one batch's loss, fp32 against --fp16 and --amp (student32's weights)
    run "$PY" "$ROOT/scripts/gpu_smoke_checks.py" losses --checkpoint student32/checkpoint_last.pt \
        --tolerance "$LOSS_TOLERANCE" -- "$DATA" "${TINY[@]}" "${TRAIN[@]}" "$@" | tee loss.txt
    [ "${PIPESTATUS[0]}" = 0 ] || return 1
    note "$(tail -n 1 loss.txt)"
    if [ "$MODE" = cpu ]; then
        note "no GPU: fp16 and amp need CUDA"
        return "$SKIP"
    fi
}

check_pruned() {  # check_pruned CHECKPOINT UPDATES: pruned weights exactly 0, 80% pruned, N updates
    run "$PY" - "$1" "$2" <<'EOF'
import sys
import torch
from fairseq_seqkd.checkpoints.storage import load_checkpoint
from fairseq_seqkd.compress.pruning import find_checkpoint_masks, prunable_parameters
state = load_checkpoint(sys.argv[1])
masks, spec = find_checkpoint_masks(state)
params = prunable_parameters(state["model"].items())
total = sum(m.numel() for m in masks.values())
pruned = sum(int((~m).sum()) for m in masks.values())
nonzero = {n: int(torch.count_nonzero(params[n][~m])) for n, m in masks.items()}
updates = state["optimizer_history"][-1]["num_updates"]
print(f"{sys.argv[1]}: {updates} updates, {pruned / total:.4f} pruned, "
      f"{sum(nonzero.values())} pruned weights not 0, dtype {next(iter(params.values())).dtype}")
assert updates == int(sys.argv[2]) and abs(pruned / total - 0.8) < 0.01
assert not any(nonzero.values()), {n: c for n, c in nonzero.items() if c}
EOF
}

step_prune() {  # step_prune PRECISION: retrain pruned 15 updates, check; resume to 30, check
    local prec=$1 dir="prune_$1"
    train "$dir.log" "$DATA" --task translation_kd "${TINY[@]}" "${TRAIN[@]}" ${PREC[$prec]} --max-update 15 \
        --save-dir "$dir" --restore-file "$TEACHER" --reset-optimizer --prune-ratio 0.8 || return 1
    check_pruned "$dir/checkpoint_last.pt" 15 || return 1
    train "$dir.resume.log" "$DATA" --task translation_kd "${TINY[@]}" "${TRAIN[@]}" ${PREC[$prec]} \
        --max-update 30 --save-dir "$dir" --prune-ratio 0.8 || return 1
    resumed_at "$dir.resume.log" 15 && grep -q "masks restored from the checkpoint" "$dir.resume.log" &&
        check_pruned "$dir/checkpoint_last.pt" 30
}

updates_of() {  # updates_of CHECKPOINT N: the checkpoint is at N updates
    run "$PY" - "$1" "$2" <<'EOF'
import sys
from fairseq_seqkd.checkpoints.storage import load_checkpoint
updates = load_checkpoint(sys.argv[1])["optimizer_history"][-1]["num_updates"]
print(f"{sys.argv[1]}: {updates} updates")
assert updates == int(sys.argv[2])
EOF
}

step_finetune() {  # from the teacher (optimizer, schedule, data reset) 10 updates, then a resume to 20
    train finetune.log "$DATA" --task translation_kd "${TINY[@]}" "${TRAIN[@]}" ${PREC[fp16]} --max-update 10 \
        --save-dir finetune --finetune-from-model "$TEACHER" || return 1
    grep -q "loading pretrained model from $TEACHER" finetune.log || { echo "not fine-tuned from $TEACHER"; return 1; }
    updates_of finetune/checkpoint_last.pt 10 || return 1
    train finetune.resume.log "$DATA" --task translation_kd "${TINY[@]}" "${TRAIN[@]}" ${PREC[fp16]} \
        --max-update 20 --save-dir finetune --finetune-from-model "$TEACHER" || return 1
    resumed_at finetune.resume.log 10 && updates_of finetune/checkpoint_last.pt 20
}

two_gpus() {  # true where fairseq can spawn 2 GPU ranks, else a note with the reason
    if [ "$MODE" = cpu ]; then
        note "no GPU: 2-GPU DDP (NCCL) needs 2 GPUs"
        return 1
    fi
    if [ "$GPUS" -lt 2 ]; then
        note "torch sees $GPUS GPU: 2-GPU DDP (NCCL) needs 2"
        return 1
    fi
}

step_ddp2() {  # step_ddp2 UPDATES: word_kd from the cache, pruned, fine-tuned from the teacher, on 2 GPUs (NCCL)
    two_gpus || return "$SKIP"
    local log=ddp2.log
    [ "$1" = 10 ] || log=ddp2.resume.log
    CUDA_VISIBLE_DEVICES="$TWO_GPUS" train "$log" "$DATA" "${KD[@]}" "${TINY[@]}" "${TRAIN[@]}" ${PREC[fp16]} \
        --teacher-cache cache16 --prune-ratio 0.8 --finetune-from-model "$TEACHER" --max-update "$1" \
        --save-dir ddp2 --distributed-world-size 2 --distributed-backend nccl || return 1
    grep -q "training on 2 devices" "$log" || { echo "$log: not on 2 ranks"; return 1; }
    if [ "$1" != 10 ]; then
        resumed_at "$log" 10 && grep -q "masks restored from the checkpoint" "$log" || return 1
    fi
    check_pruned ddp2/checkpoint_last.pt "$1"
}

count_hypotheses() {  # count_hypotheses FILE: every test sentence translated
    local n
    n=$(grep -c '^H-' "$1")
    echo "$1: $n hypotheses of $TEST_SENTENCES"
    [ "$n" = "$TEST_SENTENCES" ]
}

step_seq_inter() {
    run fairseq-generate "$DATA" --user-dir "$PLUGIN" --task translation_kd --path "$TEACHER" "${GEN[@]}" \
        --seq-inter ${PREC[fp16]} >seq_inter.txt || return 1
    count_hypotheses seq_inter.txt
}

step_beam35_memory() {
    run "$PY" "$ROOT/scripts/gpu_smoke_checks.py" beam-memory | tee beam35.txt
    [ "${PIPESTATUS[0]}" = 0 ] || return 1
    note "$(tail -n 1 beam35.txt)"
    if [ "$MODE" = cpu ]; then
        note "no GPU: max_memory_reserved needs CUDA"
        return "$SKIP"
    fi
}

step_export() {
    local student="prune_fp16/checkpoint_last.pt" ct2=()
    [ -f "$student" ] || student="$TEACHER"
    if "$PY" -c "import ctranslate2" 2>/dev/null; then ct2=(--ct2 export/ct2); fi
    rm -rf export
    run fairseq-seqkd export "$student" --out export/student.pt "${ct2[@]}" || return 1
    # stock fairseq: no --user-dir; an evaluation, so no loader worker (recipes/Snakefile's ONE_PROCESS)
    run fairseq-generate "$DATA" --path export/student.pt "${GEN[@]}" --num-workers 0 ${PREC[fp16]} \
        >export.txt || return 1
    count_hypotheses export.txt
}

step_sentence_bleu_gpu() {
    run "$PY" -m pytest -q -rs -p no:cacheprovider \
        "$ROOT/tests/test_sentence_bleu.py::test_gpu_tensors_give_the_cpu_numbers" | tee bleu.txt
    if [ "$MODE" = gpu ]; then
        grep -q "1 passed" bleu.txt
        return
    fi
    grep -q "1 skipped" bleu.txt || return 1
    note "no GPU: the test skips itself"
    return "$SKIP"
}

[ -n "${GPU_SMOKE_ONLY:-}" ] || rm -rf "$W"
mkdir -p "$W/notes"
echo "gpu_smoke: $MODE mode, logs in $LOGS"
check data step_data
check train_fp16 step_train_fp16
check train_fp32 step_train_fp32
check cache_fp32 step_cache cache32
check cache_fp16 step_cache cache16 "${CACHE_FP16[@]}" --num-workers 1
check cache_compare step_cache_compare
for p in fp16 amp mefp16; do
    check "kd_cache_$p" step_kd "kd_cache_$p" "$p" --teacher-cache cache16
done
for p in fp16 amp mefp16; do
    check "kd_online_$p" step_kd "kd_online_$p" "$p" --teacher-path "$TEACHER" --kd-topk 0 --kd-temperature 2
done
check loss_ce step_loss --task translation --criterion label_smoothed_cross_entropy --label-smoothing 0.1
check loss_kd_cache step_loss "${KD[@]}" --teacher-cache cache16
check loss_kd_online step_loss "${KD[@]}" --teacher-path "$TEACHER" --kd-topk 0 --kd-temperature 2
for p in fp16 amp mefp16; do
    check "prune_$p" step_prune "$p"
done
check finetune_fp16 step_finetune
check ddp2_kd_prune step_ddp2 10
check ddp2_resume step_ddp2 20
check seq_inter step_seq_inter
check beam35_memory step_beam35_memory
check export step_export
check sentence_bleu_gpu step_sentence_bleu_gpu

failed=0
skipped=0
{
    printf 'path\tresult\tseconds\tnote\n'
    for i in "${!NAMES[@]}"; do
        printf '%s\t%s\t%s\t%s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${SECS[$i]}" "${NOTES[$i]}"
    done
} >"$OUT/summary.tsv"
echo
echo "gpu_smoke summary ($MODE mode; logs: $LOGS)"
printf '%-20s %-6s %-7s %s\n' path result seconds note
for i in "${!NAMES[@]}"; do
    printf '%-20s %-6s %-7s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${SECS[$i]}" "${NOTES[$i]}"
    case ${RESULTS[$i]} in FAIL) failed=$((failed + 1)) ;; SKIP) skipped=$((skipped + 1)) ;; esac
done
if [ "$failed" -gt 0 ]; then
    echo "gpu_smoke: $failed of ${#NAMES[@]} paths FAILED ($skipped skipped) in ${SECONDS}s"
    exit 1
fi
echo "gpu_smoke: $((${#NAMES[@]} - skipped)) of ${#NAMES[@]} paths passed, $skipped skipped, in ${SECONDS}s"
