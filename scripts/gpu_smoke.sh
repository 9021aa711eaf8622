#!/usr/bin/env bash
# GPU smoke test: every CUDA path of fairseq-seqkd once, on tiny models (a few minutes on one GPU).
#
# Usage: scripts/gpu_smoke.sh [OUT_DIR]          (or: make gpu-check [GPU_CHECK_DIR=...])
#   OUT_DIR (default runs/gpu_smoke) gets the toy data, the models, logs/NAME.log per path and
#   summary.tsv. Prints PASS/FAIL per path and a summary table.
#   Exit status: 0 all passed; 1 some path failed; 0 with "no GPU: nothing to check" where torch
#   sees no CUDA device.
#   GPU_SMOKE_ALLOW_CPU=1: with no GPU, run the same commands on CPU without the half-precision
#   flags (--fp16, --amp, --memory-efficient-fp16 dropped; --cpu added): it checks the commands,
#   paths and checks of this script, not the CUDA paths themselves (the GPU BLEU test is then
#   reported as skipped).
#   It uses the fairseq-* commands on PATH, else those of the repository's .venv.
#
# Paths (one line each in the summary):
#   data              toy corpus (fairseq-seqkd toy-corpus) binarized by fairseq-preprocess
#   train_fp16        fairseq-train --fp16: FP16Optimizer, fairseq's flat fp32 master copy
#   cache_fp32        fairseq-seqkd cache on the GPU in fp32
#   cache_fp16        the same with --fp16
#   cache_compare     the two caches: same sentences and tokens, top-1 ids agree, probs close
#   kd_cache_{fp16,amp,mefp16}   word_kd from the cache under --fp16 / --amp / --memory-efficient-fp16
#   kd_online_{fp16,amp,mefp16}  word_kd with the online teacher, full vocabulary (--kd-topk 0),
#                                --kd-temperature 2 (the chunked KD loss on the GPU)
#   prune_{fp16,amp,mefp16}      --prune-ratio 0.8 retraining from the teacher, then a resume: the
#                                pruned weights exactly 0 in both checkpoints, masks restored
#   seq_inter         fairseq-generate --seq-inter (beam 5) on the GPU: every test sentence
#   export            fairseq-seqkd export of the fp16-trained pruned student (and --ct2 if
#                     ctranslate2 is installed); stock fairseq-generate (no --user-dir) on it
#   sentence_bleu_gpu the GPU test of tests/test_sentence_bleu.py (pytest)
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
    # one GPU is enough, and fairseq would start one process per visible GPU
    export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
elif [ "${GPU_SMOKE_ALLOW_CPU:-0}" = 1 ]; then
    MODE=cpu
    echo "gpu_smoke: no GPU; GPU_SMOKE_ALLOW_CPU=1: the same commands on CPU, without half precision"
    DEV=(--cpu)
    CACHE_DEV=(--cpu)
    declare -A PREC=([fp16]="" [amp]="" [mefp16]="")
    CACHE_FP16=()
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
TRAIN=(--user-dir "$PLUGIN" --data-buffer-size 0 --optimizer adam --lr 0.005 --lr-scheduler inverse_sqrt
       --warmup-updates 10 --max-tokens 2000 --required-batch-size-multiple 1 --no-progress-bar
       --log-interval 5 --seed 1 --no-epoch-checkpoints --disable-validation --num-workers 0 "${DEV[@]}")
GEN=(--gen-subset test --beam 5 --nbest 1 --max-tokens 2000 --required-batch-size-multiple 1
     --num-workers 0 "${DEV[@]}")

NAMES=()
RESULTS=()
SECS=()

# check NAME FUNCTION [ARGS...]: run FUNCTION with its output in logs/NAME.log; record PASS or FAIL
check() {
    local name=$1 t0=$SECONDS result
    shift
    if (cd "$W" && "$@") >"$LOGS/$name.log" 2>&1; then result=PASS; else result=FAIL; fi
    NAMES+=("$name")
    RESULTS+=("$result")
    SECS+=($((SECONDS - t0)))
    printf 'gpu_smoke: %-18s %s (%ds)%s\n' "$name" "$result" $((SECONDS - t0)) \
        "$([ "$result" = FAIL ] && echo "  see $LOGS/$name.log")"
}

run() {  # a command with the per-command time limit, echoed into the log
    echo "+ $*"
    timeout "$LIMIT" "$@"
}

no_nan() {  # a fairseq-train log without a nan/inf loss and with its final update
    ! grep -E "loss (nan|inf)|nll_loss (nan|inf)|kd_loss (nan|inf)" "$1" && grep -q "done training" "$1"
}

step_data() {
    run fairseq-seqkd toy-corpus raw --train-size 800 --valid-size 64 --test-size "$TEST_SENTENCES" &&
    run fairseq-preprocess --source-lang en --target-lang de --trainpref raw/train --validpref raw/valid \
        --testpref raw/test --destdir "$DATA" --joined-dictionary --workers 1
}

