"""K-best lists of several teachers pooled: one candidate per sentence chosen among all of theirs.

Each teacher's files (fairseq-generate ``--nbest`` output or K-best TSV, recognised by their
lines) are read and re-encoded into the student's tokens (:class:`~fairseq_seqkd.seq_kd.kbest.TokenEncoder`,
per teacher: sentencepiece, pieces or words) and checked as one teacher's lists are (every sentence,
each in one file, no line twice). The candidates go to temporary files by ranges of sentence ids,
so that pass 1 holds one range at a time whatever the corpus size; each range is then merged
(:func:`~fairseq_seqkd.seq_kd.kbest.pool_candidates`: equal token ids are one candidate, scores
normalized per teacher and sentence) and one candidate chosen per sentence
(:func:`~fairseq_seqkd.seq_kd.kbest.choose_pooled`: best pooled weight, Seq-Inter or MBR). The
report counts, per teacher, how often its candidate was chosen; a candidate proposed by several
teachers credits each of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.io_utils import format_ids
from fairseq_seqkd.seq_kd import kbest as kb
from fairseq_seqkd.seq_kd.corpus.checks import id_problems
from fairseq_seqkd.seq_kd.corpus.source import Split
from fairseq_seqkd.seq_kd.corpus.store import Hypotheses
from fairseq_seqkd.seq_kd.corpus.translation_source import MAX_FILES, MAX_UNK_RATE
from fairseq_seqkd.seq_kd.mbr import MBR
from fairseq_seqkd.seq_kd.sentence_bleu import SentenceBLEU

BUCKET_SENTENCES = 1 << 14  # sentence ids per temporary range: what is in memory at once in the choice
MAX_TEACHERS = 62  # a candidate's teachers are a bit mask in an int64
META = np.dtype([("sid", "<i8"), ("teacher", "<i2"), ("file", "<i2"), ("line", "<i8"), ("score", "<f8"),
                 ("size", "<i4"), ("key", "<i8")])
NORMALIZATION = ("per teacher and sentence: log-softmax of the teacher's scores over its distinct candidates "
                 "(natural log; fairseq-generate's base-2 scores times ln 2; a candidate proposed twice by a "
                 "teacher keeps its best score); pooled weight: the mean of the teachers' probabilities")
CREDIT = ("a chosen candidate proposed by several teachers (equal token ids after re-encoding) credits each of "
          "them: the chosen counts add up to more than the sentences by chosen_from_several_teachers")


@dataclass
class Teacher:
    """One teacher's K-best files and how its text becomes the student's tokens."""

    name: str
    files: list[str]
    encoding: str  # one of kbest.ENCODINGS


def parse_teacher(spec: list[str], default_encoding: str) -> Teacher:
    """``NAME[:ENCODING] FILE [FILE ...]`` (the ``--teacher`` option) as a :class:`Teacher`."""
    if len(spec) < 2:
        raise UserError(f"--teacher {' '.join(spec)}: give a name and at least one file: --teacher NAME[:ENCODING] "
                        f"FILE [FILE ...] (ENCODING one of {', '.join(kb.ENCODINGS)})")
    name, _, encoding = spec[0].partition(":")
    if encoding and encoding not in kb.ENCODINGS:
        raise UserError(f"--teacher {spec[0]}: unknown encoding {encoding!r}: choose one of "
                        f"{', '.join(kb.ENCODINGS)} (spm: detokenized text encoded with --spm-model; pieces: "
                        "text in the student's pieces; words: split at spaces)")
    return Teacher(name, list(spec[1:]), encoding or default_encoding)


class PooledSource:
    """Several teachers' K-best lists of the split (see the module doc)."""

    def __init__(self, teachers: list[Teacher], select: str = "best", spm_model: str | None = None,
                 bleu: SentenceBLEU | None = None, mbr: MBR | None = None, max_unk_rate: float = MAX_UNK_RATE,
                 threads: int = 0):
        if not teachers:
            raise UserError("no teacher given: --teacher NAME FILE [FILE ...], once per teacher")
        if select not in kb.SELECTIONS:
            raise UserError(f"--select {select}: choose one of {', '.join(kb.SELECTIONS)}")
        names = [t.name for t in teachers]
        if len(set(names)) != len(names) or not all(names):
            raise UserError(f"teacher names {names}: give each teacher its own non-empty name")
        if len(teachers) > MAX_TEACHERS:
            raise UserError(f"{len(teachers)} teachers: pool at most {MAX_TEACHERS} at once")
        files = [f for t in teachers for f in t.files]
        if len(files) > MAX_FILES:
            raise UserError(f"{len(files)} K-best files: merge some of them first (at most {MAX_FILES})")
        twice = sorted({f for f in files if files.count(f) > 1})
        if twice:
            raise UserError(f"{', '.join(twice)}: given more than once: each file belongs to one teacher, once")
        for t in teachers:
            if t.encoding == "spm" and not spm_model:
                raise UserError(f"teacher {t.name}: encoding spm needs the student's sentencepiece model: give "
                                "--spm-model (prepare writes it as spm.model)")
            for path in t.files:
                if not os.path.isfile(path):
                    raise UserError(f"{path}: no such K-best file (teacher {t.name})")
        self.teachers, self.select, self.spm_model = teachers, select, spm_model
        self.bleu, self.mbr = bleu or SentenceBLEU(), mbr or MBR()
        self.max_unk_rate, self.threads = max_unk_rate, threads
        self.files = files
        self.stats: list[dict] = []
        self.totals: dict = {}
        self.empty_lines: list[tuple[str, int, int]] = []

    def read(self, s: Split) -> Hypotheses:
        """Pass 1: every teacher's files read, encoded and checked; per sentence one candidate chosen and stored."""
        if self.select == "seq-inter" and s.reference is None:
            raise UserError(f"{s.what} has no target side: Seq-Inter needs the references it is measured against; "
                            "choose --select mbr, which needs none")
        work = os.path.join(s.work, "pool")
        os.makedirs(work, exist_ok=True)
        problems = []
        file_index = 0
        for t, teacher in enumerate(self.teachers):
            folder = os.path.join(work, f"teacher{t}")
            os.makedirs(folder)
            seen = Hypotheses(s.n, s.tgt_dict, folder)  # only its id bookkeeping: every id, each in one file
            spm = self.spm_model if teacher.encoding == "spm" else None
            encoder = kb.TokenEncoder(s.tgt_dict, spm, strict=teacher.encoding == "pieces", threads=self.threads)
            formats, lines = set(), 0
            try:
                for index, path in enumerate(teacher.files):
                    generated = kb.is_generate_output(path)
                    formats.add("fairseq-generate" if generated else "kbest-tsv")
                    chunks = (kb.read_generate_kbest(path, s.n, detokenized=teacher.encoding == "spm") if generated
                              else kb.read_kbest(path, s.n))
                    for chunk in chunks:
                        tokens, sizes = kb.encode_strictly(encoder, chunk, path)
                        if encoder.tokens >= 10_000 and encoder.rate() > self.max_unk_rate:
                            raise self._unknown_error(teacher, encoder)
                        self.empty_lines += [(path, int(chunk.numbers[k]), int(chunk.ids[k]))
                                             for k in np.flatnonzero(sizes == 1)[:10].tolist()]
                        self._to_buckets(work, chunk, tokens, sizes, t, file_index + index)
                        seen.see(np.unique(chunk.ids), index)
                        lines += len(chunk.ids)
            finally:
                seen.close()
            file_index += len(teacher.files)
            problems += id_problems(seen, teacher.files, s.n, f"{s.what} (teacher {teacher.name})", foreign=True)
            if encoder.rate() > self.max_unk_rate:
                raise self._unknown_error(teacher, encoder)
            self.stats.append({"name": teacher.name, "files": teacher.files, "format": "+".join(sorted(formats)),
                               "encoding": encoder.describe(), "candidates": lines, "tokens_read": encoder.tokens,
                               "unknown_tokens": encoder.unknown, "unknown_rate": round(encoder.rate(), 6),
                               "chosen": 0, "chosen_alone": 0})
        if problems:
            raise UserError("cannot pool the K-best lists:\n  " + "\n  ".join(problems))
        hyps = Hypotheses(s.n, s.tgt_dict, s.work)
        try:
            self._choose(work, s, hyps)
        finally:
            hyps.close()
        return hyps

    def _to_buckets(self, work: str, chunk: kb.Candidates, tokens: np.ndarray, sizes: np.ndarray, teacher: int,
                    file_index: int) -> None:
        """Append a chunk's encoded candidates to the temporary files of their ranges of sentence ids."""
        bucket = chunk.ids // BUCKET_SENTENCES
        order = np.argsort(bucket, kind="stable")
        starts = np.cumsum(sizes) - sizes
        meta = np.empty(len(order), META)
        meta["sid"], meta["teacher"], meta["file"] = chunk.ids[order], teacher, file_index
        meta["line"], meta["score"] = chunk.numbers[order], chunk.scores[order]
        meta["size"], meta["key"] = sizes[order], chunk.keys[order]
        sel = sizes[order]
        offsets = np.repeat(starts[order] - (np.cumsum(sel) - sel), sel)
        ordered = tokens[np.arange(int(sel.sum())) + offsets].astype(np.int32)
        b_sorted = bucket[order]
        cuts = np.flatnonzero(np.r_[True, b_sorted[1:] != b_sorted[:-1]])
        token_cuts = np.r_[np.cumsum(sel) - sel, len(ordered)]
        for lo, hi in zip(cuts.tolist(), np.r_[cuts[1:], len(order)].tolist()):
            name = os.path.join(work, f"{int(b_sorted[lo]):07d}")
            with open(name + ".meta", "ab") as f:
                f.write(meta[lo:hi].tobytes())
            with open(name + ".tokens", "ab") as f:
                f.write(ordered[token_cuts[lo]:token_cuts[hi]].tobytes())

    def _choose(self, work: str, s: Split, hyps: Hypotheses) -> None:
        """Each range of sentence ids: merged, checked for repeated lines, one candidate chosen and stored."""
        strip = [s.tgt_dict.eos_index, s.tgt_dict.pad_index]
        n_teachers = len(self.teachers)
        distinct = several = 0
        repeats, repeat_count = [], 0
        for name in sorted(f[:-5] for f in os.listdir(work) if f.endswith(".meta")):
            meta = np.fromfile(os.path.join(work, name + ".meta"), META)
            tokens = np.fromfile(os.path.join(work, name + ".tokens"), np.int32).astype(np.int64)
            # a line given twice: same teacher, id, score and text
            key = np.lexsort((meta["key"], meta["teacher"], meta["sid"]))
            same = np.flatnonzero((np.diff(meta["sid"][key]) == 0) & (np.diff(meta["teacher"][key]) == 0)
                                  & (np.diff(meta["key"][key]) == 0)) + 1
            repeat_count += len(same)
            repeats += [(self.files[int(meta["file"][key[k]])], int(meta["line"][key[k]]), int(meta["sid"][key[k]]))
                        for k in same[:5].tolist()]
            pool = kb.pool_candidates(meta["sid"], meta["teacher"].astype(np.int64), tokens,
                                      meta["size"].astype(np.int64), meta["score"], n_teachers)
            references = None
            if self.select == "seq-inter":
                ref_tokens, ref_sizes, _ = kb.reference_tokens(s.reference, np.unique(pool.sid))
                references = (ref_tokens, ref_sizes)
            chosen = kb.choose_pooled(pool, self.select, strip, self.mbr, self.bleu, references)
            sizes = pool.sizes[chosen]
            starts = (np.cumsum(pool.sizes) - pool.sizes)[chosen]
            offsets = np.repeat(starts - (np.cumsum(sizes) - sizes), sizes)
            hyps.store(pool.sid[chosen], pool.tokens[np.arange(int(sizes.sum())) + offsets], sizes, 0)
            mask = pool.teachers[chosen]
            alone = (mask & (mask - 1)) == 0
            for t in range(n_teachers):
                mine = ((mask >> t) & 1).astype(bool)
                self.stats[t]["chosen"] += int(mine.sum())
                self.stats[t]["chosen_alone"] += int((mine & alone).sum())
            distinct += len(pool.sid)
            several += int((~alone).sum())
        if repeat_count:
            where = "; ".join(f"{p} line {line} (id {sid})" for p, line, sid in repeats[:5])
            raise UserError(f"{repeat_count} lines repeat an earlier line of the same teacher and sentence (same id, "
                            f"score and text: {where}): a file, or part of one, was given twice; remove the repeat")
        read = sum(t["candidates"] for t in self.stats)
        self.totals = {"candidates_read": read, "pooled_candidates": distinct, "duplicates_merged": read - distinct,
                       "chosen_from_several_teachers": several}

    def scores(self) -> tuple[np.ndarray, str] | None:
        """None: pooled weights are normalized per sentence, so they do not compare across sentences."""
        return None

    def report(self) -> dict:
        """The teachers, how candidates were pooled and chosen, and how often each teacher's was chosen."""
        report = {
            "translation_files": list(self.files), "format": "pooled-kbest",
            "selection": {"best": "best_pooled_weight", "seq-inter": "seq_inter", "mbr": "mbr"}[self.select],
            "teachers": self.stats, **self.totals, "credit": CREDIT, "score_normalization": NORMALIZATION,
            "encoding": ",".join(t["encoding"] for t in self.stats), "spm_model": self.spm_model,
            "tokens_read": sum(t["tokens_read"] for t in self.stats),
            "unknown_tokens": sum(t["unknown_tokens"] for t in self.stats),
        }
        report["unknown_rate"] = round(report["unknown_tokens"] / max(report["tokens_read"], 1), 6)
        if self.select == "seq-inter":
            report["bleu"] = self.bleu.signature()
        if self.select == "mbr":
            report["mbr"] = self.mbr.signature()
        return report

    def empty_error(self, ids: np.ndarray) -> str:
        """Empty translations chosen: refused by default."""
        where = ", ".join(f"{p} line {line}" for p, line, _ in self.empty_lines[:5])
        return (f"{len(ids)} sentences have an empty translation chosen (ids {format_ids(ids)}; empty candidates "
                f"at {where}): choose --empty reference (the reference stands in) or --empty drop, or remove the "
                "empty candidates")

    def _unknown_error(self, teacher: Teacher, encoder: kb.TokenEncoder) -> UserError:
        """The UserError for a teacher whose text is not in the student's token space."""
        fix = {"spm": f"check that {self.spm_model} is the student's sentencepiece model and that the teacher's "
                      "text is detokenized (fairseq-generate: generated with --post-process)",
               "pieces": "the text is not in the student's pieces: give the teacher :spm with --spm-model",
               "words": "for detokenized text give the teacher :spm and the student's --spm-model"}[teacher.encoding]
        return UserError(f"teacher {teacher.name} ({', '.join(teacher.files)}): {encoder.unknown} of {encoder.tokens} "
                         f"tokens ({encoder.rate():.1%}) are not in the student's dictionary (most frequent: "
                         f"{dict(encoder.unknown_kinds.most_common(5))}), more than --max-unk-rate "
                         f"{self.max_unk_rate}: {fix}")
