"""fairseq-seqkd extract: fairseq-generate output (one or many shards) -> a binarized Seq-KD corpus."""

from __future__ import annotations

import argparse

from fairseq_seqkd.seqkd_corpus import EMPTY_POLICIES, SHARD_NAME, extract_corpus

HELP = ("merge fairseq-generate outputs of a split (Seq-KD: teacher beam output; Seq-Inter: with "
        "--seq-inter) into a parallel corpus in the original order, checked and binarized with the "
        "original dictionaries")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("generated", nargs="+",
                   help=f"a folder of shard outputs {SHARD_NAME.format('<i>')} (i = 0..N-1), or the output "
                        "file(s) of fairseq-generate (stdout; generated without --post-process)")
    p.add_argument("--data", required=True, help="the binarized data folder that was translated (its "
                   "dictionaries are reused)")
    p.add_argument("--out", "--destdir", dest="out", required=True,
                   help="folder for the new data: SPLIT.SRC-TGT.{SRC,TGT}.{bin,idx}, dictionaries, the "
                        "data's other splits, text/SPLIT.{SRC,TGT} and SPLIT.extract.json (the report)")
    p.add_argument("--split", default="train", help="the --gen-subset that was translated (default train)")
    p.add_argument("-s", "--source-lang", default=None, help="source language (default: from --data)")
    p.add_argument("-t", "--target-lang", default=None, help="target language (default: from --data)")
    p.add_argument("--num-shards", type=int, default=None,
                   help="number of shards expected in the folder: a missing shard file is named and refused "
                        "(default: up to the highest shard file found)")
    p.add_argument("--source-text", default=None,
                   help="take the source sentences from this text file (one per line, tokenized as "
                        "binarized) instead of the binarized split")
    p.add_argument("--empty", choices=EMPTY_POLICIES, default="reference",
                   help="an empty hypothesis: use the reference as target (default), drop the pair, or "
                        "refuse; counted and listed in the report either way")
    p.add_argument("--no-copy-splits", action="store_true",
                   help="do not copy the data's other splits (valid, test) next to the new one")
    p.add_argument("--no-source-check", action="store_true",
                   help="do not compare the S- lines with the data's sources (needed when generation used "
                        "--bpe/--tokenizer, which decode S- lines)")


def run(args: argparse.Namespace) -> int:
    r = extract_corpus(args.generated, args.data, args.out, split=args.split, source_lang=args.source_lang,
                       target_lang=args.target_lang, num_shards=args.num_shards, source_text=args.source_text,
                       empty=args.empty, copy_splits=not args.no_copy_splits,
                       check_sources=not args.no_source_check)
    print(f"{r['split']}: {r['written']} of {r['sentences']} sentence pairs from "
          f"{len(r['generation_files'])} file(s); {r['empty_hypotheses']} empty hypotheses "
          f"({r['empty_policy']}) -> {args.out}")
    return 0