step_train_fp16() {
    run fairseq-train "$DATA" --task translation "${TINY[@]}" "${TRAIN[@]}" ${PREC[fp16]} --max-update 60 \
        --save-dir teacher 2>&1 | tee teacher.log
    [ "${PIPESTATUS[0]}" = 0 ] && no_nan teacher.log || return 1
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

step_cache() {  # step_cache OUT_FOLDER [--fp16]
    local out=$1
    shift
    run fairseq-seqkd cache "$DATA" --path "$TEACHER" --split train --out "$out" --topk 8 --max-tokens 4000 \
        --no-progress-bar "${CACHE_DEV[@]}" "$@"
}

step_cache_compare() {
    run "$PY" - cache32 cache16 <<'EOF'
import sys
import numpy as np
from fairseq_seqkd.teacher_cache.format import TeacherCache
a, b = TeacherCache(sys.argv[1], "train"), TeacherCache(sys.argv[2], "train")
assert len(a) == len(b) and a.num_tokens == b.num_tokens, (len(a), len(b))
same = total = 0
worst = 0.0
for i in range(len(a)):
    (ia, pa), (ib, pb) = a[i], b[i]
    same += int((ia[:, 0] == ib[:, 0]).sum())
    total += len(ia)
    worst = max(worst, float(np.abs(pa[:, 0].astype(np.float64) - pb[:, 0].astype(np.float64)).max()))
print(f"{len(a)} sentences, {total} tokens: top-1 ids agree on {same / total:.4f}, "
      f"largest top-1 probability difference {worst:.4f}")
assert same / total >= 0.98 and worst <= 0.05
EOF
}

step_kd() {  # step_kd NAME PRECISION ARGS...: word_kd training for 20 updates
    local name=$1 prec=$2
    shift 2
    run fairseq-train "$DATA" --task translation_kd --criterion word_kd --kd-alpha 0.5 --label-smoothing 0.1 \
        "${TINY[@]}" "${TRAIN[@]}" ${PREC[$prec]} --max-update 20 --save-dir "$name" "$@" 2>&1 | tee "$name.log"
    [ "${PIPESTATUS[0]}" = 0 ] && no_nan "$name.log" && grep -q "kd_loss" "$name.log"
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
    run fairseq-train "$DATA" --task translation_kd "${TINY[@]}" "${TRAIN[@]}" ${PREC[$prec]} --max-update 15 \
        --save-dir "$dir" --restore-file "$TEACHER" --reset-optimizer --prune-ratio 0.8 || return 1
    check_pruned "$dir/checkpoint_last.pt" 15 || return 1
    run fairseq-train "$DATA" --task translation_kd "${TINY[@]}" "${TRAIN[@]}" ${PREC[$prec]} --max-update 30 \
        --save-dir "$dir" --prune-ratio 0.8 2>&1 | tee "$dir.resume.log"
    [ "${PIPESTATUS[0]}" = 0 ] && grep -q "masks restored from the checkpoint" "$dir.resume.log" &&
        check_pruned "$dir/checkpoint_last.pt" 30
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

step_export() {
    local student="prune_fp16/checkpoint_last.pt" ct2=()
    [ -f "$student" ] || student="$TEACHER"
    if "$PY" -c "import ctranslate2" 2>/dev/null; then ct2=(--ct2 export/ct2); fi
    rm -rf export
    run fairseq-seqkd export "$student" --out export/student.pt "${ct2[@]}" || return 1
    # stock fairseq: no --user-dir
    run fairseq-generate "$DATA" --path export/student.pt "${GEN[@]}" ${PREC[fp16]} >export.txt || return 1
    count_hypotheses export.txt
}

step_sentence_bleu_gpu() {
    run "$PY" -m pytest -q -rs -p no:cacheprovider \
        "$ROOT/tests/test_sentence_bleu.py::test_gpu_tensors_give_the_cpu_numbers" | tee bleu.txt
    if [ "$MODE" = gpu ]; then grep -q "1 passed" bleu.txt; else grep -q "1 skipped" bleu.txt; fi
}

rm -rf "$W"
mkdir -p "$W"
echo "gpu_smoke: $MODE mode, logs in $LOGS"
check data step_data
check train_fp16 step_train_fp16
check cache_fp32 step_cache cache32
check cache_fp16 step_cache cache16 "${CACHE_FP16[@]}"
check cache_compare step_cache_compare
for p in fp16 amp mefp16; do
    check "kd_cache_$p" step_kd "kd_cache_$p" "$p" --teacher-cache cache16
done
for p in fp16 amp mefp16; do
    check "kd_online_$p" step_kd "kd_online_$p" "$p" --teacher-path "$TEACHER" --kd-topk 0 --kd-temperature 2
done
for p in fp16 amp mefp16; do
    check "prune_$p" step_prune "$p"
done
check seq_inter step_seq_inter
check export step_export
check sentence_bleu_gpu step_sentence_bleu_gpu

failed=0
{
    printf 'path\tresult\tseconds\n'
    for i in "${!NAMES[@]}"; do printf '%s\t%s\t%s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${SECS[$i]}"; done
} >"$OUT/summary.tsv"
echo
echo "gpu_smoke summary ($MODE mode; logs: $LOGS)"
printf '%-20s %-6s %s\n' path result seconds
for i in "${!NAMES[@]}"; do
    printf '%-20s %-6s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${SECS[$i]}"
    [ "${RESULTS[$i]}" = PASS ] || failed=$((failed + 1))
done
if [ "$failed" -gt 0 ]; then
    echo "gpu_smoke: $failed of ${#NAMES[@]} paths FAILED"
    exit 1
fi
echo "gpu_smoke: all ${#NAMES[@]} paths passed"
