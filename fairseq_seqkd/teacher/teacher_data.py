"""A data folder for a student of a fairseq teacher folder: text encoded as the teacher's data was, binarized.

:func:`prepare_teacher_data` encodes parallel text with fairseq's own encoders (``--tokenizer moses``,
``--bpe subword_nmt`` / ``sentencepiece``, in the order fairseq's hub interface applies them) through
:func:`fairseq_seqkd.data.encode.encode_split`, the one encoding of both data paths, and binarizes it
with the teacher's dictionaries, so that a student trained on it shares the teacher's vocabulary
(Word-KD needs that) and the teacher can translate it. The folder is read and checked by
:func:`fairseq_seqkd.teacher.folder.read_teacher_folder`.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict

from fairseq_seqkd.data import encode
from fairseq_seqkd.data.encode import SPLITS, CleanConfig, Encoder, SplitStats, TooLong
from fairseq_seqkd.data.text_codec import TextCodec
from fairseq_seqkd.errors import UserError
from fairseq_seqkd.io_utils import atomic_write_text, file_sha256
from fairseq_seqkd.teacher.folder import TeacherFolder, load_dictionary

logger = logging.getLogger(__name__)

MANIFEST = "teacher.json"
ENCODE_CHUNK = 2000  # pairs per work item: bounded memory, and enough work to amortize the pool


# ---------------------------------------------------------------------------------------------
# Encoding text as the teacher's training data was


class TeacherEncoder(TextCodec):
    """One language's text to the teacher's subword tokens and back, with fairseq's own encoders."""

    def __init__(self, teacher: TeacherFolder, lang: str):
        super().__init__(teacher.bpe, teacher.bpe_file, lang, teacher.tokenizer,
                         teacher.moses_no_dash_splits, teacher.moses_no_escape)


_WORKER: tuple[TeacherEncoder, TeacherEncoder] | None = None


def _start_worker(teacher: TeacherFolder) -> None:
    global _WORKER
    _WORKER = (TeacherEncoder(teacher, teacher.src), TeacherEncoder(teacher, teacher.tgt))


def _encode_in_worker(job: tuple[int, list[str]]) -> list[list[str]]:
    assert _WORKER is not None
    side, lines = job
    return _WORKER[side].encode_batch(lines)


class _PooledEncoder:
    """One side's :class:`TeacherEncoder` in each process of a pool: a batch is cut into work items."""

    def __init__(self, pool, side: int):
        self.pool, self.side = pool, side

    def encode_batch(self, lines: Sequence[str]) -> list[list[str]]:
        jobs = [(self.side, list(lines[i:i + ENCODE_CHUNK])) for i in range(0, len(lines), ENCODE_CHUNK)]
        return [pieces for part in self.pool.imap(_encode_in_worker, jobs) for pieces in part]


@contextmanager
def teacher_encoders(teacher: TeacherFolder, workers: int = 1) -> Iterator[tuple[Encoder, Encoder]]:
    """(source, target) encoders of the teacher's text, in this process or over ``workers`` processes."""
    if workers <= 1:
        yield TeacherEncoder(teacher, teacher.src), TeacherEncoder(teacher, teacher.tgt)
        return
    # fork: the workers inherit the loaded modules; each builds its own encoders once
    with multiprocessing.get_context("fork").Pool(workers, _start_worker, (teacher,)) as pool:
        yield _PooledEncoder(pool, 0), _PooledEncoder(pool, 1)


# ---------------------------------------------------------------------------------------------
# A data folder for the student: encoded text, the teacher's dictionaries, fairseq-preprocess


