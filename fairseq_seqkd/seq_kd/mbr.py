"""Minimum Bayes risk (MBR) selection among the candidates of a sentence: no reference needed.

For the candidates ``c_1..c_k`` of one sentence with log-weights ``l_1..l_k`` (the model scores,
or 0 for uniform weights), the expected utility of ``c_i`` against the *other* candidates is

    EU(i) = sum_{j != i} exp(l_j) U(c_i, c_j) / sum_{j != i} exp(l_j)

that is, the expectation of ``U(c_i, Y)`` with ``Y`` drawn from the softmax of the weights over the
other candidates (uniform weights: the mean over the others). ``U(h, r)`` is the project's
sentence BLEU (:mod:`fairseq_seqkd.seq_kd.sentence_bleu`, on token ids) or sacrebleu's sentence chrF
(:mod:`fairseq_seqkd.seq_kd.sentence_chrf`, on the text of the pieces) of hypothesis ``h`` against the
pseudo-reference ``r``. The candidate with the highest EU is chosen; EU values within
``TIE_TOLERANCE`` tie, then the higher weight wins, then the earlier candidate. A sentence with one
candidate keeps it.

All pairs of many sentences are scored at once with the batched BLEU's n-gram matching and
statistics (:func:`~fairseq_seqkd.seq_kd.sentence_bleu.matched_ngrams`, ``bleu_from_stats``): each
candidate's n-grams are counted once, and the pairs' clipped matches are array operations over
the sentences that have the same number of candidates; no Python loop over candidates or pairs.
chrF does the same on code points (character n-grams up to order 6, ``chrf_from_stats``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np

from fairseq_seqkd.seq_kd.sentence_bleu import TIE_TOLERANCE, SentenceBLEU, bleu_from_stats, count_table, matched_ngrams
from fairseq_seqkd.seq_kd.sentence_chrf import PieceText, SentenceCHRF, char_codes, chrf_from_stats

UTILITIES = ("bleu", "chrf")
WEIGHTS = ("scores", "uniform")
MAX_CANDIDATES = 1 << 12  # candidates whose n-grams are counted at a time: bounds the memory
MAX_PAIR_CELLS = 1 << 22  # pair x n-gram cells compared at a time
MAX_COUNT_CELLS = 1 << 23  # candidate x n-gram cells counted at a time (chrF's sequences are long)


def _group_starts(sizes: np.ndarray) -> np.ndarray:
    return np.cumsum(sizes) - sizes


def _gather(tokens: np.ndarray, lens: np.ndarray, which: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The packed sequences ``which`` of packed ``tokens``: (tokens, lengths)."""
    sel = lens[which]
    offsets = np.repeat((np.cumsum(lens) - lens)[which] - (np.cumsum(sel) - sel), sel)
    return tokens[np.arange(int(sel.sum())) + offsets], sel


