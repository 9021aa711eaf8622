"""The ``fairseq-seqkd`` command: what fairseq has no command for.

Each subcommand lives in ``fairseq_seqkd/commands/<name>.py`` and defines ``HELP``,
``add_args(parser)`` and ``run(args) -> int``; it parses, then calls one library function.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from fairseq_seqkd import register
from fairseq_seqkd.errors import UserError

# subcommands that never build a fairseq model or task (checkpoints are read with torch alone)
WITHOUT_FAIRSEQ = {"toy-corpus", "prepare", "evaluate", "report", "ct2-translate", "teacher-data"}

SUBCOMMANDS = [
    "toy-corpus",
    "prepare",
    "teacher-data",
    "cache",
    "extract",
    "prune",
    "export",
    "ct2-translate",
    "evaluate",
    "evaluate-checkpoint",
    "report",
]


def _module(name: str):
    return importlib.import_module("fairseq_seqkd.commands." + name.replace("-", "_"))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser with one subparser per subcommand (``only``: just that one, for speed)."""
    parser = argparse.ArgumentParser(
        prog="fairseq-seqkd",
        description="Sequence-level knowledge distillation (Kim & Rush, 2016) for fairseq.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in [only] if only in SUBCOMMANDS else SUBCOMMANDS:
        try:
            mod = _module(name)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("fairseq_seqkd.commands"):
                continue  # not implemented in this build
            raise
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_args(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fairseq-seqkd`` console script."""
    # force: importing fairseq runs logging.basicConfig(level=DEBUG) (fairseq/models/wav2vec/
    # wav2vec2_classification.py); where fairseq came first (python -m fairseq_seqkd.cli, or any
    # --user-dir import), matplotlib then logged ~2,000 font DEBUG lines into the report's output
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        level=logging.INFO,
        stream=sys.stderr,
        force=True,
    )
    argv = sys.argv[1:] if argv is None else argv
    # importing fairseq takes seconds: build only the subcommand asked for, and register the plugin
    # with fairseq only for the subcommands that load fairseq models
    if not argv or argv[0] not in WITHOUT_FAIRSEQ:
        register()
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"fairseq-seqkd {args.command}: error: {e}", file=sys.stderr)
        return 2

if __name__ == "__main__":
    sys.exit(main())