def _encode_split(teacher: TeacherFolder, split: str, files: Sequence[tuple[str, str]], out_dir: str,
                  clean: CleanConfig, workers: int) -> dict:
    """Write OUT/{split}.{src,tgt} (teacher tokens) and OUT/{split}.raw.{src,tgt} (the kept sentences)."""
    src, tgt = teacher.src, teacher.tgt
    vocab = (set(load_dictionary(teacher.dicts[src]).symbols), set(load_dictionary(teacher.dicts[tgt]).symbols))
    read_stats = SplitStats()  # apart: with workers, the pairs are read while the pool encodes
    origin: list[tuple[str, str, int]] = []  # valid/test: the kept pairs' files and sentence numbers, for errors

    def kept() -> Iterator[tuple[str, str]]:
        for s, t, where in encode.read_pairs(split, files, clean, read_stats):
            if split != "train":
                origin.append(where)
            yield s, t

    def too_long_error(too_long: TooLong) -> UserError:
        sides = [f"{origin[i][side]} sentence {origin[i][2]}: {n} tokens" for i, *counts in too_long
                 for side, (lang, n) in enumerate(zip((src, tgt), counts)) if not 0 < n < teacher.max_positions[lang]]
        return UserError(
            f"{split}: {len(sides)} sentence(s) empty or longer than the teacher's max positions "
            f"({teacher.max_positions[src]} {src}, {teacher.max_positions[tgt]} {tgt}, end of sentence included) "
            f"after its tokenization: {'; '.join(sides[:5])}. A {split} sentence is never dropped: split or "
            "shorten it in both files, or remove the pair")

    paths = [os.path.join(out_dir, f"{split}{kind}.{lang}") for kind in ("", ".raw") for lang in (src, tgt)]
    with teacher_encoders(teacher, workers) as encoders:
        encoded = encode.encode_split(split, kept(), paths, encoders, clean, (teacher.max_positions[src],
                               teacher.max_positions[tgt]), too_long_error, ENCODE_CHUNK * max(1, workers), vocab)
    stats = encoded.stats
    stats.read = read_stats.read
    for reason, n in read_stats.dropped.items():
        stats.dropped[reason] = stats.dropped.get(reason, 0) + n
    if stats.kept == 0:
        raise UserError(f"{split}: no sentence pair left in {', '.join(p for pair in files for p in pair)}")
    tokens, unknown = dict(zip((src, tgt), encoded.tokens)), dict(zip((src, tgt), encoded.unknown))
    for lang in (src, tgt):
        if unknown[lang] > 0.01 * max(tokens[lang], 1):  # fairseq-preprocess maps them to <unk>: another subword model?
            logger.warning("%s.%s: %.1f%% of the tokens are not in %s; is %s the subword model this teacher was "
                           "trained with?", split, lang, 100 * unknown[lang] / max(tokens[lang], 1),
                           teacher.dicts[lang], teacher.bpe_file)
    logger.info("encoded %s", stats.summary(split))
    return {**asdict(stats), "tokens": tokens, "unknown_tokens": unknown}


def _write_dict(teacher: TeacherFolder, lang: str, out_dir: str) -> str:
    """OUT/dict.LANG.txt: the teacher's file, with fairseq's madeupword lines where the checkpoint has them."""
    with open(teacher.dicts[lang], encoding="utf-8") as f:
        text = f.read()
    if text and not text.endswith("\n"):
        text += "\n"
    missing = teacher.embedding_rows[lang] - teacher.symbols[lang]
    # the very symbols Dictionary.pad_to_multiple_ adds, in its order, as Dictionary.save writes them
    text += "".join(f"madeupword{i:04d} 0\n" for i in range(missing))
    path = os.path.join(out_dir, f"dict.{lang}.txt")
    atomic_write_text(path, text)
    size = len(load_dictionary(path))
    if size != teacher.embedding_rows[lang]:  # e.g. the file already holds madeupword0000
        raise UserError(f"{teacher.dicts[lang]}: padded to {teacher.embedding_rows[lang]} rows it has {size} "
                        "symbols; use the dictionary that came with the checkpoint")
    return path


def preprocess_args(manifest: Mapping) -> list[str]:
    """The ``fairseq-preprocess`` options that binarize a teacher data folder with the teacher's dictionaries."""
    out, src, tgt = manifest["out_dir"], manifest["teacher"]["src"], manifest["teacher"]["tgt"]
    args = ["--source-lang", src, "--target-lang", tgt]
    for split in manifest["splits"]:
        args += [f"--{split}pref", os.path.join(out, split)]
    # fairseq-preprocess refuses --tgtdict next to --joined-dictionary: the source dictionary serves both
    if manifest["teacher"]["joined"]:
        return args + ["--srcdict", os.path.join(out, f"dict.{src}.txt"), "--joined-dictionary"]
    return args + ["--srcdict", os.path.join(out, f"dict.{src}.txt"), "--tgtdict", os.path.join(out, f"dict.{tgt}.txt")]


