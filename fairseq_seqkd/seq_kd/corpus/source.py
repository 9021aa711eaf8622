"""The protocol between :func:`~fairseq_seqkd.seq_kd.corpus.build.build_corpus` and a source of hypotheses.

A source is made from its files and options (refusing bad ones before any data is read); the
build gives it the :class:`Split` and it fills a :class:`~fairseq_seqkd.seq_kd.corpus.store.Hypotheses`
with one hypothesis per sentence (pass 1), refusing with a UserError what it cannot use. The
build then writes the corpus from the store (pass 2), whatever the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fairseq_seqkd.data.indexed import SymbolLines
from fairseq_seqkd.seq_kd.corpus.store import Hypotheses


@dataclass
class Split:
    """The split being distilled, as pass 1 sees it."""

    source: object  # chunked reader of the source side
    reference: object | None  # of the target side, where the data has one
    tgt_dict: object
    n: int
    what: str  # "DATA split 'SPLIT'", for messages
    as_string: SymbolLines  # source ids to text as Dictionary.string writes them
    work: str  # folder for pass 1's temporary files
    source_text: str | None = None  # the text file the source sentences are taken from, if not the split
    keep_scores: bool = False  # keep each kept hypothesis's score (the score filter asks for it)


class HypothesisSource(Protocol):
    """Where the target side comes from: fairseq-generate output, or another toolkit's translations."""

    def read(self, split: Split) -> Hypotheses:
        """Pass 1: one hypothesis per sentence of ``split``, stored; a fault is a UserError naming it."""

    def scores(self) -> tuple[np.ndarray, str] | None:
        """After :meth:`read` with ``keep_scores``: (each sentence's score of its hypothesis, what the score is);
        None for a source whose scores cannot be compared across sentences."""

    def report(self) -> dict:
        """This source's fields of the extract report, after :meth:`read`."""

    def empty_error(self, ids: np.ndarray) -> str:
        """The message refusing the empty hypotheses of sentences ``ids`` (the ``error`` policy)."""
