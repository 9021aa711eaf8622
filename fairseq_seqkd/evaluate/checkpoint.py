"""Evaluate one checkpoint in one process: fairseq-generate (greedy, beam), fairseq-validate, scoring.

Importing fairseq costs seconds of CPU in every process, and an evaluation used to start four
(two fairseq-generate, fairseq-validate, the scoring). Here fairseq's own commands run in this
process, through their own entry points (``fairseq_cli.generate.cli_main``,
``fairseq_cli.validate.cli_main``) and with the argument lists their command lines would get;
each run writes the files the separate command wrote: generate's stdout (S-/H-/D- lines) and its
stderr in ``OUTPUT.log`` (fairseq's 'Translated N sentences ... in Xs' line), validate's stdout
and stderr together. Every file appears whole (through :mod:`fairseq_seqkd.io_utils`), and an
output only when its run succeeded; a failed run raises :class:`FairseqRunFailed` with the end
of its log. Then the outputs are scored as ``fairseq-seqkd evaluate`` scores them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.evaluate.scoring import score_system
from fairseq_seqkd.io_utils import atomic_open, atomic_write_text
from fairseq_seqkd.teacher.generate_output import translated_count

logger = logging.getLogger(__name__)

KINDS = ("greedy", "beam", "validate")  # what a run is: its program and what its output is scored as
PROGRAMS = {"greedy": "fairseq-generate", "beam": "fairseq-generate", "validate": "fairseq-validate"}
TAIL_LINES = 25


class FairseqRunFailed(RuntimeError):
    """A fairseq command run in-process failed; the message names it and holds the end of its log."""


@dataclass
class FairseqRun:
    """One fairseq command of an evaluation: its kind, its arguments (no program name), its output file."""

    kind: str
    args: list[str]
    output: str

    @property
    def program(self) -> str:
        return PROGRAMS[self.kind]

    @property
    def log(self) -> str | None:
        """Where its stderr goes: OUTPUT.log for fairseq-generate; validate's goes into its output."""
        return f"{self.output}.log" if self.program == "fairseq-generate" else None


