"""The ``fairseq-seqkd`` command: what fairseq has no command for.

Each subcommand lives in ``fairseq_seqkd/commands/<name>.py`` and defines ``HELP``,
``add_args(parser)``, ``run(args) -> int`` and ``NEEDS_FAIRSEQ`` (whether it runs fairseq in this
process: then the plugin is registered with fairseq first); it parses, then calls one library function.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from fairseq_seqkd import register
from fairseq_seqkd.errors import UserError

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
    # before any fairseq import: importing fairseq runs logging.basicConfig(level=DEBUG)
    # (fairseq/models/wav2vec/wav2vec2_classification.py), a no-op once the root logger has a handler
    logging.basicConfig(
        format="%(asctime)s | %(levelname)s | %(name)s | %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        level=logging.INFO,
        stream=sys.stderr,
    )
    argv = sys.argv[1:] if argv is None else argv
    # importing fairseq takes seconds: build only the subcommand asked for, and register the plugin
    # with fairseq only for the subcommands that run fairseq
    if argv and argv[0] in SUBCOMMANDS and _module(argv[0]).NEEDS_FAIRSEQ:
        register()
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"fairseq-seqkd {args.command}: error: {e}", file=sys.stderr)
        return 2

if __name__ == "__main__":
    sys.exit(main())
