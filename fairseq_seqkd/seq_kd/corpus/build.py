"""One way to a distilled corpus from any source of hypotheses: :func:`build_corpus`, and the two entry points
that make a source and call it (:func:`extract_corpus`, :func:`extract_translations`)."""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from fairseq_seqkd.data.indexed import SymbolLines
from fairseq_seqkd.errors import UserError
from fairseq_seqkd.io_utils import check_free_space
from fairseq_seqkd.seq_kd.corpus import writer
from fairseq_seqkd.seq_kd.corpus.data import language_pair_data, other_split_files, text_lines
from fairseq_seqkd.seq_kd.corpus.generate_source import GenerateSource
from fairseq_seqkd.seq_kd.corpus.pool_source import PooledSource, Teacher
from fairseq_seqkd.seq_kd.corpus.source import HypothesisSource, Split
from fairseq_seqkd.seq_kd.corpus.translation_source import MAX_UNK_RATE, TranslationSource
from fairseq_seqkd.seq_kd.filters import CorpusFilter, Filters
from fairseq_seqkd.seq_kd.mbr import MBR
from fairseq_seqkd.seq_kd.sentence_bleu import SentenceBLEU

EMPTY_POLICIES = ("reference", "drop", "error")
NO_SCORES = ("--filter-score-quantile needs the teacher's score of each translation, comparable across sentences: "
             "fairseq-generate output (the H- line's score) or --kbest lists (the kept candidate's score). A "
             "line-aligned --translations file has none, and pooled lists (--teacher, --select mbr) have weights "
             "normalized per sentence: leave the option out, or give K-best lists with --kbest")


def _check_policy(empty: str, what: str) -> None:
    """Refuse an unknown empty-hypothesis policy, naming the choices."""
    if empty not in EMPTY_POLICIES:
        raise UserError(f"empty-{what} policy {empty!r}: choose one of {', '.join(EMPTY_POLICIES)}")


def build_corpus(source: HypothesisSource, data: str, out: str, split: str = "train",
                 source_lang: str | None = None, target_lang: str | None = None, source_text: str | None = None,
                 empty: str = "reference", copy_splits: bool = True, filters: Filters | None = None) -> dict:
    """The corpus of ``split`` of ``data`` with ``source``'s hypotheses as targets, in ``out``; return the report.

    Pass 1 is the source's; then empty hypotheses are handled (``empty``), the threshold of the
    score filter computed over the whole split, the pairs written, those that ``filters`` drop
    left out and listed (:mod:`~fairseq_seqkd.seq_kd.filters`), and the files moved into ``out``
    (:mod:`~fairseq_seqkd.seq_kd.corpus.writer`).
    """
    _check_policy(empty, "hypothesis")
    filters = filters if filters is not None and filters.active() else None
    if filters is not None:
        filters.check()
    task, src_reader, reference, folder = language_pair_data(data, split, source_lang, target_lang)
    try:
        src, tgt = task.cfg.source_lang, task.cfg.target_lang
        if os.path.realpath(out) == os.path.realpath(folder):
            raise UserError(f"--out {out} is the data folder itself: its {split} split would be overwritten; "
                            "write the distilled corpus to a new folder")
        src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
        n = len(src_reader)
        what = f"{data} split '{split}'"
        if filters is not None and reference is None:
            for option, value in (("--filter-min-bleu", filters.min_bleu), ("--filter-min-chrf", filters.min_chrf)):
                if value is not None:
                    raise UserError(f"{option} measures the teacher's translations against the references, but "
                                    f"{what} has no target side: leave the option out for this split")
        if source_text is not None:
            lines = sum(1 for _ in text_lines(source_text))
            if lines != n:
                raise UserError(f"{source_text}: {lines} lines but {what} has {n} sentences: give "
                                "the source text the data was binarized from")
        as_string = SymbolLines(src_dict.symbols, unk=src_dict.unk_index, unk_word=src_dict.unk_word,
                                skip=[src_dict.eos_index, src_dict.bos_index])
        others = other_split_files(folder, split, src, tgt) if copy_splits else []
        out_existed = os.path.isdir(out)
        if out_existed:
            writer.remove_stale_temporaries(out)
        copied = others + [f"dict.{lang}.txt" for lang in (src, tgt)]
        check_free_space(out, writer.corpus_bytes(src_reader, reference, n, src_dict, tgt_dict, folder, copied),
                         f"extract's corpus of {what}")
        os.makedirs(out, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=out, prefix=writer.TEMPORARY_PREFIX)
        try:  # the temporary folder goes, whatever happens; a killed extract's goes at the next one's start
            writer.claim(tmp)
            keep_scores = filters is not None and filters.score_quantile is not None
            hyps = source.read(Split(src_reader, reference, tgt_dict, n, what, as_string,
                                     os.path.join(tmp, writer.WORK), source_text, keep_scores))
            empty_ids = np.flatnonzero(hyps.length == 1)
            if len(empty_ids) and empty == "reference" and reference is None:
                raise UserError(f"{what} has no target side to fall back on for its empty hypotheses: "
                                "use --empty drop")
            if len(empty_ids) and empty == "error":
                raise UserError(source.empty_error(empty_ids))

            judge = None
            if filters is not None:
                scored = source.scores() if keep_scores else None
                if keep_scores and scored is None:
                    raise UserError(NO_SCORES)
                judge = CorpusFilter(filters, os.path.join(tmp, writer.dropped_name(split)),
                                     *(scored or (None, None)), strip=[tgt_dict.eos_index, tgt_dict.pad_index])
            sides = ((src, src_dict), (tgt, tgt_dict))
            prefix = os.path.join(tmp, f"{split}.{src}-{tgt}.")
            try:
                written, target_tokens = writer.write_pairs(prefix, sides, hyps, src_reader, reference, empty,
                                                            source_text, as_string, judge)
            finally:
                if judge is not None:
                    judge.close()
            shutil.rmtree(os.path.join(tmp, writer.WORK))
            report = {
                "split": split, "source_lang": src, "target_lang": tgt, "sentences": n, "written": written,
                **source.report(), "empty_hypotheses": len(empty_ids), "empty_policy": empty,
                "empty_ids": empty_ids[:1000].tolist(),
                "dropped_ids": empty_ids[:1000].tolist() if empty == "drop" else [],
                "source": source_text or os.path.join(folder, f"{split}.{src}-{tgt}.{src}"),
                "target_tokens": target_tokens,
                "copied_splits": sorted({name.split(".")[0] for name in others}),
            }
            if judge is not None:
                report["filters"] = judge.report(writer.dropped_name(split))
            writer.finish(out, tmp, split, sides, folder, others, report)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if not out_existed and not os.listdir(out):
                os.rmdir(out)
    finally:
        src_reader.close()
        if reference is not None:
            reference.close()
    return report


