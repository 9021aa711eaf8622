"""fairseq-seqkd export: a plain fairseq checkpoint (masks folded in) and optionally CTranslate2."""

from __future__ import annotations

import argparse
import json

from fairseq_seqkd.compress.export import QUANTIZATIONS, export

# reads the plugin's registered options to strip them from the checkpoint's configuration
NEEDS_FAIRSEQ = True
HELP = ("write a plain fairseq checkpoint (no plugin state, loads in stock fairseq-generate) "
        "and optionally a CTranslate2 model")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="fairseq checkpoint (e.g. a pruned, retrained student)")
    p.add_argument("--out", required=True, help="the plain checkpoint to write, e.g. student.pt")
    p.add_argument("--ct2", metavar="DIR", default=None, help="also write a CTranslate2 model folder")
    p.add_argument("--quantization", choices=QUANTIZATIONS, default="int8",
                   help="CTranslate2 weight type (default int8)")
    p.add_argument("--data", default=None,
                   help="fairseq-preprocess folder with the dictionaries (default: the checkpoint's)")
    p.add_argument("--source-lang", default=None, help="source language (default: checkpoint or --data)")
    p.add_argument("--target-lang", default=None, help="target language (default: checkpoint or --data)")


def run(args: argparse.Namespace) -> int:
    result = export(args.checkpoint, args.out, args.ct2, args.quantization, args.data,
                    args.source_lang, args.target_lang)
    print(json.dumps(result))
    return 0
