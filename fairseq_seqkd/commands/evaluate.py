"""fairseq-seqkd evaluate: score one fairseq-generate run into RUN/results/NAME.json."""

from __future__ import annotations

import argparse
import json
import os

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.evaluate.scoring import score_system

NEEDS_FAIRSEQ = False
HELP = ("score a fairseq-generate output against the reference (sacrebleu, every sentence or an "
        "error) and record BLEU, words/s, parameters and perplexity for one system")


def add_score_args(p: argparse.ArgumentParser) -> None:
    """The options of what is scored and where it is recorded (also evaluate-checkpoint's)."""
    p.add_argument("--ref", help="reference file, one detokenized sentence per line (needed to score a generation)")
    p.add_argument("--src", help="source file: its words are what words/s counts (default: the S- lines)")
    p.add_argument("--name", required=True, help="system name, e.g. teacher, baseline, seq_kd")
    p.add_argument("--checkpoint", help="record params and non-zero params of this checkpoint")
    p.add_argument("--tokenize", default="13a",
                   help="sacrebleu tokenizer (default 13a; 'none' for raw tokens)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="also record KEY=VALUE (a number where it parses as one), e.g. prune_ratio=0.8")
    p.add_argument("--results-dir", required=True, help="folder of per-system JSON files (RUN/results)")


def parse_set(items: list[str]) -> dict:
    """--set KEY=VALUE items as a dict, VALUE a number (or any JSON) where it parses as one."""
    values: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            values[key] = json.loads(value)
        except json.JSONDecodeError:
            values[key] = value
    return values


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("gen_output", nargs="?", help="stdout of fairseq-generate (S-/H-/D- lines)")
    p.add_argument("--log", help="stderr of fairseq-generate, where its timing line is (default: gen_output)")
    p.add_argument("--decoding", choices=["greedy", "beam"], help="which decoding gen_output used")
    p.add_argument("--greedy-output", help="fairseq-generate output with beam 1 (its stderr in FILE.log if there)")
    p.add_argument("--beam-output", help="fairseq-generate output with beam 5 (its stderr in FILE.log if there)")
    p.add_argument("--validate-log", help="record the perplexity printed by fairseq-validate")
    add_score_args(p)


def run(args: argparse.Namespace) -> int:
    outputs = [(args.gen_output, args.decoding, args.log)] if args.gen_output else []
    for path, decoding in ((args.greedy_output, "greedy"), (args.beam_output, "beam")):
        if path:
            outputs.append((path, decoding, path + ".log" if os.path.exists(path + ".log") else None))
    values, path = score_system(args.results_dir, args.name, outputs, args.ref, args.src, args.tokenize,
                                args.checkpoint, args.validate_log, parse_set(args.set))
    print(json.dumps({"system": args.name, **values}), "->", path)
    return 0