@contextlib.contextmanager
def _captured(argv: list[str], out: TextIO, err: TextIO) -> Iterator[None]:
    """sys.argv, stdout and stderr, and the root logger's handlers as a command of its own would have them."""
    root = logging.getLogger()
    handlers, level, saved_argv = root.handlers[:], root.level, sys.argv
    handler = logging.StreamHandler(err)
    # fairseq's own log format (fairseq_cli.generate asks for it); the timing line's parser takes any prefix
    handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)s | %(name)s | %(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    root.handlers = [handler]
    root.setLevel(os.environ.get("LOGLEVEL", "INFO").upper())
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    finally:
        # fairseq_cli.validate resets the root logger to a handler on (the redirected) sys.stdout
        sys.argv = saved_argv
        root.handlers = handlers
        root.setLevel(level)


def _entry_point(program: str) -> Callable[[], None]:
    from fairseq_seqkd import register

    # fairseq's --user-dir finds this package already imported and imports nothing: register here
    register()
    if program == "fairseq-generate":
        from fairseq_cli.generate import cli_main
    else:
        from fairseq_cli.validate import cli_main
    return cli_main


def run_fairseq(run: FairseqRun) -> float:
    """Run one fairseq command in this process into its output (and log) files; return its seconds.

    A failure (an exception, or the SystemExit of a bad option) leaves the log with its traceback,
    no output, and raises :class:`FairseqRunFailed` with the log's last lines.
    """
    main = _entry_point(run.program)
    argv = [run.program, *run.args]
    t0 = time.monotonic()
    failure: BaseException | None = None
    log = io.StringIO()  # a few dozen lines; written whole, after the run, success or not
    try:
        with atomic_open(run.output) as out:
            with _captured(argv, out if run.log else log, log):
                main()
            if not run.log:  # fairseq-validate: its log is its output
                out.write(log.getvalue())
    except (Exception, SystemExit) as e:  # SystemExit: fairseq's parser refusing an option
        if not isinstance(e, SystemExit) or e.code not in (0, None):
            failure = e
            log.write("".join(traceback.format_exception(e)))
    if run.log:
        atomic_write_text(run.log, log.getvalue())
    if failure is not None:
        where = run.log or "its output"
        tail = "".join(log.getvalue().splitlines(keepends=True)[-TAIL_LINES:])
        raise FairseqRunFailed(f"{shlex.join(argv)} failed ({type(failure).__name__}: {failure}); the last lines "
                               f"of {where}:\n{tail}") from failure
    return time.monotonic() - t0


def parse_runs(words: Sequence[str], separator: str = ":::") -> list[tuple[str, list[str]]]:
    """``::: KIND ARGS... ::: KIND ARGS...`` as (kind, args) pairs; KIND is greedy, beam or validate."""
    runs: list[tuple[str, list[str]]] = []
    for word in words:
        if word == separator:
            runs.append(("", []))
        elif not runs:
            raise UserError(f"expected '{separator} KIND ARGS...' (KIND one of {', '.join(KINDS)}), got {word!r}")
        elif not runs[-1][0]:
            if word not in KINDS:
                raise UserError(f"'{separator} {word}': a run's kind is one of {', '.join(KINDS)}")
            runs[-1] = (word, [])
        else:
            runs[-1][1].append(word)
    kinds = [k for k, _ in runs]
    if "" in kinds:
        raise UserError(f"a '{separator}' without a kind: write '{separator} KIND ARGS...'")
    if len(set(kinds)) != len(kinds):
        raise UserError(f"runs {kinds}: each kind at most once")
    return runs


WARM_UP_SHARDS = 1000  # the warm-up translates the first of 1,000 shards of the batches: one batch


def warm_up(run: FairseqRun) -> int:
    """Translate one batch of a generation ``run`` (of the translation_kd task, which honours fairseq's
    ``--num-shards`` in fairseq-generate) into a file thrown away; return its sentence count.

    fairseq-generate's timer ('Translated N sentences ... in Xs', the words/s of the report) runs from
    the first batch, and on a GPU the first batch of a process also pays CUDA's start-up (the context,
    cuBLAS handles, the kernels' first launches): seconds against the fraction of a second a test set
    of a small student takes, so the speed finding would be biased low. The runs after it in this
    process start warm.
    """
    with tempfile.TemporaryDirectory(prefix="warm-up.") as tmp:
        shard = ["--num-shards", str(WARM_UP_SHARDS), "--shard-id", "0"]
        batch = FairseqRun(run.kind, [*run.args, *shard], os.path.join(tmp, "warm-up.txt"))
        run_fairseq(batch)
        with open(batch.log or batch.output, encoding="utf-8") as f:
            counts = [t for t in map(translated_count, f) if t is not None]
    return counts[-1][0] if counts else 0


def _option(args: Sequence[str], name: str) -> str | None:
    """The value of option ``name`` in a command's arguments (its last one), or None."""
    values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]
    return values[-1] if values else None


def evaluate_checkpoint(runs: Sequence[FairseqRun], results_dir: str, name: str, ref: str | None = None,
                        src: str | None = None, tokenize: str = "13a", checkpoint: str | None = None,
                        extra: dict | None = None, warm: bool = False) -> tuple[dict, str]:
    """Run the fairseq commands of ``runs`` in this process, in order, then score them into RESULTS_DIR/NAME.json.

    ``warm``: one batch of the first generation is translated first (:func:`warm_up`), so that no timed
    run pays the device's start-up."""
    first = next((run for run in runs if run.program == "fairseq-generate"), None)
    if warm and first is not None and _option(first.args, "--task") != "translation_kd":
        logger.info("warm-up: skipped: fairseq-generate translates one batch alone (--num-shards) with the "
                    "translation_kd task only (--user-dir fairseq_seqkd --task translation_kd)")
    elif warm and first is not None:
        logger.info("warm-up: one batch of the %s run before the timed runs", first.kind)
        t0 = time.monotonic()
        sentences = warm_up(first)
        logger.info("warm-up: %d sentences in %.1f s", sentences, time.monotonic() - t0)
    for run in runs:
        logger.info("%s: %s -> %s", run.kind, shlex.join([run.program, *run.args]), run.output)
        seconds = run_fairseq(run)
        logger.info("%s: done in %.1f s", run.kind, seconds)
    outputs = [(r.output, r.kind, r.log) for r in runs if r.kind != "validate"]
    validate = next((r.output for r in runs if r.kind == "validate"), None)
    return score_system(results_dir, name, outputs, ref, src, tokenize, checkpoint, validate, extra)
