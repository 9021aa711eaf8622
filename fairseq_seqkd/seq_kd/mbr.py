"""Minimum Bayes risk (MBR) selection among the candidates of a sentence: no reference needed.

For the candidates ``c_1..c_k`` of one sentence with log-weights ``l_1..l_k`` (the model scores,
or 0 for uniform weights), the expected utility of ``c_i`` against the *other* candidates is

    EU(i) = sum_{j != i} exp(l_j) U(c_i, c_j) / sum_{j != i} exp(l_j)

that is, the expectation of ``U(c_i, Y)`` with ``Y`` drawn from the softmax of the weights over the
other candidates (uniform weights: the mean over the others). ``U(h, r)`` is the project's
sentence BLEU (:mod:`fairseq_seqkd.seq_kd.sentence_bleu`) of hypothesis ``h`` against the
pseudo-reference ``r``. The candidate with the highest EU is chosen; EU values within
``TIE_TOLERANCE`` tie, then the higher weight wins, then the earlier candidate. A sentence with one
candidate keeps it.

All pairs of all sentences are scored at once by the batched BLEU's n-gram statistics
(:func:`~fairseq_seqkd.seq_kd.sentence_bleu.ngram_stats`): every candidate is a reference once and
a hypothesis ``k - 1`` times; no Python loop over candidates or pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fairseq_seqkd.seq_kd.sentence_bleu import TIE_TOLERANCE, SentenceBLEU, bleu_from_stats, count_table, matched_ngrams

UTILITIES = ("bleu",)
WEIGHTS = ("scores", "uniform")
MAX_CANDIDATES = 1 << 12  # candidates whose n-grams are counted at a time: bounds the memory
MAX_PAIR_CELLS = 1 << 22  # pair x n-gram cells compared at a time


def _group_starts(sizes: np.ndarray) -> np.ndarray:
    return np.cumsum(sizes) - sizes


def candidate_pairs(group_sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) for every ordered pair of distinct candidates of the same group; rows grouped by i, in order.

    Candidates are numbered 0..sum(group_sizes)-1, group after group.
    """
    k = np.asarray(group_sizes, np.int64)
    n = int(k.sum())
    group = np.repeat(np.arange(len(k)), k)
    local = np.arange(n) - _group_starts(k)[group]
    others = k[group] - 1
    i = np.repeat(np.arange(n), others)
    r = np.arange(len(i)) - np.repeat(_group_starts(others), others)
    j = _group_starts(k)[group[i]] + (local[i] + 1 + r) % k[group[i]]
    return i, j


