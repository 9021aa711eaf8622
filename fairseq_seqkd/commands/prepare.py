"""fairseq-seqkd prepare: raw parallel text -> cleaned, sentencepiece-encoded corpus for fairseq."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields

from fairseq_seqkd.data_prep import MAX_POSITIONS, CleanConfig, SpmConfig, prepare_corpus

HELP = ("read raw parallel text (plain, WMT SGML, IWSLT XML or train.tags), clean the training pairs "
        "(drops counted), train one joint sentencepiece model and encode train/valid/test for fairseq")


def _add_config(p: argparse.ArgumentParser, cls) -> None:
    """One option per config field, with the field's default and help (fairseq style)."""
    for f in fields(cls):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                       help=f"{f.metadata['help']} (default {f.default})")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", help="output folder: {train,valid,test}.{SRC,TGT} (pieces), "
                                   "{split}.raw.* (detokenized), spm.model, prepare.json")
    p.add_argument("--src", required=True, help="source language code: the suffix of the output files")
    p.add_argument("--tgt", required=True, help="target language code")
    for split in ("train", "valid", "test"):
        p.add_argument(f"--{split}", nargs=2, action="append", required=True,
                       metavar=("SRC_FILE", "TGT_FILE"),
                       help=f"a {split} pair of files; repeat to concatenate several (format from the name: "
                            "*.sgm, *.xml, train.tags.*, else plain text; .gz read as is)")
    _add_config(p, SpmConfig)
    _add_config(p, CleanConfig)
    p.add_argument("--max-positions", type=int, default=MAX_POSITIONS,
                   help="a valid or test sentence of this many pieces or more is an error (fairseq-generate "
                        "refuses it): the models' --max-source-positions/--max-target-positions "
                        f"(default {MAX_POSITIONS}, fairseq's)")
    p.add_argument("--threads", type=int, default=0,
                   help="sentencepiece threads (default: all cores, at most 16)")


def run(args: argparse.Namespace) -> int:
    spm_cfg = SpmConfig(**{f.name: getattr(args, f.name) for f in fields(SpmConfig)})
    clean = CleanConfig(**{f.name: getattr(args, f.name) for f in fields(CleanConfig)})
    raw = {split: [tuple(pair) for pair in getattr(args, split)] for split in ("train", "valid", "test")}
    manifest = prepare_corpus(raw, args.out_dir, args.src, args.tgt, clean=clean, spm_cfg=spm_cfg,
                              threads=args.threads, max_positions=args.max_positions)
    summary = {"out_dir": args.out_dir, "splits": manifest["splits"], "pieces": manifest["spm"]["pieces"]}
    print(json.dumps(summary))
    return 0
