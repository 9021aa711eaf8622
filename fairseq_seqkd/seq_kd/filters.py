"""Filters of a distilled corpus: which of the teacher's translations to leave out, and why.

Five optional tests of a sentence pair (source, teacher's hypothesis), each a plain function:

- ``score``: the teacher's score of its hypothesis is below the ``q``-quantile of the scores of
  the whole split (:func:`score_threshold`; computed once every hypothesis is read);
- ``length_ratio``: hypothesis tokens / source tokens outside ``[1/r, r]`` (:func:`length_ratio_outliers`);
- ``source_copy``: the hypothesis is the source, or nearly (:data:`COPY_RULE`, :func:`source_copies`);
- ``bleu``: sentence BLEU of the hypothesis against the reference below a threshold
  (:func:`low_bleu`, the project's batched sentence BLEU on token ids);
- ``chrf``: sacrebleu's sentence chrF of the hypothesis against the reference below a threshold
  (:func:`low_chrf`, on the text of the student's pieces, :mod:`fairseq_seqkd.seq_kd.sentence_chrf`).

:class:`CorpusFilter` applies them chunk by chunk while the corpus is written, counts each
reason and lists every dropped sentence in a TSV file beside the report.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.seq_kd.kbest import candidate_bleu
from fairseq_seqkd.seq_kd.sentence_bleu import SentenceBLEU
from fairseq_seqkd.seq_kd.sentence_chrf import PieceText, SentenceCHRF

REASONS = ("score", "length_ratio", "source_copy", "bleu", "chrf")
EMPTY = "empty"  # the reason of an empty hypothesis dropped by --empty drop, listed with the others
DROPPED_COLUMNS = ("sentence_id", "reasons", "score", "length_ratio", "bleu", "chrf", "source", "hypothesis")
COPY_RULE = ("the hypothesis and the source are equal once each is lowercased (casefold), its subword marks "
             "('@@', U+2581) removed and only its letters and digits kept (spaces, punctuation and "
             "segmentation ignored), and the source holds at least one letter")
QUANTILE_RULE = ("numpy.quantile (linear interpolation) of the scores of every sentence of the split; a "
                 "hypothesis scoring strictly below it is dropped")
JUDGED = "non-empty hypotheses only: an empty one follows --empty (the reference stands in, or it is dropped)"


@dataclass(frozen=True)
class Filters:
    """Which filters are on (``None``/False: off), the sentence BLEU and chrF that the ``bleu`` and ``chrf`` filters
    use, and (``chrf``) how token ids become text: ``PieceText.of(target dictionary)``."""

    score_quantile: float | None = None
    length_ratio: float | None = None
    source_copies: bool = False
    min_bleu: float | None = None
    bleu: SentenceBLEU = field(default_factory=SentenceBLEU)
    min_chrf: float | None = None
    chrf: SentenceCHRF = field(default_factory=SentenceCHRF)
    text: PieceText | None = field(default=None, compare=False, repr=False)

    def active(self) -> bool:
        """Whether any filter is on."""
        return (self.score_quantile is not None or self.length_ratio is not None or self.source_copies
                or self.min_bleu is not None or self.min_chrf is not None)

    def check(self) -> None:
        """Refuse values that cannot be meant, naming the option and its range."""
        q, r, b, c = self.score_quantile, self.length_ratio, self.min_bleu, self.min_chrf
        if q is not None and not 0 < q < 1:
            raise UserError(f"--filter-score-quantile {q}: give a fraction between 0 and 1 (0.05 drops the 5% of "
                            "sentences with the lowest teacher scores)")
        if r is not None and not (r >= 1 and math.isfinite(r)):
            raise UserError(f"--filter-length-ratio {r}: give a ratio of at least 1 (3.0 keeps hypotheses between "
                            "1/3 and 3 times the source's length in tokens)")
        if b is not None and not 0 <= b <= 100:
            raise UserError(f"--filter-min-bleu {b}: give a sentence BLEU between 0 and 100")
        if c is not None and not 0 <= c <= 100:
            raise UserError(f"--filter-min-chrf {c}: give a sentence chrF between 0 and 100")
        if c is not None and self.text is None:
            raise ValueError("the chrF filter reads the text of the pieces: give text=PieceText.of(target dictionary)")

    def options(self) -> dict:
        """The options as the report names them."""
        return {"score_quantile": self.score_quantile, "length_ratio": self.length_ratio,
                "source_copies": self.source_copies, "min_bleu": self.min_bleu, "min_chrf": self.min_chrf}


def score_threshold(scores: np.ndarray, quantile: float) -> float:
    """The ``quantile`` of ``scores`` (numpy's linear interpolation): scores strictly below it are dropped."""
    return float(np.quantile(np.asarray(scores, np.float64), quantile))


def length_ratios(src_lengths: np.ndarray, hyp_lengths: np.ndarray) -> np.ndarray:
    """Hypothesis / source length in tokens (EOS not counted); an empty source gives inf."""
    src = np.asarray(src_lengths, np.float64)
    hyp = np.asarray(hyp_lengths, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(src > 0, hyp / np.where(src > 0, src, 1), np.inf)


def length_ratio_outliers(ratios: np.ndarray, ratio: float) -> np.ndarray:
    """Whether each ratio is outside ``[1/ratio, ratio]``."""
    ratios = np.asarray(ratios, np.float64)
    return (ratios > ratio) | (ratios < 1.0 / ratio)


def copy_key(text: str) -> str:
    """The text as :data:`COPY_RULE` compares it: casefolded, subword marks gone, letters and digits only."""
    text = unicodedata.normalize("NFKC", text.replace("@@", "").replace("\u2581", "")).casefold()
    return "".join(c for c in text if c.isalnum())


def source_copies(sources: list[str], hypotheses: list[str]) -> np.ndarray:
    """Whether each hypothesis is a copy of its source by :data:`COPY_RULE`."""
    out = np.zeros(len(hypotheses), bool)
    for k, (s, h) in enumerate(zip(sources, hypotheses)):
        key = copy_key(s)
        out[k] = key == copy_key(h) and any(c.isalpha() for c in key)
    return out


def low_bleu(bleu: SentenceBLEU, hyp_tokens: np.ndarray, hyp_sizes: np.ndarray, ref_tokens: np.ndarray,
             ref_sizes: np.ndarray, strip: list[int], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(sentence BLEU of each packed hypothesis against its reference, whether it is below ``threshold``)."""
    values = candidate_bleu(bleu, hyp_tokens, hyp_sizes, ref_tokens, ref_sizes, np.arange(len(hyp_sizes)), strip)
    return values, values < threshold


def low_chrf(chrf: SentenceCHRF, text: PieceText, hyp_tokens: np.ndarray, hyp_sizes: np.ndarray,
             ref_tokens: np.ndarray, ref_sizes: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(sentence chrF of the text of each packed hypothesis against its reference's, whether it is below
    ``threshold``); ``text`` leaves EOS and padding out."""
    values = chrf.score_texts(text.texts(hyp_tokens, hyp_sizes), text.texts(ref_tokens, ref_sizes))
    return values, values < threshold


def _number(x: float, digits: int) -> str:
    return "inf" if math.isinf(x) else f"{x:.{digits}f}"


class CorpusFilter:
    """The filters applied to a split's pairs chunk by chunk: the dropped sentences, counted and listed.

    ``scores``: the teacher's score of every sentence's hypothesis (needed by the ``score``
    filter, whose threshold is computed here over all of them); ``dropped_path``: the TSV file
    written as the chunks come (header :data:`DROPPED_COLUMNS`, one line per dropped sentence,
    its reasons comma-separated, the values of the filters that are on).
    """

    def __init__(self, filters: Filters, dropped_path: str, scores: np.ndarray | None = None,
                 score_kind: str | None = None, strip: list[int] | None = None):
        filters.check()
        if filters.score_quantile is not None and scores is None:
            raise ValueError("the score filter needs the scores")
        self.filters, self.scores, self.score_kind = filters, scores, score_kind
        self.threshold = (score_threshold(scores, filters.score_quantile)
                          if filters.score_quantile is not None else None)
        self.strip = list(strip or [])
        self.counts = dict.fromkeys(REASONS, 0)
        self.judged = self.dropped = self.dropped_empty = 0
        self.dropped_path = dropped_path
        self._file = open(dropped_path, "w", encoding="utf-8")
        self._file.write("\t".join(DROPPED_COLUMNS) + "\n")

    def judge(self, start: int, src_sizes: np.ndarray, src_text: bytes, hyp_tokens: np.ndarray,
              hyp_sizes: np.ndarray, hyp_text: bytes, reference, empty_dropped: np.ndarray) -> np.ndarray:
        """The pairs of sentences ``start``.. (sizes with EOS; texts one line each) to drop: a bool mask.

        Empty hypotheses are not judged (``empty_dropped``: those of them that ``--empty drop``
        drops, listed with the reason ``empty``); ``reference``: the split's target side, for ``bleu`` and ``chrf``.
        """
        f = self.filters
        m = len(hyp_sizes)
        hyp_lengths = np.asarray(hyp_sizes, np.int64) - 1
        judged = hyp_lengths > 0
        self.judged += int(judged.sum())
        reasons = {}
        values: dict[str, np.ndarray] = {}
        if self.threshold is not None:
            values["score"] = self.scores[start:start + m]
            reasons["score"] = values["score"] < self.threshold
        if f.length_ratio is not None:
            values["length_ratio"] = length_ratios(np.asarray(src_sizes, np.int64) - 1, hyp_lengths)
            reasons["length_ratio"] = length_ratio_outliers(values["length_ratio"], f.length_ratio)
        src_lines = hyp_lines = None
        if f.source_copies:
            src_lines = src_text.decode("utf-8").split("\n")[:-1]
            hyp_lines = hyp_text.decode("utf-8").split("\n")[:-1]
            reasons["source_copy"] = source_copies(src_lines, hyp_lines)
        if f.min_bleu is not None:
            ref_tokens, ref_sizes = reference.tokens(start, start + m)
            values["bleu"], reasons["bleu"] = low_bleu(f.bleu, hyp_tokens, hyp_sizes, ref_tokens,
                                                       np.asarray(ref_sizes, np.int64), self.strip, f.min_bleu)
        if f.min_chrf is not None:
            if reference is None:
                raise UserError("--filter-min-chrf measures the teacher's translations against the references, but "
                                "the split has no target side: leave the option out for this split")
            ref_tokens, ref_sizes = reference.tokens(start, start + m)
            values["chrf"], reasons["chrf"] = low_chrf(f.chrf, f.text, hyp_tokens, hyp_sizes, ref_tokens,
                                                       np.asarray(ref_sizes, np.int64), f.min_chrf)
        drop = np.zeros(m, bool)
        for name, mask in reasons.items():
            mask &= judged
            self.counts[name] += int(mask.sum())
            drop |= mask
        self.dropped += int(drop.sum())
        self.dropped_empty += len(empty_dropped)
        listed = np.flatnonzero(drop)
        if len(empty_dropped):
            listed = np.union1d(listed, empty_dropped)
        if len(listed):
            if src_lines is None:
                src_lines = src_text.decode("utf-8").split("\n")[:-1]
                hyp_lines = hyp_text.decode("utf-8").split("\n")[:-1]
            rows = []
            for k in listed.tolist():
                why = [name for name in REASONS if name in reasons and reasons[name][k]] or [EMPTY]
                cells = [str(start + k), ",".join(why),
                         _number(float(values["score"][k]), 4) if "score" in values else "",
                         _number(float(values["length_ratio"][k]), 3) if "length_ratio" in values else "",
                         _number(float(values["bleu"][k]), 2) if "bleu" in values else "",
                         _number(float(values["chrf"][k]), 2) if "chrf" in values else "",
                         src_lines[k].replace("\t", " "), hyp_lines[k].replace("\t", " ")]
                rows.append("\t".join(cells) + "\n")
            self._file.write("".join(rows))
        return drop

    def close(self) -> None:
        """Close the list of dropped sentences."""
        self._file.close()

    def report(self, dropped_name: str) -> dict:
        """The extract report's ``filters`` section: options, rules, the threshold and the counts per reason."""
        f = self.filters
        report = {"options": f.options(), "judged": JUDGED, "judged_sentences": self.judged,
                  "dropped": {name: self.counts[name] for name in REASONS}, "dropped_sentences": self.dropped,
                  "dropped_empty": self.dropped_empty, "dropped_file": dropped_name,
                  "note": "a sentence failing several filters counts once per reason and once in dropped_sentences"}
        if f.score_quantile is not None:
            report.update(score=self.score_kind, score_threshold=self.threshold, score_rule=QUANTILE_RULE)
        if f.length_ratio is not None:
            report["length_ratio_rule"] = "hypothesis tokens / source tokens (EOS not counted) outside [1/r, r]"
        if f.source_copies:
            report["copy_rule"] = COPY_RULE
        if f.min_bleu is not None:
            report["bleu"] = f.bleu.signature() + " (hypothesis against the reference; below min_bleu dropped)"
        if f.min_chrf is not None:
            report["chrf"] = (f.chrf.signature() + "|tok:pieces-decoded (the text of the hypothesis's pieces against "
                              "the reference's; below min_chrf dropped)")
        return report
