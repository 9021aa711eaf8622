"""Smoothed sentence-level BLEU on token ids, batched over candidates: the one BLEU of Seq-Inter.

Definition (single reference, token ids, score in [0, 100] like sacrebleu). For a hypothesis
``h`` and reference ``r`` (sequences of token ids, EOS and padding removed), ``N`` = max order
(4):

- ``m_n`` = clipped n-gram matches: the sum over the distinct n-grams ``g`` of ``h`` of
  ``min(count_h(g), count_r(g))``; ``t_n = max(len(h) - n + 1, 0)`` n-grams in ``h``.
- If every ``m_n`` is 0 the score is 0.
- Smoothing (Chen & Cherry, WMT 2014, as sacrebleu names them), orders ``n = 1..N`` in turn:
  ``add-k`` (method 2) first adds ``k`` (default 1) to ``m_n`` and ``t_n`` for ``n >= 2``;
  the orders stop at the first ``n`` with ``t_n = 0``; for an order with ``m_n > 0``,
  ``p_n = 100 m_n / t_n``; for ``m_n = 0``: ``exp`` (method 3, NIST; the default) gives
  ``p_n = 100 / (2^z t_n)`` where ``z`` counts the zero-match orders so far including this
  one, ``floor`` (method 1) gives ``p_n = 100 eps / t_n`` (eps default 0.1), ``none`` and
  ``add-k`` give ``p_n = 0``.
- Effective order (on by default, as for any sentence BLEU): the geometric mean runs over
  the ``E`` orders reached before the stop; without it over all ``N`` orders, where a
  stopped or zero order contributes ``log 0``, taken as -9999999999 (the score is then 0).
- Brevity penalty ``BP = exp(1 - len(r) / len(h))`` if ``len(h) < len(r)`` (0 for an empty
  ``h``), else 1; ``BLEU = BP * exp(sum_{n<=E} log p_n / E)``.

This is, operation for operation, sacrebleu 2.x ``BLEU(tokenize='none', smooth_method=...,
smooth_value=..., effective_order=...).sentence_score(h, [r])`` on the ids written as
space-separated strings, so the two agree to rounding (tested to 1e-9) for every smoothing
method, with and without effective order. Where they differ: this one takes exactly one
reference, works on ids (no lowercasing or tokenizer: ``tokenize='none'`` is the only
equivalent), and skips sacrebleu's string handling. Kim & Rush (2016) select Seq-Inter
candidates with "smoothed sentence-level BLEU" without fixing the smoothing; ``exp`` with
effective order (sacrebleu's sentence default) is used unless configured otherwise. Note that
on BPE data the n-grams are subword n-grams, as they are in the generator's token space.

:func:`sentence_bleu_packed` computes it for many (hypothesis, reference) pairs at once with
array operations: numpy, no Python loop over candidates or n-grams. Token tensors on a GPU are
copied to the CPU once per call; the ids are few, and at beam sizes the cost per array
operation is what counts, which is lower in numpy than in torch. :func:`sentence_bleu_plain`
is the same definition in plain loops, the reference the tests and the benchmark check it by.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

SMOOTH_METHODS = ("exp", "floor", "add-k", "none")
SMOOTH_DEFAULTS = {"exp": None, "floor": 0.1, "add-k": 1.0, "none": None}
MAX_ORDER = 4
LOG_ZERO = -9999999999.0  # sacrebleu's log(0): makes the score 0 without an exception
# Seq-Inter's choice (seq_inter, kbest): BLEU values this close count as equal, so that rounding
# never beats the model score.
TIE_TOLERANCE = 1e-9

IdArray = np.ndarray | torch.Tensor


def _smooth_value(method: str, value: float | None) -> float:
    if method not in SMOOTH_METHODS:
        raise ValueError(f"unknown smoothing method {method!r}; choose one of {', '.join(SMOOTH_METHODS)}")
    return SMOOTH_DEFAULTS[method] if value is None else float(value)


def _ids(a: IdArray | Sequence[int]) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.int64).reshape(-1)


@dataclass(frozen=True)
class SentenceBLEU:
    """A configured sentence BLEU (like ``sacrebleu.metrics.BLEU``) on token ids."""

    smooth_method: str = "exp"
    smooth_value: float | None = None
    effective_order: bool = True
    max_order: int = MAX_ORDER

    def __post_init__(self) -> None:
        _smooth_value(self.smooth_method, self.smooth_value)

    def signature(self) -> str:
        """How the number is made, in sacrebleu's signature style."""
        smooth = self.smooth_method
        if SMOOTH_DEFAULTS[smooth] is not None:
            smooth += f"[{_smooth_value(smooth, self.smooth_value):.2f}]"
        eff = "yes" if self.effective_order else "no"
        return f"sentence-bleu|nrefs:1|tok:ids|smooth:{smooth}|eff:{eff}|order:{self.max_order}"

    def score_packed(self, hyp_tokens: IdArray, hyp_lens: IdArray, ref_tokens: IdArray, ref_lens: IdArray,
                     ref_index: IdArray | None = None) -> np.ndarray:
        """BLEU of packed hypotheses against packed references (see :func:`sentence_bleu_packed`)."""
        return sentence_bleu_packed(hyp_tokens, hyp_lens, ref_tokens, ref_lens, ref_index, self.smooth_method,
                                    self.smooth_value, self.effective_order, self.max_order)

    def score_padded(self, hyps: IdArray, hyp_lens: IdArray, refs: IdArray, ref_lens: IdArray,
                     ref_index: IdArray | None = None) -> np.ndarray:
        """BLEU of padded rows: the first ``*_lens`` ids of each row are the sentence."""
        hyp_lens, ref_lens = _ids(hyp_lens), _ids(ref_lens)
        return self.score_packed(unpad(hyps, hyp_lens), hyp_lens, unpad(refs, ref_lens), ref_lens, ref_index)

    def score_lists(self, hyps: Sequence[Sequence[int]] | Sequence[torch.Tensor],
                    refs: Sequence[Sequence[int]] | Sequence[torch.Tensor],
                    ref_index: Sequence[int] | None = None) -> list[float]:
        """BLEU of id sequences; ``ref_index[i]`` names the reference of hypothesis ``i`` (default i)."""
        h, hl = pack(hyps)
        r, rl = pack(refs)
        return self.score_packed(h, hl, r, rl, None if ref_index is None else _ids(ref_index)).tolist()

    def score_plain(self, hyp: Sequence[int], ref: Sequence[int]) -> float:
        """The same number from :func:`sentence_bleu_plain` (simple loops)."""
        return sentence_bleu_plain(hyp, ref, self.smooth_method, self.smooth_value,
                                   self.effective_order, self.max_order)