def extract_corpus(generated: list[str], data: str, out: str, split: str = "train",
                   source_lang: str | None = None, target_lang: str | None = None,
                   num_shards: int | None = None, source_text: str | None = None, empty: str = "reference",
                   copy_splits: bool = True, check_sources: bool = True, filters: Filters | None = None) -> dict:
    """Merge ``fairseq-generate`` outputs of ``split`` into a binarized corpus in ``out``; return the report.

    See :mod:`~fairseq_seqkd.seq_kd.corpus.generate_source` for the checks; any failure is a UserError
    naming the file(s) and ids.
    """
    _check_policy(empty, "hypothesis")
    source = GenerateSource(generated, num_shards, check_sources)
    return build_corpus(source, data, out, split, source_lang, target_lang, source_text, empty, copy_splits, filters)


def extract_translations(translations: list[str], data: str, out: str, split: str = "train",
                         kbest: bool = False, seq_inter: bool = False, spm_model: str | None = None,
                         pieces: bool = False, bleu: SentenceBLEU | None = None,
                         source_lang: str | None = None, target_lang: str | None = None,
                         source_text: str | None = None, empty: str | None = None, copy_splits: bool = True,
                         max_unk_rate: float = MAX_UNK_RATE, threads: int = 0, filters: Filters | None = None) -> dict:
    """A binarized corpus in ``out`` from another toolkit's translations of ``split``; return the report.

    ``translations``: one text file line-aligned with the split, or (``kbest``) K-best TSV files
    (:mod:`fairseq_seqkd.seq_kd.kbest`), reduced to the best-scoring candidate of each sentence or, with
    ``seq_inter``, to the one closest to the data's reference by ``bleu`` (default: the
    ``--seq-inter`` generator's). ``spm_model``: the student's sentencepiece model, for detokenized
    text; ``pieces``: the text is in the student's pieces already (every token must be in the
    dictionary); neither: split at whitespace, unknown words become ``<unk>``. More than
    ``max_unk_rate`` unknown tokens is refused (the wrong tokenization). ``empty`` (default
    ``error``): an empty translation is refused, replaced by the reference or dropped.
    """
    empty = empty or "error"
    _check_policy(empty, "translation")
    if filters is not None and filters.score_quantile is not None and not kbest:
        raise UserError(NO_SCORES)
    source = TranslationSource(translations, kbest, seq_inter, spm_model, pieces, bleu, max_unk_rate, threads)
    return build_corpus(source, data, out, split, source_lang, target_lang, source_text, empty, copy_splits, filters)


def extract_pooled(teachers: list[Teacher], data: str, out: str, split: str = "train", select: str = "best",
                   spm_model: str | None = None, bleu: SentenceBLEU | None = None, mbr: MBR | None = None,
                   source_lang: str | None = None, target_lang: str | None = None, source_text: str | None = None,
                   empty: str | None = None, copy_splits: bool = True, max_unk_rate: float = MAX_UNK_RATE,
                   threads: int = 0, filters: Filters | None = None) -> dict:
    """A binarized corpus in ``out`` from several teachers' K-best lists of ``split``, pooled; return the report.

    See :mod:`~fairseq_seqkd.seq_kd.corpus.pool_source`: ``select`` is ``best`` (the highest pooled
    weight), ``seq-inter`` (closest to the reference by ``bleu``) or ``mbr`` (``mbr``; no reference
    needed). ``empty`` (default ``error``) as for :func:`extract_translations`.
    """
    empty = empty or "error"
    _check_policy(empty, "translation")
    if filters is not None and filters.score_quantile is not None:
        raise UserError(NO_SCORES)
    source = PooledSource(teachers, select, spm_model, bleu, mbr, max_unk_rate, threads)
    return build_corpus(source, data, out, split, source_lang, target_lang, source_text, empty, copy_splits, filters)
