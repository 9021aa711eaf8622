#!/usr/bin/env bash
# The demo: the whole Kim & Rush (2016) pipeline on the embedded synthetic corpus, on CPU.
# Usage: examples/toy/demo.sh [RUN_DIR]   (make demo runs it in runs/toy; rerunning resumes)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../../recipes/pipeline.sh
source "$HERE/../../recipes/pipeline.sh"

RUN="$(mkdir -p "${1:-runs/toy}" && cd "${1:-runs/toy}" && pwd)"
SRC=en
TGT=de
TOK="$RUN/corpus"          # the toy corpus is word-level: no subword model needed
TEST_REF="$TOK/test.$TGT"
TEST_SRC="$TOK/test.$SRC"
BLEU_TOKENIZE=none         # whitespace tokens are the words

# teacher 2+2 layers d=128; students 1+1 layers d=64 (half the depth and width, as in the paper)
TEACHER_ARCH="--arch transformer --share-all-embeddings --encoder-layers 2 --decoder-layers 2
  --encoder-embed-dim 128 --decoder-embed-dim 128 --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512
  --encoder-attention-heads 4 --decoder-attention-heads 4 --dropout 0.1"
STUDENT_ARCH="--arch transformer --share-all-embeddings --encoder-layers 1 --decoder-layers 1
  --encoder-embed-dim 64 --decoder-embed-dim 64 --encoder-ffn-embed-dim 128 --decoder-ffn-embed-dim 128
  --encoder-attention-heads 2 --decoder-attention-heads 2 --dropout 0.1"
TRAIN_ARGS="--optimizer adam --adam-betas (0.9,0.98) --lr 0.003 --lr-scheduler inverse_sqrt
  --warmup-updates 200 --max-tokens 4096 --criterion label_smoothed_cross_entropy --label-smoothing 0.1
  --log-interval 50 --no-progress-bar --seed 1 --num-workers 0"
TEACHER_STEPS="--max-epoch 10 --lr 0.002"
STUDENT_STEPS="--max-epoch 8"
FINETUNE_STEPS="--max-epoch 2"
SEQ_INTER_BEAM=8           # the paper's 35 is slow on CPU; the toy beam has few distinct candidates
PRUNE_CURVE="0.6 0.8 0.9"    # offline pruning without retraining, for the pruning curve

if [ ! -e "$RUN/.stages/corpus" ]; then
  fairseq-seqkd toy-corpus "$TOK"
  mkdir -p "$RUN/.stages" && touch "$RUN/.stages/corpus"
fi
seqkd_pipeline