def pack(seqs: Sequence[Sequence[int]] | Sequence[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate id sequences (lists or 1-D tensors, on any device) into one array plus their lengths."""
    if len(seqs) and isinstance(seqs[0], torch.Tensor):
        lens = np.fromiter((t.numel() for t in seqs), dtype=np.int64, count=len(seqs))
        return _ids(torch.cat(list(seqs))), lens  # one device-to-host copy, not one per sequence
    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    return np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=int(lens.sum())), lens


def unpad(padded: IdArray, lens: IdArray) -> np.ndarray:
    """The packed form of a padded (n, width) array whose row i holds ``lens[i]`` ids."""
    padded = padded.detach().cpu().numpy() if isinstance(padded, torch.Tensor) else np.asarray(padded)
    lens = _ids(lens)
    width = padded.shape[1]
    if lens.size and int(lens.max()) > width:
        raise ValueError(f"a length exceeds the padded width {width}")
    return padded[np.arange(width)[None, :] < lens[:, None]].astype(np.int64)


def matched_ngrams(hyp_tokens: np.ndarray, hyp_lens: np.ndarray, ref_tokens: np.ndarray, ref_lens: np.ndarray,
                   ref_index: np.ndarray, max_order: int = MAX_ORDER
                   ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Per order n = 1, 2, ...: (n, hypothesis of each matched n-gram, the n-gram's id within its reference,
    reference n-gram counts (n_ref, width)), for the packed hypotheses' n-grams that occur in reference
    ``ref_index[i]``; ids are below width. Stops at the first order with no match.

    Only a hypothesis n-gram whose (n-1)-gram prefix occurs in the reference can match, so each
    order extends the previous order's matches by one token: an n-gram is named by the id of
    its prefix among the reference's (n-1)-grams, times the vocabulary, plus its last token.
    Ids stay below (reference n-grams) x (vocabulary): no hashing and no overflow. The
    sentence is part of every id (order 0's id is the sentence), so one call mixes any
    number of sentences, and the ids of one sentence are contiguous.
    """
    n_hyp, n_ref = hyp_lens.size, ref_lens.size
    if hyp_tokens.size == 0 or ref_tokens.size == 0:
        return
    vocab = int(max(hyp_tokens.max(), ref_tokens.max())) + 1
    # per n-gram start: its sentence, its flat position, its prefix id
    cand = np.repeat(np.arange(n_hyp), hyp_lens)
    pos = np.arange(hyp_tokens.size)
    prefix = ref_index[cand]
    hyp_end = np.cumsum(hyp_lens)
    r_sent = np.repeat(np.arange(n_ref), ref_lens)
    r_pos = np.arange(ref_tokens.size)
    r_prefix = r_sent
    ref_end = np.cumsum(ref_lens)
    sentences = np.arange(n_ref)
    for n in range(1, max_order + 1):
        if n > 1:  # the n-grams that still fit in their sentence
            keep = np.flatnonzero(r_pos + (n - 1) < ref_end[r_sent])
            r_sent, r_pos, r_prefix = r_sent[keep], r_pos[keep], r_prefix[keep]
            keep = np.flatnonzero(pos + (n - 1) < hyp_end[cand])
            cand, pos, prefix = cand[keep], pos[keep], prefix[keep]
        if r_pos.size == 0 or cand.size == 0:
            return
        uniq, r_id, r_count = np.unique(r_prefix * vocab + ref_tokens[r_pos + (n - 1)],
                                        return_inverse=True, return_counts=True)
        r_id = r_id.reshape(-1)
        query = prefix * vocab + hyp_tokens[pos + (n - 1)]
        at = np.minimum(np.searchsorted(uniq, query), uniq.size - 1)
        found = np.flatnonzero(uniq[at] == query)
        if found.size == 0:
            return
        cand, pos, prefix = cand[found], pos[found], at[found]
        # count tables indexed by the id within the sentence: as wide as the most n-grams of a reference
        id_sentence = np.empty_like(uniq)
        id_sentence[r_id] = r_sent
        first = np.searchsorted(id_sentence, sentences)
        width = int(np.diff(np.r_[first, uniq.size]).max())
        ref_table = np.zeros((n_ref, width), dtype=np.int64)
        ref_table[id_sentence, np.arange(uniq.size) - first[id_sentence]] = r_count
        yield n, cand, prefix - first[ref_index[cand]], ref_table
        r_prefix = r_id


def count_table(cand: np.ndarray, ids: np.ndarray, rows: int, width: int) -> np.ndarray:
    """(rows, width) counts of the (row, id) pairs: a hypothesis's n-gram counts from :func:`matched_ngrams`."""
    return np.bincount(cand * width + ids, minlength=rows * width).reshape(rows, width)


def ngram_stats(hyp_tokens: np.ndarray, hyp_lens: np.ndarray, ref_tokens: np.ndarray, ref_lens: np.ndarray,
                ref_index: np.ndarray, max_order: int = MAX_ORDER) -> tuple[np.ndarray, np.ndarray]:
    """Clipped n-gram matches and n-gram totals, each (n, max_order) int64, of packed hypothesis i
    against packed reference ``ref_index[i]`` (the n-grams of :func:`matched_ngrams`)."""
    n_hyp = hyp_lens.size
    total = np.clip(hyp_lens[:, None] - np.arange(max_order)[None, :], 0, None)
    correct = np.zeros((n_hyp, max_order), dtype=np.int64)
    for n, cand, ids, ref_table in matched_ngrams(hyp_tokens, hyp_lens, ref_tokens, ref_lens, ref_index, max_order):
        hyp_table = count_table(cand, ids, n_hyp, ref_table.shape[1])
        correct[:, n - 1] = np.minimum(hyp_table, ref_table[ref_index]).sum(1)
    return correct, total


def bleu_from_stats(correct: np.ndarray, total: np.ndarray, hyp_lens: np.ndarray, ref_lens: np.ndarray,
                    smooth_method: str = "exp", smooth_value: float | None = None,
                    effective_order: bool = True) -> np.ndarray:
    """Smoothed BLEU (float64, 0..100) from per-row n-gram statistics (see module doc)."""
    value = _smooth_value(smooth_method, smooth_value)
    m = correct.astype(np.float64)
    t = total.astype(np.float64)
    max_order = m.shape[1]
    no_match = ~(m > 0).any(1)
    if smooth_method == "add-k":
        m[:, 1:] += value
        t[:, 1:] += value
    active = np.cumprod(t > 0, axis=1).astype(bool)  # the orders before the first empty one
    zero = (m == 0) & active
    safe_t = np.where(t > 0, t, 1.0)
    prec = np.where(active & (m > 0), 100.0 * m / safe_t, 0.0)
    if smooth_method == "exp":
        prec = np.where(zero, 100.0 / (np.power(2.0, np.cumsum(zero, axis=1)) * safe_t), prec)
    elif smooth_method == "floor":
        prec = np.where(zero, 100.0 * value / safe_t, prec)
    if effective_order:
        eff = active.sum(1)
        eff = np.where(eff > 0, eff, max_order)
    else:
        eff = np.full(m.shape[0], max_order)
    use = np.arange(max_order)[None, :] < eff[:, None]
    logp = np.where(prec > 0, np.log(np.where(prec > 0, prec, 1.0)), LOG_ZERO)
    mean_log = np.where(use, logp, 0.0).sum(1) / eff
    hl, rl = hyp_lens.astype(np.float64), ref_lens.astype(np.float64)
    bp = np.where(hl < rl, np.exp(1.0 - rl / np.where(hl > 0, hl, 1.0)), 1.0)
    bp = np.where((hl == 0) & (rl > 0), 0.0, bp)
    return np.where(no_match, 0.0, bp * np.exp(mean_log))


def sentence_bleu_packed(hyp_tokens: IdArray, hyp_lens: IdArray, ref_tokens: IdArray, ref_lens: IdArray,
                         ref_index: IdArray | None = None, smooth_method: str = "exp",
                         smooth_value: float | None = None, effective_order: bool = True,
                         max_order: int = MAX_ORDER) -> np.ndarray:
    """Sentence BLEU of every packed hypothesis against reference ``ref_index[i]`` (default i).

    Packed: ``hyp_tokens`` is the concatenation of the hypotheses (ids >= 0, numpy or torch on
    any device) and ``hyp_lens`` their lengths; likewise for the references. Returns float64 (n,).
    """
    hyp_tokens, hyp_lens, ref_tokens, ref_lens = map(_ids, (hyp_tokens, hyp_lens, ref_tokens, ref_lens))
    if ref_index is None:
        if ref_lens.size != hyp_lens.size:
            raise ValueError(f"{hyp_lens.size} hypotheses but {ref_lens.size} references and no ref_index")
        ref_index = np.arange(hyp_lens.size)
    ref_index = _ids(ref_index)
    if int(hyp_lens.sum()) != hyp_tokens.size or int(ref_lens.sum()) != ref_tokens.size:
        raise ValueError("packed tokens and lengths disagree")
    if (hyp_tokens.size and hyp_tokens.min() < 0) or (ref_tokens.size and ref_tokens.min() < 0):
        raise ValueError("token ids must be >= 0")
    correct, total = ngram_stats(hyp_tokens, hyp_lens, ref_tokens, ref_lens, ref_index, max_order)
    return bleu_from_stats(correct, total, hyp_lens, ref_lens[ref_index], smooth_method, smooth_value,
                           effective_order)


def sentence_bleu_plain(hyp: Sequence[int], ref: Sequence[int], smooth_method: str = "exp",
                        smooth_value: float | None = None, effective_order: bool = True,
                        max_order: int = MAX_ORDER) -> float:
    """The module's definition written as simple loops over one pair (the tests' reference)."""
    value = _smooth_value(smooth_method, smooth_value)
    hyp, ref = list(hyp), list(ref)
    correct, total = [], []
    for n in range(1, max_order + 1):
        h = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
        r = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
        correct.append(sum(min(c, r[g]) for g, c in h.items()))
        total.append(max(len(hyp) - n + 1, 0))
    if sum(correct) == 0:
        return 0.0
    if len(hyp) < len(ref):
        bp = math.exp(1 - len(ref) / len(hyp)) if hyp else 0.0
    else:
        bp = 1.0
    precisions = [0.0] * max_order
    halving = 1.0
    eff = max_order
    for n in range(1, max_order + 1):
        m, t = float(correct[n - 1]), float(total[n - 1])
        if smooth_method == "add-k" and n > 1:
            m, t = m + value, t + value
        if t == 0:
            break
        if effective_order:
            eff = n
        if m > 0:
            precisions[n - 1] = 100.0 * m / t
        elif smooth_method == "exp":
            halving *= 2
            precisions[n - 1] = 100.0 / (halving * t)
        elif smooth_method == "floor":
            precisions[n - 1] = 100.0 * value / t
    log_sum = 0.0
    for p in precisions[:eff]:
        log_sum += math.log(p) if p > 0 else LOG_ZERO
    return bp * math.exp(log_sum / eff)
