"""The hypotheses of another toolkit: a line-aligned text file, or K-best TSV lists reduced to one candidate.

Reading, encoding into the student's tokens and the choice among candidates are
:mod:`fairseq_seqkd.seq_kd.kbest`'s; here they are checked sentence by sentence as fairseq's
output is (every id once, no line given twice, few unknown tokens) and stored.
"""

from __future__ import annotations

import os

import numpy as np

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.io_utils import count_text_lines, format_ids
from fairseq_seqkd.seq_kd import kbest as kb
from fairseq_seqkd.seq_kd.corpus.checks import id_problems
from fairseq_seqkd.seq_kd.corpus.source import Split
from fairseq_seqkd.seq_kd.corpus.store import Hypotheses
from fairseq_seqkd.seq_kd.sentence_bleu import SentenceBLEU

MAX_UNK_RATE = 0.05  # a larger share of unknown tokens means the wrong tokenization, not rare words
MAX_FILES = 32000  # the files' numbers are int16 in the store
KBEST_SCORE = ("the kept candidate's score as read from its K-best line (the toolkit's log-probability: "
               "length-normalized only where the toolkit wrote it per token)")


class TranslationSource:
    """Translations of the split by another toolkit (see :func:`~fairseq_seqkd.seq_kd.corpus.extract_translations`)."""

    def __init__(self, translations: list[str], kbest: bool = False, seq_inter: bool = False,
                 spm_model: str | None = None, pieces: bool = False, bleu: SentenceBLEU | None = None,
                 max_unk_rate: float = MAX_UNK_RATE, threads: int = 0):
        if not translations:
            raise UserError("no translation file given")
        if spm_model and pieces:
            raise UserError("--spm-model (detokenized text, encoded with it) and --pieces (text already in the "
                            "student's pieces) exclude each other: give the one that describes the file")
        if seq_inter and not kbest:
            raise UserError("Seq-Inter chooses among K-best candidates: give K-best lists (--kbest), not a text file")
        if not kbest and len(translations) != 1:
            raise UserError(f"{len(translations)} text files given: a line-aligned translation file is one file "
                            "(concatenate the parts in order), or give K-best TSV lists with --kbest")
        if len(translations) > MAX_FILES:
            raise UserError(f"{len(translations)} K-best files: merge some of them first (at most {MAX_FILES})")
        for path in translations:
            if not os.path.isfile(path):
                raise UserError(f"{path}: no such translation file")
        self.files, self.kbest, self.seq_inter = list(translations), kbest, seq_inter
        self.spm_model, self.pieces, self.bleu = spm_model, pieces, bleu or SentenceBLEU()
        self.max_unk_rate, self.threads = max_unk_rate, threads
        self.encoder: kb.TokenEncoder | None = None
        self.empty_lines: list[tuple[str, int, int]] = []  # (file, line, id) of the first empty translations
        self._scores: np.ndarray | None = None

    def read(self, s: Split) -> Hypotheses:
        """Pass 1: every file read, encoded and (K-best) reduced to one candidate per sentence, then checked."""
        if self.seq_inter and s.reference is None:
            raise UserError(f"{s.what} has no target side: Seq-Inter needs the references it is measured against")
        if not self.kbest:
            lines = count_text_lines(self.files[0])  # a last line without a newline is a line, as read_text reads it
            if lines != s.n:
                raise UserError(
                    f"{self.files[0]}: {lines} lines but {s.what} has {s.n} sentences ({abs(lines - s.n)} "
                    f"{'missing' if lines < s.n else 'too many'}): line i must be the translation of sentence i "
                    "(data-bin's order, the prepared training text's); translate every line of the split's "
                    "source, skipping none and adding none (an empty translation is an empty line)")
        self.encoder = encoder = kb.TokenEncoder(s.tgt_dict, self.spm_model, strict=self.pieces, threads=self.threads)
        choice = kb.KBestChoice(s.n, self.seq_inter, self.bleu, s.reference,
                                [s.tgt_dict.eos_index, s.tgt_dict.pad_index]) if self.kbest else None
        hyps = Hypotheses(s.n, s.tgt_dict, s.work)
        repeats, repeat_count = [], 0
        try:
            for index, path in enumerate(self.files):
                for chunk in (kb.read_kbest(path, s.n) if self.kbest else kb.read_text(path)):
                    tokens, sizes = kb.encode_strictly(encoder, chunk, path)
                    if encoder.tokens >= 10_000 and encoder.rate() > self.max_unk_rate:
                        raise self._unknown_error()
                    empties = np.flatnonzero(sizes == 1)
                    self.empty_lines += [(path, int(chunk.numbers[k]), int(chunk.ids[k]))
                                         for k in empties[:10].tolist()]
                    if choice is None:  # a text file: one line per sentence, nothing to choose
                        hyps.store(chunk.ids, tokens, sizes, index)
                        hyps.see(chunk.ids, index)
                        continue
                    ids, kept_tokens, kept_sizes, repeated = choice.keep(chunk, tokens, sizes)
                    repeat_count += len(repeated)
                    repeats += [(path, int(chunk.numbers[k]), int(chunk.ids[k])) for k in repeated[:5].tolist()]
                    hyps.store(ids, kept_tokens, kept_sizes, index)
                    hyps.see(np.unique(chunk.ids), index)
        finally:
            hyps.close()
        problems = []
        if repeat_count:
            where = "; ".join(f"{p} line {line} (id {sid})" for p, line, sid in repeats[:5])
            problems.append(f"{repeat_count} lines repeat an earlier line of the same sentence (same id, score and "
                            f"text: {where}): a file, or part of one, was given twice; remove the repeat")
        problems += id_problems(hyps, self.files, s.n, s.what, foreign=True)
        if problems:
            raise UserError("cannot extract a corpus from " + ", ".join(self.files) + ":\n  " + "\n  ".join(problems))
        if encoder.rate() > self.max_unk_rate:
            raise self._unknown_error()
        if choice is not None and s.keep_scores:
            self._scores = choice.score
        return hyps

    def scores(self) -> tuple[np.ndarray, str] | None:
        """K-best lists: the kept candidate's score as read from its line; a text file has none."""
        if self._scores is None:
            return None
        return self._scores, KBEST_SCORE

    def report(self) -> dict:
        """The files, their format, how a candidate was chosen and how the text was encoded."""
        encoder = self.encoder
        report = {
            "translation_files": list(self.files), "format": "kbest" if self.kbest else "text",
            "selection": ("seq_inter" if self.seq_inter else "best_score") if self.kbest else "line",
            "encoding": encoder.describe(), "spm_model": self.spm_model,
            "tokens_read": encoder.tokens, "unknown_tokens": encoder.unknown,
            "unknown_rate": round(encoder.rate(), 6),
            "most_unknown": dict(encoder.unknown_kinds.most_common(10)),
        }
        if self.seq_inter:
            report["bleu"] = self.bleu.signature()
        return report

    def empty_error(self, ids: np.ndarray) -> str:
        """Empty translations refused (the default): often a misaligned file."""
        where = ", ".join(f"{p} line {line}" for p, line, _ in self.empty_lines[:5])
        return (f"{len(ids)} sentences have an empty translation (ids {format_ids(ids)}; {where}): every "
                "sentence needs one, and an empty line often means a misaligned file. If the teacher "
                "really gave nothing, choose --empty reference (the reference stands in) or --empty drop")

    def _unknown_error(self) -> UserError:
        """The UserError for translations too many of whose tokens are not in the dictionary."""
        encoder = self.encoder
        if self.spm_model:
            fix = (f"check that {self.spm_model} is the student's sentencepiece model (the one its data was encoded "
                   "with) and that the translations are detokenized text in the target language")
        else:
            fix = ("for detokenized text give the student's sentencepiece model (--spm-model, e.g. "
                   "prepared/spm.model); text already in the student's pieces is split at spaces")
        return UserError(f"{', '.join(self.files)}: {encoder.unknown} of {encoder.tokens} tokens "
                         f"({encoder.rate():.1%}) are not in the student's dictionary (most frequent: "
                         f"{dict(encoder.unknown_kinds.most_common(5))}), more than --max-unk-rate "
                         f"{self.max_unk_rate}: the translations are not in the student's token space; {fix}. Raise "
                         "--max-unk-rate if they are right")
