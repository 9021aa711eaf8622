"""fairseq-seqkd prepare: raw parallel text -> cleaned, sentencepiece-encoded corpus for fairseq."""

from __future__ import annotations

import argparse
import json

from fairseq_seqkd.commands._options import add_config, config_from
from fairseq_seqkd.data.prepare import MAX_POSITIONS, CleanConfig, SpmConfig, prepare_corpus, prepare_test_set

NEEDS_FAIRSEQ = False
HELP = ("read raw parallel text (plain, WMT SGML, IWSLT XML or train.tags), clean the training pairs "
        "(drops counted), train one joint sentencepiece model and encode train/valid/test for fairseq; "
        "with --test-only, encode one more test set with a prepared run's model")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", help="output folder: {train,valid,test}.{SRC,TGT} (pieces), "
                                   "{split}.raw.* (detokenized), spm.model, prepare.json")
    p.add_argument("--src", required=True, help="source language code: the suffix of the output files")
    p.add_argument("--tgt", required=True, help="target language code")
    for split in ("train", "valid", "test"):
        p.add_argument(f"--{split}", nargs=2, action="append",
                       metavar=("SRC_FILE", "TGT_FILE"),
                       help=f"a {split} pair of files; repeat to concatenate several (format from the name: "
                            "*.sgm, *.xml, train.tags.*, else plain text; .gz read as is)")
    p.add_argument("--test-only", action="store_true",
                   help="only the --test pair(s), every line kept and checked as the test split is, into "
                        "OUT/test.* and OUT/test.raw.*: an extra test set of a prepared run")
    p.add_argument("--spm-model", help="with --test-only: the run's sentencepiece model (OUT/spm.model of its "
                                       "prepare); without it the text stays as words (a word-level corpus)")
    add_config(p, SpmConfig)
    add_config(p, CleanConfig)
    p.add_argument("--max-positions", type=int, default=MAX_POSITIONS,
                   help="a valid or test sentence of this many pieces or more is an error (fairseq-generate "
                        "refuses it): the models' --max-source-positions/--max-target-positions "
                        f"(default {MAX_POSITIONS}, fairseq's)")
    p.add_argument("--threads", type=int, default=0,
                   help="sentencepiece threads (default: all cores, at most 16)")


def run(args: argparse.Namespace) -> int:
    if args.test_only:
        if not args.test or args.train or args.valid:
            raise SystemExit("prepare --test-only: give the test set's --test SRC_FILE TGT_FILE, and no --train "
                             "or --valid")
        info = prepare_test_set([tuple(p) for p in args.test], args.out_dir, args.src, args.tgt, args.spm_model,
                                args.threads, args.max_positions)
        print(json.dumps({"out_dir": args.out_dir, **info}))
        return 0
    if args.spm_model:
        raise SystemExit("prepare: --spm-model goes with --test-only")
    missing = [split for split in ("train", "valid", "test") if not getattr(args, split)]
    if missing:
        raise SystemExit(f"prepare: give {', '.join('--' + s for s in missing)} (each SRC_FILE TGT_FILE)")
    spm_cfg = config_from(args, SpmConfig)
    clean = config_from(args, CleanConfig)
    raw = {split: [tuple(pair) for pair in getattr(args, split)] for split in ("train", "valid", "test")}
    manifest = prepare_corpus(raw, args.out_dir, args.src, args.tgt, clean=clean, spm_cfg=spm_cfg,
                              threads=args.threads, max_positions=args.max_positions)
    summary = {"out_dir": args.out_dir, "splits": manifest["splits"], "pieces": manifest["spm"]["pieces"]}
    print(json.dumps(summary))
    return 0
