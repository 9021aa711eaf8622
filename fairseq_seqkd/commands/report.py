"""fairseq-seqkd report: Table 1, JSON and plots from a run folder."""

from __future__ import annotations

import argparse

from fairseq_seqkd.evaluate.report import PAPER, write_report

NEEDS_FAIRSEQ = False
HELP = ("collect RUN_DIR/results/NAME.json for each of --systems (and RUN_DIR/results/TESTSET/NAME.json, "
        "RUN_DIR/results/curve/POINT.json) into report.md (the paper's Table 1 for each test set, BLEU and chrF with "
        "confidence intervals and p-values from sacrebleu's paired bootstrap, warnings about a system far below the "
        "baseline, the findings judged against that noise on every test set, the run's provenance), report.json "
        "and PNG plots")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run folder written by a recipe or the demo")
    p.add_argument("--paper", choices=sorted(PAPER), help="print the paper's figures beside this run's")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--main-test-set", default="test",
                   help="how the report names the main test set (RUN_DIR/results/*.json), e.g. its reference file")
    p.add_argument("--systems", nargs="+", metavar="NAME",
                   help="the systems the run's configuration evaluates: exactly RUN_DIR/results/NAME.json is read "
                        "for each, on the main and every extra test set (a missing one is an error; any other file "
                        "is ignored), and --test-sets and --curve then default to none. The pipeline always passes "
                        "the three lists; without --systems every RUN_DIR/results/*.json is read, for a folder "
                        "looked at by hand. Rows come in the paper's order, then others by name")
    p.add_argument("--test-sets", nargs="*", metavar="NAME",
                   help="the extra test sets, in this order (RUN_DIR/results/NAME/, each read as --systems says); "
                        "default: none with --systems, else every folder of RUN_DIR/results but curve")
    p.add_argument("--curve", nargs="*", metavar="NAME",
                   help="the pruning curve's points, file stems of RUN_DIR/results/curve/ (e.g. r0.5 r0.8): exactly "
                        "those are read, a missing one an error; default: none with --systems, else every "
                        "RUN_DIR/results/curve/*.json")
    p.add_argument("--compare", nargs="+", metavar="A:B", default=[], type=_pair,
                   help="pairs of systems: BLEU(A) - BLEU(B), greedy and beam, with its 95%% interval and "
                        "paired-bootstrap p-value, on every test set where both were scored")


def _pair(text: str) -> tuple[str, str]:
    a, colon, b = text.partition(":")
    if not colon or not a or not b:
        raise argparse.ArgumentTypeError(f"{text!r}: give two systems as A:B, e.g. seq_kd.mbr:seq_kd.first")
    return a, b


def run(args: argparse.Namespace) -> int:
    paths = write_report(args.run_dir, paper=args.paper, plots=not args.no_plots, test_sets=args.test_sets,
                         main_test_set=args.main_test_set, systems=args.systems, curve=args.curve,
                         compare=args.compare)
    print(paths.pop("table"))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
