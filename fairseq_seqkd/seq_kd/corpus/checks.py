"""What pass 1 refuses, as lines of one error message: a generation file's faults, and sentence ids that are
missing, repeated or beyond the split, each named with its file so that only the faulty shard is redone."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fairseq_seqkd.io_utils import format_ids
from fairseq_seqkd.seq_kd.corpus.store import Hypotheses


@dataclass
class FileCheck:
    """What reading one generation file found: its size and its faults (the first few of each, and counts)."""

    path: str
    distinct: int = 0  # sentence ids in the file
    translated: int | None = None  # the "Translated N sentences" line, where stderr was merged in
    bad_lines: list[str] = field(default_factory=list)  # the first 5
    truncated: list[tuple[int, int]] = field(default_factory=list)  # the first 10 (id, line of its H-)
    truncated_count: int = 0
    no_hypothesis: np.ndarray | None = None  # ids of blocks with no H- line, sorted

    def problems(self) -> list[str]:
        """This file's faults as lines of the error message."""
        out = [f"{self.path}: {b}" for b in self.bad_lines]
        if self.truncated:
            sid, line = self.truncated[0]
            ids = format_ids([i for i, _ in self.truncated]) + (
                f", ... ({self.truncated_count} in all)" if self.truncated_count > len(self.truncated) else "")
            out.append(f"{self.path}: the hypothesis of ids {ids} has no P- line (H-{sid} at line {line}): "
                       "fairseq-generate writes H-, D- and P- lines for every hypothesis, so the file is cut "
                       "(its generation died, or the disk filled); regenerate this shard, then extract again")
        if self.translated is not None and self.translated != self.distinct:
            out.append(f"{self.path}: says 'Translated {self.translated} sentences' but holds "
                       f"{self.distinct}: the file is truncated or mixed; regenerate it")
        if self.no_hypothesis is not None and len(self.no_hypothesis):
            out.append(f"{self.path}: no H- line for ids {format_ids(self.no_hypothesis)} (generated with "
                       "--quiet, or the file is cut)")
        return out


def id_problems(hyps: Hypotheses, files: list[str], n: int, what: str, foreign: bool = False) -> list[str]:
    """Missing, repeated and out-of-range sentence ids, each named (``foreign``: of K-best lists, not fairseq's)."""
    problems = []
    duplicated, where = hyps.repeated()
    if len(duplicated):
        sid = duplicated[0]
        hint = ""
        if foreign:
            hint = (" The files are shards: all the candidates of a sentence must be in one file; a file given "
                    "twice, or overlapping shards, repeat ids.")
        elif len(duplicated) == n and len(files) > 1:
            hint = (" Every sentence is in several files: fairseq-generate ignores --num-shards/--shard-id "
                    "with --task translation; generate with --task translation_kd (which honours them).")
        problems.append(f"{len(duplicated)} sentence ids appear more than once (ids {format_ids(duplicated)}; "
                        f"id {sid} in {', '.join(files[f] for f in where)}).{hint}")
    missing = np.flatnonzero(hyps.blocks == 0)
    if len(missing) and foreign:
        problems.append(f"{len(missing)} of the {n} sentences of {what} have no candidate in {', '.join(files)} "
                        f"(ids {format_ids(missing)}): every sentence of the split needs at least one; translate "
                        "the missing ones (a shard that died, sentences the toolkit skipped) and add their lines")
    elif len(missing):
        if len(missing) >= n // 3:  # a share, not a few: the batches of other "ranks"
            cause = ("fairseq-generate with --task translation translated only its share of the batches: "
                     "--distributed-world-size defaults to the number of GPUs. Generate with "
                     "--distributed-world-size 1 (or --task translation_kd, which translates everything "
                     "outside torch.distributed), and with --required-batch-size-multiple 1")
        else:
            cause = ("fairseq drops sentences unless generated with --required-batch-size-multiple 1 (and "
                     "skips over-long ones with --skip-invalid-size-inputs-valid-test)")
        problems.append(f"{len(missing)} of the {n} sentences of {what} are in no generation file (ids "
                        f"{format_ids(missing)}): {cause}; regenerate the shard(s) holding them")
    extra = sorted(hyps.extra_blocks)
    if extra:
        problems.append(f"ids {format_ids(extra)} are beyond the {n} sentences of {what}: the output was "
                        "generated from other data or another --gen-subset")
    return problems