def pair_matches(tokens: np.ndarray, lens: np.ndarray, k: int, max_order: int) -> np.ndarray:
    """M[s, a, b, n - 1]: the clipped n-gram matches of candidate a against candidate b of group s, for packed groups
    of ``k`` candidates each, shape (groups, k, k, max_order).

    Each candidate's n-grams are counted once, against its group's candidates joined by a separator
    that no candidate holds (:func:`~fairseq_seqkd.seq_kd.sentence_bleu.matched_ngrams`: every n-gram
    then has one id in its group); the clipped matches of a pair are the sum over those ids of the
    smaller of the two counts.
    """
    n = len(lens)
    groups = n // k
    correct = np.zeros((groups, k, k, max_order), np.int64)
    if tokens.size:
        # each group's joint reference: c_1 SEP c_2 SEP ... SEP c_k
        sep = int(tokens.max()) + 1
        with_sep = lens + 1
        with_sep[k - 1::k] -= 1
        joint = np.full(int(with_sep.sum()), sep, np.int64)
        joint[np.arange(tokens.size) + np.repeat(np.cumsum(with_sep) - with_sep - (np.cumsum(lens) - lens), lens)] \
            = tokens
        joint_lens = with_sep.reshape(groups, k).sum(1)
        group = np.repeat(np.arange(groups), k)
        for order, cand, ids, table in matched_ngrams(tokens, lens, joint, joint_lens, group, max_order):
            counts = count_table(cand, ids, n, table.shape[1])
            width = counts.shape[1]
            counts = counts.reshape(groups, k, width)
            step = max(1, MAX_PAIR_CELLS // (k * width))
            for lo in range(0, groups, step):
                correct[lo:lo + step, :, :, order - 1] = _clipped_matches(counts[lo:lo + step])
    return correct


def _clipped_matches(counts: np.ndarray) -> np.ndarray:
    """sum_j min(c[s, a, j], c[s, b, j]) for counts (groups, k, width): (groups, k, k).

    ``min(x, y) = sum_{t >= 1} [x >= t] [y >= t]``, so the sum is a product of 0/1 matrices per
    level t (BLAS; exact in float32, every sum being below 2^24); past level 1 only the columns that
    reach the level take part.
    """
    level = (counts >= 1).astype(np.float32)
    out = level @ level.transpose(0, 2, 1)
    t = 2
    while True:
        cols = np.flatnonzero((counts >= t).any((0, 1)))
        if not cols.size:
            break
        level = (counts[:, :, cols] >= t).astype(np.float32)
        out += level @ level.transpose(0, 2, 1)
        t += 1
    return out.astype(np.int64)


def utility_matrix(bleu: SentenceBLEU, tokens: np.ndarray, lens: np.ndarray, k: int) -> np.ndarray:
    """U[s, a, b]: BLEU of candidate a (hypothesis) against candidate b (reference) of group s, for packed groups
    of ``k`` candidates each (ids without EOS), shape (groups, k, k)."""
    groups = len(lens) // k
    order_count = bleu.max_order
    correct = pair_matches(tokens, lens, k, order_count)
    hyp_lens = np.broadcast_to(lens.reshape(groups, k, 1), (groups, k, k)).reshape(-1)
    ref_lens = np.broadcast_to(lens.reshape(groups, 1, k), (groups, k, k)).reshape(-1)
    total = np.clip(hyp_lens[:, None] - np.arange(order_count)[None, :], 0, None)
    return bleu_from_stats(correct.reshape(-1, order_count), total, hyp_lens, ref_lens, bleu.smooth_method,
                           bleu.smooth_value, bleu.effective_order).reshape(groups, k, k)


def chrf_matrix(chrf: SentenceCHRF, codes: np.ndarray, lens: np.ndarray, k: int) -> np.ndarray:
    """U[s, a, b]: chrF of candidate a (hypothesis) against candidate b (reference) of group s, for packed groups
    of ``k`` candidates each (code points of :func:`~fairseq_seqkd.seq_kd.sentence_chrf.char_codes`)."""
    groups = len(lens) // k
    matches = pair_matches(codes, lens, k, chrf.char_order)
    return chrf_from_stats(matches, lens.reshape(groups, k, 1), lens.reshape(groups, 1, k), chrf.beta)


def expected_utility(utility: np.ndarray, log_weights: np.ndarray) -> np.ndarray:
    """EU (module doc) of each candidate of groups of k, from U (groups, k, k) and log-weights (groups, k)."""
    groups, k = log_weights.shape
    if k < 2:
        return np.zeros((groups, k))
    others = np.where(np.eye(k, dtype=bool)[None], -np.inf, log_weights[:, None, :])
    # shifted by the largest weight among each candidate's others: exp never overflows, the sum is >= 1
    w = np.exp(others - others.max(-1, keepdims=True))
    return (w * utility).sum(-1) / w.sum(-1)


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
    """A configured MBR choice: utility, its configuration, and the weights of the pseudo-references.

    The chrF utility reads the candidates' text: ``text`` turns their ids into it (the student's
    dictionary, :meth:`PieceText.of <fairseq_seqkd.seq_kd.sentence_chrf.PieceText.of>`).
    """

    utility: str = "bleu"
    weights: str = "scores"
    bleu: SentenceBLEU = field(default_factory=SentenceBLEU)
    chrf: SentenceCHRF = field(default_factory=SentenceCHRF)
    text: PieceText | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.utility not in UTILITIES:
            raise ValueError(f"unknown MBR utility {self.utility!r}; choose one of {', '.join(UTILITIES)}")
        if self.weights not in WEIGHTS:
            raise ValueError(f"unknown MBR weights {self.weights!r}; choose one of {', '.join(WEIGHTS)}")
        if self.utility == "chrf" and self.text is None:
            raise ValueError("the chrF utility reads the candidates' text: give text=PieceText.of(dictionary)")

    def signature(self) -> str:
        """How the choice is made, in sacrebleu's signature style."""
        utility = self.chrf.signature() + "|tok:pieces-decoded" if self.utility == "chrf" else self.bleu.signature()
        return f"mbr|weights:{self.weights}|others-only|utility:{utility}"

    def expected_utilities(self, tokens: np.ndarray, lens: np.ndarray, group_sizes: np.ndarray,
                           scores: np.ndarray) -> np.ndarray:
        """EU of every packed candidate (ids without EOS) against the others of its group."""
        tokens, lens = np.asarray(tokens, np.int64), np.asarray(lens, np.int64)
        sizes = np.asarray(group_sizes, np.int64)
        scores = np.asarray(scores, np.float64)
        log_weights = scores if self.weights == "scores" else np.zeros_like(scores)
        eu = np.zeros(len(lens), np.float64)
        if self.utility == "chrf":
            tokens, lens = char_codes(self.text.texts(tokens, lens))
            matrix = partial(chrf_matrix, self.chrf)
        else:
            matrix = partial(utility_matrix, self.bleu)
        mean_len = max(1.0, float(lens.mean())) if len(lens) else 1.0
        starts = _group_starts(sizes)
        for k in np.unique(sizes[sizes > 1]).tolist():  # groups of one size together: U is a (groups, k, k) array
            same = np.flatnonzero(sizes == k)
            # a group's candidates are counted against its k candidates joined: about k * k * mean_len cells
            per_batch = max(1, min(MAX_CANDIDATES // k, int(MAX_COUNT_CELLS // (k * k * mean_len))))
            for lo in range(0, len(same), per_batch):
                which = (starts[same[lo:lo + per_batch], None] + np.arange(k)[None, :]).reshape(-1)
                u = matrix(*_gather(tokens, lens, which), k)
                eu[which] = expected_utility(u, log_weights[which].reshape(-1, k)).reshape(-1)
        return eu

    def choose(self, tokens: np.ndarray, lens: np.ndarray, group_sizes: np.ndarray,
               scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(index of each group's chosen candidate, every candidate's EU); ties go to the higher score."""
        eu = self.expected_utilities(tokens, lens, group_sizes, scores)
        return choose_in_groups(eu, np.asarray(scores, np.float64), group_sizes), eu
