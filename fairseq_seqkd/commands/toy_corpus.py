"""fairseq-seqkd toy-corpus: write the embedded synthetic multimodal corpus."""

from __future__ import annotations

import argparse

from fairseq_seqkd.data.toy_corpus import DEFAULT_SIZES, write_corpus

NEEDS_FAIRSEQ = False
HELP = "write the deterministic synthetic en-de corpus (train/valid/test) used by the demo and tests"


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", help="folder for {train,valid,test}.{en,de}")
    for split, n in DEFAULT_SIZES.items():
        p.add_argument(f"--{split}-size", type=int, default=n, help=f"pairs in {split} (default {n})")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")


def run(args: argparse.Namespace) -> int:
    sizes = {s: getattr(args, f"{s}_size") for s in DEFAULT_SIZES}
    written = write_corpus(args.out_dir, sizes, seed=args.seed)
    print(" ".join(f"{s}={n}" for s, n in written.items()), "->", args.out_dir)
    return 0
