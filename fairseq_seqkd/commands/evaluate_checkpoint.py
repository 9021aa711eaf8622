"""fairseq-seqkd evaluate-checkpoint: generate (greedy, beam), validate and score one checkpoint in one process."""

from __future__ import annotations

import argparse
import json
import sys

from fairseq_seqkd.commands.evaluate import add_score_args, parse_set
from fairseq_seqkd.errors import UserError
from fairseq_seqkd.evaluate.checkpoint import FairseqRun, FairseqRunFailed, evaluate_checkpoint, parse_runs

# runs fairseq-generate and fairseq-validate in this process, with the plugin's task
NEEDS_FAIRSEQ = True
HELP = ("run fairseq-generate (greedy, beam) and fairseq-validate on a checkpoint inside this one process "
        "(fairseq is imported once), writing the files those commands write, then score them as evaluate does")

EPILOG = """Each fairseq command follows ':::' and its kind (greedy, beam: fairseq-generate; validate:
fairseq-validate), with the arguments its command line takes (no program name), e.g.
  fairseq-seqkd evaluate-checkpoint --name baseline --ref test.de --src test.en --results-dir results
      --greedy-output eval/baseline.greedy.txt --beam-output eval/baseline.beam.txt
      ::: greedy data-bin --path baseline/checkpoint_last.pt --gen-subset test --beam 1 --cpu
      ::: beam data-bin --path baseline/checkpoint_last.pt --gen-subset test --beam 5 --cpu
fairseq-generate's stdout goes to the kind's output file and its stderr to OUTPUT.log;
fairseq-validate's stdout and stderr to --validate-output, whose perplexity is recorded."""


def add_args(p: argparse.ArgumentParser) -> None:
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--greedy-output", help="fairseq-generate's stdout of the greedy run (stderr: FILE.log)")
    p.add_argument("--beam-output", help="fairseq-generate's stdout of the beam run (stderr: FILE.log)")
    p.add_argument("--validate-output", help="fairseq-validate's stdout and stderr; its ppl is recorded")
    add_score_args(p)
    p.add_argument("--warm-up", choices=("auto", "yes", "no"), default="auto",
                   help="translate one batch of the first generation before the timed runs, so that their "
                        "speed does not include the device's start-up (auto: on a GPU)")
    p.add_argument("runs", nargs=argparse.REMAINDER, metavar="::: KIND ARGS",
                   help="the fairseq commands, each after ':::' and its kind (greedy, beam, validate)")


def run(args: argparse.Namespace) -> int:
    outputs = {"greedy": args.greedy_output, "beam": args.beam_output, "validate": args.validate_output}
    runs = []
    for kind, argv in parse_runs(args.runs):
        if not outputs[kind]:
            raise UserError(f"the {kind} run needs its output file: give --{kind}-output FILE")
        runs.append(FairseqRun(kind, argv, outputs.pop(kind)))
    for kind, path in outputs.items():
        if path:
            raise UserError(f"--{kind}-output {path} without its run: add '::: {kind} ARGS...' (fairseq's arguments)")
    if not runs:
        raise UserError("no fairseq run to evaluate: add '::: greedy ARGS...' (fairseq-generate's arguments)")
    try:
        values, path = evaluate_checkpoint(runs, args.results_dir, args.name, args.ref, args.src, args.tokenize,
                                           args.checkpoint, parse_set(args.set), warm=_warm(args.warm_up, runs))
    except FairseqRunFailed as e:
        print(f"fairseq-seqkd evaluate-checkpoint: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"system": args.name, **values}), "->", path)
    return 0


def _warm(choice: str, runs: list[FairseqRun]) -> bool:
    """--warm-up: yes, no, or auto: when a generation runs on a GPU (CUDA present and no --cpu)."""
    if choice != "auto":
        return choice == "yes"
    import torch

    return torch.cuda.is_available() and any(r.program == "fairseq-generate" and "--cpu" not in r.args for r in runs)
