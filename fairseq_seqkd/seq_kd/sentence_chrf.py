"""Batched sentence chrF, equal to sacrebleu's ``CHRF().sentence_score``, on the text of the student's pieces.

sacrebleu's defaults: character n-grams of orders 1 to 6 with whitespace removed, no word n-grams,
beta 2, case kept, and its effective order (the precisions and recalls are averaged over the orders
where both sides have n-grams, not eps-smoothed). The characters are Unicode code points; their
n-grams are matched with the batched BLEU's n-gram matching
(:func:`~fairseq_seqkd.seq_kd.sentence_bleu.matched_ngrams`) with code points as token ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fairseq_seqkd.data.indexed import SymbolLines
from fairseq_seqkd.seq_kd.sentence_bleu import ngram_stats

CHAR_ORDER = 6
BETA = 2
PIECE_MARK = "\u2581"  # sentencepiece's word start


def char_codes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(code points of every text without its whitespace, back to back; their counts), as chrF reads the text."""
    # str.split() is sacrebleu's whitespace rule (extract_all_char_ngrams)
    bare = ["".join(t.split()) for t in texts]
    lens = np.fromiter(map(len, bare), np.int64, len(bare))
    codes = np.frombuffer("".join(bare).encode("utf-32-le"), np.uint32).astype(np.int64)
    return codes, lens


def chrf_from_stats(matches: np.ndarray, hyp_lens: np.ndarray, ref_lens: np.ndarray, beta: int = BETA) -> np.ndarray:
    """chrF (0-100) from the clipped character n-gram matches (..., orders) and the character counts of both sides
    (shaped as the matches without their last axis, or broadcast to it).

    Operation for operation sacrebleu's ``CHRF._compute_f_score`` without eps smoothing, so that the
    values are the same floats.
    """
    matches = np.asarray(matches, np.int64)
    hyp_lens, ref_lens = np.asarray(hyp_lens, np.int64), np.asarray(ref_lens, np.int64)
    factor = beta ** 2
    avg_prec = np.zeros(matches.shape[:-1])
    avg_rec = np.zeros(matches.shape[:-1])
    effective = np.zeros(matches.shape[:-1], np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(matches.shape[-1]):  # in order: the sums round as sacrebleu's do
            n_hyp, n_ref = np.maximum(hyp_lens - i, 0), np.maximum(ref_lens - i, 0)
            counted = (n_hyp > 0) & (n_ref > 0)
            avg_prec = avg_prec + np.where(counted, matches[..., i] / n_hyp, 0.0)
            avg_rec = avg_rec + np.where(counted, matches[..., i] / n_ref, 0.0)
            effective += counted
        avg_prec = np.where(effective > 0, avg_prec / effective, 0.0)
        avg_rec = np.where(effective > 0, avg_rec / effective, 0.0)
        score = (1 + factor) * avg_prec * avg_rec
        score = score / (factor * avg_prec + avg_rec)
    return np.where(avg_prec + avg_rec != 0, 100 * score, 0.0)


@dataclass(frozen=True)
class SentenceCHRF:
    """sacrebleu's sentence chrF (its defaults; orders and beta configurable) of many pairs at once."""

    char_order: int = CHAR_ORDER
    beta: int = BETA

    def signature(self) -> str:
        """How the number is made, in sacrebleu's signature style."""
        return f"sentence-chrf|nrefs:1|case:mixed|eff:yes|nc:{self.char_order}|nw:0|space:no|beta:{self.beta}"

    def score_codes(self, hyp_codes: np.ndarray, hyp_lens: np.ndarray, ref_codes: np.ndarray, ref_lens: np.ndarray,
                    ref_index: np.ndarray) -> np.ndarray:
        """chrF of packed hypothesis i against packed reference ``ref_index[i]`` (code points of :func:`char_codes`)."""
        hyp_lens, ref_lens = np.asarray(hyp_lens, np.int64), np.asarray(ref_lens, np.int64)
        ref_index = np.asarray(ref_index, np.int64)
        matches, _ = ngram_stats(np.asarray(hyp_codes, np.int64), hyp_lens, np.asarray(ref_codes, np.int64),
                                 ref_lens, ref_index, self.char_order)
        return chrf_from_stats(matches, hyp_lens, ref_lens[ref_index], self.beta)

    def score_texts(self, hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
        """chrF of each hypothesis against the reference at its place."""
        if len(hyps) != len(refs):
            raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
        return self.score_codes(*char_codes(hyps), *char_codes(refs), np.arange(len(hyps)))


class PieceText:
    """Token ids of the student's dictionary to the text chrF reads: the pieces joined, their marks undone.

    Sentencepiece pieces (a dictionary with ``▁`` symbols) are joined and ``▁`` becomes a space;
    other symbols are joined by spaces and subword-nmt's ``@@ `` is removed. Ids in ``skip``
    (EOS, BOS, padding) are left out and ids beyond the dictionary are ``unk_word``, as
    ``Dictionary.string`` writes them.
    """

    def __init__(self, symbols: Sequence[str], unk: int | None = None, unk_word: str = "<unk>",
                 skip: Sequence[int] = ()):
        self.sentencepiece = any(PIECE_MARK in s for s in symbols)
        self._lines = SymbolLines(symbols, unk=unk, unk_word=unk_word, skip=skip)

    @classmethod
    def of(cls, dictionary) -> PieceText:
        """The text of a fairseq ``Dictionary``'s ids, its specials but unk left out."""
        return cls(dictionary.symbols, dictionary.unk_index, dictionary.unk_word,
                   [dictionary.bos_index, dictionary.pad_index, dictionary.eos_index])

    def texts(self, tokens: np.ndarray, lens: np.ndarray) -> list[str]:
        """The text of each packed sequence of ids."""
        lines = self._lines.lines(np.asarray(tokens, np.int64), np.asarray(lens, np.int64)).decode("utf-8")
        lines = lines.split("\n")[:-1]
        if self.sentencepiece:
            return [line.replace(" ", "").replace(PIECE_MARK, " ").strip() for line in lines]
        return [(line + " ").replace("@@ ", "").rstrip() for line in lines]
