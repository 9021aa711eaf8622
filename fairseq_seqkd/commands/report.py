"""fairseq-seqkd report: Table 1, JSON and plots from a run folder."""

from __future__ import annotations

import argparse

from fairseq_seqkd.report import PAPER, write_report

HELP = ("collect RUN_DIR/results/*.json (and RUN_DIR/results/TESTSET/*.json) into report.md (the paper's "
        "Table 1 for each test set, the findings, the run's provenance), report.json and PNG plots")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run folder written by a recipe or the demo")
    p.add_argument("--paper", choices=sorted(PAPER), help="print the paper's figures beside this run's")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--main-test-set", default="test",
                   help="how the report names the main test set (RUN_DIR/results/*.json), e.g. its reference file")
    p.add_argument("--test-sets", nargs="*", metavar="NAME",
                   help="the extra test sets, in this order (RUN_DIR/results/NAME/*.json); default: every folder "
                        "of RUN_DIR/results but curve")


def run(args: argparse.Namespace) -> int:
    paths = write_report(args.run_dir, paper=args.paper, plots=not args.no_plots, test_sets=args.test_sets,
                         main_test_set=args.main_test_set)
    print(paths.pop("table"))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
