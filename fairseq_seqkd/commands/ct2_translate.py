"""fairseq-seqkd ct2-translate: decode a test file with a CTranslate2 model, fairseq-generate style.

Until ``ct2-translate`` is listed in ``cli.SUBCOMMANDS`` run it as
``python -m fairseq_seqkd.commands.ct2_translate``.
"""

from __future__ import annotations

import argparse
import json
import sys

from fairseq_seqkd.ct2_translate import translate_file

HELP = ("translate a tokenized source file with a CTranslate2 model; the output reads like "
        "fairseq-generate's, so `fairseq-seqkd evaluate` scores it")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="CTranslate2 model folder (fairseq-seqkd export --ct2)")
    p.add_argument("source", help="source sentences, one per line, tokenized as the training data")
    p.add_argument("--out", required=True, help="output file (S-/H-/D- lines and the timing line)")
    p.add_argument("--beam", type=int, default=1, help="beam size (default 1: greedy)")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch (default 64)")
    p.add_argument("--max-len-b", type=int, default=200,
                   help="maximum output length (default 200, as fairseq)")
    p.add_argument("--compute-type", default="default",
                   help="CTranslate2 compute type (default: the model's quantization)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default 0: CTranslate2 chooses)")
    p.add_argument("--post-process", default=None,
                   help="fairseq's --post-process for D- lines, e.g. sentencepiece or subword_nmt")


def run(args: argparse.Namespace) -> int:
    result = translate_file(args.model_dir, args.source, args.out, args.beam, args.batch_size,
                            args.max_len_b, args.compute_type, args.threads, args.post_process)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    from fairseq_seqkd.errors import UserError

    parser = argparse.ArgumentParser(prog="python -m fairseq_seqkd.commands.ct2_translate", description=HELP)
    add_args(parser)
    try:
        sys.exit(run(parser.parse_args()))
    except UserError as e:
        print(f"ct2-translate: error: {e}", file=sys.stderr)
        sys.exit(2)