def pairwise_bleu(bleu: SentenceBLEU, tokens: np.ndarray, lens: np.ndarray, group_sizes: np.ndarray,
                  i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """BLEU of packed candidate ``i[p]`` (hypothesis) against candidate ``j[p]`` (reference) of the same group.

    Each candidate's n-grams are counted once, against the group's candidates joined by a separator
    that no candidate holds (:func:`~fairseq_seqkd.seq_kd.sentence_bleu.matched_ngrams`: every
    n-gram then has one id per group); a pair's clipped matches are the sum over those ids of the
    smaller of its two counts.
    """
    tokens, lens = np.asarray(tokens, np.int64), np.asarray(lens, np.int64)
    k = np.asarray(group_sizes, np.int64)
    n = len(lens)
    group = np.repeat(np.arange(len(k)), k)
    correct = np.zeros((len(i), bleu.max_order), np.int64)
    if tokens.size:
        # each group's joint reference: c_1 SEP c_2 SEP ... c_k
        sep = int(tokens.max()) + 1
        last = np.zeros(n, bool)
        last[np.cumsum(k[k > 0]) - 1] = True
        with_sep = lens + ~last
        joint = np.full(int(with_sep.sum()), sep, np.int64)
        offsets = np.repeat(np.cumsum(with_sep) - with_sep - (np.cumsum(lens) - lens), lens)
        joint[np.arange(tokens.size) + offsets] = tokens
        joint_lens = np.bincount(group, with_sep, minlength=len(k)).astype(np.int64)
        for order, cand, ids, table in matched_ngrams(tokens, lens, joint, joint_lens, group, bleu.max_order):
            counts = count_table(cand, ids, n, table.shape[1]).astype(np.int32)
            step = max(1, MAX_PAIR_CELLS // counts.shape[1])
            for lo in range(0, len(i), step):
                a, b = counts[i[lo:lo + step]], counts[j[lo:lo + step]]
                correct[lo:lo + step, order - 1] = np.minimum(a, b).sum(1)
    total = np.clip(lens[i][:, None] - np.arange(bleu.max_order)[None, :], 0, None)
    return bleu_from_stats(correct, total, lens[i], lens[j], bleu.smooth_method, bleu.smooth_value,
                           bleu.effective_order)


def expected_utility(utility: np.ndarray, i: np.ndarray, j: np.ndarray, log_weights: np.ndarray) -> np.ndarray:
    """EU of every candidate (module doc) from the pairs' utilities; 0 for a candidate without others."""
    n = len(log_weights)
    eu = np.zeros(n, np.float64)
    if not len(i):
        return eu
    has = np.flatnonzero(np.bincount(i, minlength=n))
    starts = np.searchsorted(i, has)
    # shift by the largest weight among each candidate's others: exp never overflows, the sum is >= 1
    shift = np.zeros(n)
    shift[has] = np.maximum.reduceat(log_weights[j], starts)
    w = np.exp(log_weights[j] - shift[i])
    eu[has] = (np.bincount(i, w * utility, minlength=n) / np.maximum(np.bincount(i, w, minlength=n), 1e-300))[has]
    return eu


def choose_in_groups(values: np.ndarray, tie_break: np.ndarray, group_sizes: np.ndarray) -> np.ndarray:
    """Per group, the index of the highest value (within TIE_TOLERANCE: the higher ``tie_break``, then the earlier)."""
    k = np.asarray(group_sizes, np.int64)
    starts = _group_starts(k)
    group = np.repeat(np.arange(len(k)), k)
    eligible = values >= np.maximum.reduceat(values, starts)[group] - TIE_TOLERANCE
    ranked = np.lexsort((np.arange(len(values)), -tie_break, ~eligible, group))
    return ranked[starts]


@dataclass(frozen=True)
class MBR:
    """A configured MBR choice: utility, its configuration, and the weights of the pseudo-references."""

    utility: str = "bleu"
    weights: str = "scores"
    bleu: SentenceBLEU = field(default_factory=SentenceBLEU)

    def __post_init__(self) -> None:
        if self.utility not in UTILITIES:
            raise ValueError(f"unknown MBR utility {self.utility!r}; choose one of {', '.join(UTILITIES)}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"unknown MBR weights {self.weights!r}; choose one of {', '.join(WEIGHTS)}")

    def signature(self) -> str:
        """How the choice is made, in sacrebleu's signature style."""
        return f"mbr|weights:{self.weights}|others-only|utility:{self.bleu.signature()}"

    def expected_utilities(self, tokens: np.ndarray, lens: np.ndarray, group_sizes: np.ndarray,
                           scores: np.ndarray) -> np.ndarray:
        """EU of every packed candidate (ids without EOS) against the others of its group."""
        tokens, lens = np.asarray(tokens, np.int64), np.asarray(lens, np.int64)
        k = np.asarray(group_sizes, np.int64)
        scores = np.asarray(scores, np.float64)
        log_weights = scores if self.weights == "scores" else np.zeros_like(scores)
        eu = np.zeros(len(lens), np.float64)
        starts, token_starts = _group_starts(k), np.r_[0, np.cumsum(lens)]
        g = 0
        while g < len(k):  # batches of whole groups, about MAX_CANDIDATES candidates each
            stop = g + max(1, int(np.searchsorted(np.cumsum(k[g:]), MAX_CANDIDATES, side="right")))
            lo, hi = int(starts[g]), int(starts[g] + k[g:stop].sum())
            i, j = candidate_pairs(k[g:stop])
            utility = pairwise_bleu(self.bleu, tokens[token_starts[lo]:token_starts[hi]], lens[lo:hi], k[g:stop],
                                    i, j)
            eu[lo:hi] = expected_utility(utility, i, j, log_weights[lo:hi])
            g = stop
        return eu

    def choose(self, tokens: np.ndarray, lens: np.ndarray, group_sizes: np.ndarray,
               scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index of each group's chosen candidate, every candidate's EU); ties go to the higher score."""
        eu = self.expected_utilities(tokens, lens, group_sizes, scores)
        return choose_in_groups(eu, np.asarray(scores, np.float64), group_sizes), eu