def binarize(manifest: Mapping, destdir: str, workers: int = 1) -> None:
    """Run fairseq-preprocess (fairseq's own, in this process) with the teacher's dictionaries into ``destdir``."""
    from fairseq import options
    from fairseq_cli import preprocess

    argv = [*preprocess_args(manifest), "--destdir", destdir, "--workers", str(max(1, workers))]
    logger.info("fairseq-preprocess %s", " ".join(argv))
    preprocess.main(options.get_preprocessing_parser().parse_args(argv))
    for lang in (manifest["teacher"]["src"], manifest["teacher"]["tgt"]):
        rows = manifest["teacher"]["embedding_rows"][lang]
        size = len(load_dictionary(os.path.join(destdir, f"dict.{lang}.txt")))
        if size != rows:  # never expected: fairseq-preprocess copies the dictionary it is given
            raise UserError(f"{destdir}/dict.{lang}.txt: {size} symbols, the teacher's embedding {rows}")


def prepare_teacher_data(teacher: TeacherFolder, raw: Mapping[str, Sequence[tuple[str, str]]], out_dir: str,
                         clean: CleanConfig | None = None, workers: int = 1, destdir: str | None = None) -> dict:
    """Encode each split's pairs as the teacher's data, copy its dictionaries into ``out_dir``; return the manifest.

    ``raw`` maps train/valid/test (any of them) to (source file, target file) pairs, concatenated in order:
    detokenized text, one sentence a line (plain text, WMT SGML or IWSLT XML, as ``prepare`` reads).
    Training pairs empty or too long are dropped (counted); a valid/test sentence never is. ``OUT/teacher.json``,
    written last, records the teacher, the counts, the ``fairseq-preprocess`` options and the
    ``fairseq-generate`` options that detokenize test output; a finished folder is checked and kept.
    With ``destdir``, the data is also binarized there with fairseq-preprocess.
    """
    clean = clean or CleanConfig()
    splits = [s for s in SPLITS if raw.get(s)]
    if not splits:
        raise UserError("no input files: give at least one of --train, --valid, --test")
    for split in splits:
        for path in (p for pair in raw[split] for p in pair):
            if not os.path.isfile(path):
                raise UserError(f"{path}: no such file ({split} split)")
    os.makedirs(out_dir, exist_ok=True)
    settings = {
        "teacher": {**asdict(teacher), "checkpoint_file": encode.input_id(teacher.checkpoint),
                    "dict_sha256": {lang: file_sha256(p) for lang, p in teacher.dicts.items()},
                    "bpe_sha256": file_sha256(teacher.bpe_file)},
        "inputs": {split: [[encode.input_id(p) for p in pair] for pair in raw[split]] for split in splits},
        "clean": asdict(clean),
    }
    manifest_path = os.path.join(out_dir, MANIFEST)
    manifest, state = encode.recorded_manifest(manifest_path, settings, out_dir)
    if state == "complete" and manifest.get("out_dir") == os.path.abspath(out_dir):
        logger.info("%s: encoded before with this teacher and these files, kept (delete %s to redo)",
                    out_dir, manifest_path)
    else:
        if os.path.exists(manifest_path):
            os.unlink(manifest_path)  # the folder is being redone: no stale manifest may describe it
        for lang in (teacher.src, teacher.tgt):
            _write_dict(teacher, lang, out_dir)
        stats = {split: _encode_split(teacher, split, raw[split], out_dir, clean, workers) for split in splits}
        files = {f"{split}{kind}.{lang}": stats[split]["kept"] for split in splits for kind in ("", ".raw")
                 for lang in (teacher.src, teacher.tgt)}
        manifest = {
            "out_dir": os.path.abspath(out_dir),
            "teacher": {**asdict(teacher), "encoder_args": teacher.encoder_args()},
            "splits": stats,
            "files": files,
            "settings": settings,
        }
        manifest["preprocess_args"] = preprocess_args(manifest)
        # the options fairseq-generate needs to print detokenized D- lines (BLEU against test.raw.TGT);
        # they also detokenize S-/T- lines, so the teacher's decoding of the training data runs without them
        manifest["generate_args"] = teacher.encoder_args()
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if destdir:
        binarize(manifest, destdir, workers)
    return manifest
