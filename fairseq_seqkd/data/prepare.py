"""From downloaded parallel text to the tokenized corpus the pipeline binarizes.

The recipes' data step: read each split from plain text, WMT "fake SGML" (``<seg id=..>``),
IWSLT XML test files or IWSLT ``train.tags.*`` files; clean the training pairs (every dropped
pair counted by reason and logged); check the test set strictly (an empty or missing line is
an error, never dropped: a BLEU over a shortened test set is not comparable), and refuse a valid
or test sentence too long for fairseq to translate (``--max-positions``); train ONE joint
sentencepiece model on the training text (it needs no word boundaries, so Thai works as is);
encode every split. The output folder ``OUT`` holds

    {train,valid,test}.{src,tgt}       sentencepiece pieces, what fairseq-preprocess reads
    {train,valid,test}.raw.{src,tgt}   the same sentences, detokenized (test.raw.TGT is the
                                       reference sacrebleu scores against)
    spm.model, spm.vocab               the joint sentencepiece model
    prepare.json                       the manifest (settings, counts, drops), written last

An extra test set of a prepared run (:func:`prepare_test_set`) is read as strictly as the test
split and encoded with that run's sentencepiece model into a folder of its own.

Every file is written atomically; a rerun skips the steps whose outputs are complete, so a
killed run continues, and a finished folder is verified (line counts) in seconds. The raw formats
are read by :mod:`fairseq_seqkd.data.read`; cleaning, encoding and the resume policy (inputs known by
content) are :mod:`fairseq_seqkd.data.encode`'s, shared with a teacher folder's data.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from fairseq_seqkd.data.encode import (
    SPLITS,
    CleanConfig,
    Encoder,
    SplitStats,
    TooLong,
    encode_split,
    input_id,
    load_manifest,
    read_pairs,
    recorded_manifest,
    same_settings,
)
from fairseq_seqkd.data.read import _numbered_sentences, iter_pairs
from fairseq_seqkd.data.read import normalize_line as normalize_line  # where seq_kd.kbest and ct2_translate look
from fairseq_seqkd.errors import UserError
from fairseq_seqkd.io_utils import atomic_open, atomic_write_text, count_text_lines, file_sha256

logger = logging.getLogger(__name__)

MANIFEST = "prepare.json"
SETTINGS = ".prepare.settings.json"  # written first: a half-prepared folder remembers its settings
MANIFEST_VERSION = 1
ENCODE_CHUNK = 20_000  # lines per sentencepiece batch: bounded memory on multi-million-line corpora
# fairseq's default --max-source-positions / --max-target-positions (transformer, translation task);
# a sentence of more pieces than this minus one (the end-of-sentence token) is refused by
# fairseq-generate and by fairseq-train's validation
MAX_POSITIONS = 1024


# ---------------------------------------------------------------------------------------------
# Sentencepiece


@dataclass
class SpmConfig:
    """The joint sentencepiece model."""

    vocab_size: int = field(default=32000, metadata={
        "help": "joint vocabulary size (an upper bound: a small corpus gets fewer pieces)"})
    character_coverage: float = field(default=0.9995, metadata={
        "help": "share of characters the model covers; 1.0 for small alphabets such as Thai"})
    model_type: str = field(default="unigram", metadata={
        "help": "sentencepiece model type (unigram or bpe)"})
    input_sentence_size: int = field(default=2_000_000, metadata={
        "help": "train sentencepiece on this many sentences sampled from both sides (0: all)"})
    seed: int = field(default=1, metadata={"help": "sentencepiece sampling seed"})


def train_sentencepiece(inputs: Sequence[str], model_prefix: str, cfg: SpmConfig, threads: int = 0) -> str:
    """Train one sentencepiece model on the text files ``inputs``; return the .model path."""
    import sentencepiece as spm

    # Train under a temporary prefix, then rename: a killed run leaves no half-written model.
    tmp_prefix = model_prefix + ".tmp"
    # sentencepiece's sampling has its own seed
    spm.set_random_generator_seed(cfg.seed)
    spm.SentencePieceTrainer.train(
        input=list(inputs),
        model_prefix=tmp_prefix,
        vocab_size=cfg.vocab_size,
        character_coverage=cfg.character_coverage,
        model_type=cfg.model_type,
        input_sentence_size=cfg.input_sentence_size,
        shuffle_input_sentence=True,
        # the vocabulary size is a ceiling: a tiny corpus (smoke runs, tests) gets what it has
        hard_vocab_limit=False,
        num_threads=threads or min(16, os.cpu_count() or 1),
        minloglevel=2,
    )
    os.replace(tmp_prefix + ".vocab", model_prefix + ".vocab")
    os.replace(tmp_prefix + ".model", model_prefix + ".model")
    return model_prefix + ".model"


def load_sentencepiece(model_path: str):
    """A SentencePieceProcessor for ``model_path``; a missing or corrupt file is a UserError."""
    import sentencepiece as spm

    if not os.path.exists(model_path):
        raise UserError(f"{model_path}: no such sentencepiece model")
    try:
        return spm.SentencePieceProcessor(model_file=model_path)
    except (OSError, RuntimeError) as e:
        raise UserError(f"{model_path}: not a sentencepiece model ({e}); delete it and rerun prepare") from e


def encode_lines(sp, lines: Sequence[str], threads: int = 0) -> list[list[str]]:
    """Sentencepiece pieces of each line."""
    if not lines:
        return []
    return sp.encode(list(lines), out_type=str, num_threads=threads or -1)


class SentencePieceEncoder:
    """A sentencepiece model as an :class:`~fairseq_seqkd.data.encode.Encoder`."""

    def __init__(self, sp, threads: int = 0):
        self.sp, self.threads = sp, threads

    def encode_batch(self, lines: Sequence[str]) -> list[list[str]]:
        return encode_lines(self.sp, lines, self.threads)


class WordLevel:
    """Stands in for a sentencepiece model on a word-level corpus (the toy one): a piece is a word."""

    def encode_batch(self, lines: Sequence[str]) -> list[list[str]]:
        return [line.split() for line in lines]


def decode_pieces(pieces: str) -> str:
    """Detokenize one line of space-separated pieces, exactly as fairseq's --post-process sentencepiece."""
    from fairseq.data.data_utils import post_process

    return post_process(pieces, "sentencepiece")


# ---------------------------------------------------------------------------------------------
# The whole preparation


Raw = dict[str, Sequence[tuple[str, str]]]  # split -> [(src_file, tgt_file), ...], concatenated


def _settings(raw: Raw, src: str, tgt: str, clean: CleanConfig, spm_cfg: SpmConfig) -> dict:
    return {
        "version": MANIFEST_VERSION, "src": src, "tgt": tgt,
        "inputs": {split: [[input_id(s), input_id(t)] for s, t in raw[split]] for split in SPLITS},
        "clean": asdict(clean), "spm": asdict(spm_cfg),
    }


def _check_settings(out_dir: str, settings: dict) -> None:
    """Refuse to mix outputs made with other settings into ``out_dir``."""
    path = os.path.join(out_dir, SETTINGS)
    if not os.path.exists(path):
        atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")
        return
    old = load_manifest(path) or None
    if not same_settings(old, settings):
        changed = sorted(k for k in set(settings) | set(old or {})
                         if not same_settings((old or {}).get(k), settings.get(k)))
        raise UserError(f"{out_dir} was prepared (or partly prepared) with other settings or input files "
                        f"(differing: {', '.join(changed) or 'unreadable ' + path}); delete {out_dir} or "
                        "choose another output folder")


def _stats_path(out_dir: str, step: str) -> str:
    return os.path.join(out_dir, f".prepare.{step}.json")  # e.g. .prepare.read.train.json


def _load_stats(out_dir: str, step: str) -> dict | None:
    path = _stats_path(out_dir, step)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _save_stats(out_dir: str, step: str, stats: dict) -> None:
    atomic_write_text(_stats_path(out_dir, step), json.dumps(stats, indent=2, sort_keys=True) + "\n")


def _read_split(split: str, files: Sequence[tuple[str, str]], out_dir: str, src: str, tgt: str,
                clean: CleanConfig) -> dict:
    """Write OUT/{split}.read.{src,tgt}: train cleaned, valid without empty pairs, test strictly."""
    stats = SplitStats()
    paths = [os.path.join(out_dir, f"{split}.read.{lang}") for lang in (src, tgt)]
    with atomic_open(paths[0]) as fs, atomic_open(paths[1]) as ft:
        for s, t, _ in read_pairs(split, files, clean, stats):
            fs.write(s + "\n")
            ft.write(t + "\n")
            stats.kept += 1
    if stats.kept == 0:
        names = ", ".join(p for pair in files for p in pair)
        raise UserError(f"{split}: no usable sentence pair in {names}; check that these are the right files")
    logger.info("read %s", stats.summary(split))
    return asdict(stats)


def _origin(split: str, files: Sequence[tuple[str, str]], index: int) -> tuple[str, int, str, int]:
    """(source file, its line, target file, its line) of the ``index``-th pair a valid/test split kept."""
    k = 0
    for src_path, tgt_path in files:
        for (ns, s), (nt, t) in zip(_numbered_sentences(src_path), _numbered_sentences(tgt_path)):
            if not s or not t:  # dropped from valid (read_pairs); a test set has none
                continue
            if k == index:
                return src_path, ns, tgt_path, nt
            k += 1
    raise AssertionError(f"{split}: pair {index} not found in {files}")


def _too_long_error(split: str, files: Sequence[tuple[str, str]], too_long: TooLong,
                    max_positions: int) -> UserError:
    """The UserError for valid/test pairs with a side of ``max_positions`` pieces or more (or of none)."""
    where = []
    for index, n_src, n_tgt in too_long[:5]:
        src_path, src_line, tgt_path, tgt_line = _origin(split, files, index)
        sides = [f"{src_path} line {src_line}: {n_src} pieces"] if not 0 < n_src < max_positions else []
        sides += [f"{tgt_path} line {tgt_line}: {n_tgt} pieces"] if not 0 < n_tgt < max_positions else []
        where.append("; ".join(sides))
    more = f" (and {len(too_long) - 5} more)" if len(too_long) > 5 else ""
    return UserError(
        f"{split}: {len(too_long)} sentence pair(s) longer than fairseq's {max_positions} positions (pieces "
        f"plus end of sentence): {' | '.join(where)}{more}. A {split} sentence is never dropped here, but "
        "fairseq-generate and fairseq-train's validation stop at it ('Size of sample #N is invalid ... "
        "since max_positions=...'), and their --skip-invalid-size-inputs-valid-test would leave it out "
        "(a BLEU over fewer sentences). Split or shorten that line in both files (a line this long is "
        "usually several sentences, or lines joined by a lost line break), then delete the output folder "
        "and run prepare again; or, if the models are trained with larger --max-source-positions and "
        "--max-target-positions, pass that value as --max-positions")


def _encode_split(split: str, out_dir: str, src: str, tgt: str, encoder: Encoder, clean: CleanConfig,
                  files: Sequence[tuple[str, str]] = (), max_positions: int = MAX_POSITIONS) -> dict:
    """Write OUT/{split}.{src,tgt} in pieces and OUT/{split}.raw.{src,tgt} beside them, from OUT/{split}.read.*.

    ``files``: the split's raw files, named in the error for a valid/test pair too long for fairseq.
    """
    read_paths = [os.path.join(out_dir, f"{split}.read.{lang}") for lang in (src, tgt)]
    out_paths = [os.path.join(out_dir, f"{split}{kind}.{lang}") for kind in ("", ".raw") for lang in (src, tgt)]
    stats = encode_split(split, iter_pairs(*read_paths), out_paths, (encoder, encoder), clean,
                         (max_positions, max_positions),
                         lambda too_long: _too_long_error(split, files, too_long, max_positions),
                         ENCODE_CHUNK, total=count_text_lines(read_paths[0])).stats
    if stats.kept == 0:
        raise UserError(f"{split}: every pair was dropped while encoding {read_paths[0]}; "
                        "raise --max-tokens / --max-ratio")
    logger.info("encoded %s", stats.summary(split))
    return asdict(stats)


def _step_files(out_dir: str) -> list[str]:
    return [os.path.join(out_dir, f".prepare.{step}.{split}.json") for step in ("read", "encode")
            for split in SPLITS]


def prepare_corpus(raw: Raw, out_dir: str, src: str, tgt: str, vocab_size: int = 32000,
                   clean: CleanConfig | None = None, spm_cfg: SpmConfig | None = None,
                   threads: int = 0, max_positions: int = MAX_POSITIONS) -> dict:
    """Read, clean, train the joint sentencepiece model and encode every split; return the manifest.

    ``raw`` maps each of train/valid/test to a list of (source file, target file) pairs that are
    concatenated in order. Resumable: completed steps are skipped; a finished folder is verified.
    A valid/test sentence of ``max_positions`` pieces or more (fairseq could not translate it) is
    a UserError; it changes no output, so it is not among the recorded settings.
    """
    clean = clean or CleanConfig()
    spm_cfg = spm_cfg or SpmConfig(vocab_size=vocab_size)
    missing = [s for s in SPLITS if not raw.get(s)]
    if missing:
        raise UserError(f"prepare: no input files for split(s) {', '.join(missing)}; "
                        "give train, valid and test")
    if src == tgt:
        raise UserError(f"prepare: source and target language are both {src!r}; they name the files")
    for split in SPLITS:
        for pair in raw[split]:
            for path in pair:
                if not os.path.exists(path):
                    raise UserError(f"{path}: no such file ({split} split); check RAW_DIR and the file names "
                                    "documented in docs/recipes.md")
    os.makedirs(out_dir, exist_ok=True)
    settings = _settings(raw, src, tgt, clean, spm_cfg)
    manifest_path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(manifest_path):
        manifest, state = recorded_manifest(manifest_path, settings, out_dir)
        model = os.path.join(out_dir, manifest.get("spm", {}).get("model", "spm.model"))
        if state == "complete" and not os.path.exists(model):
            state = "damaged"
        if state == "complete":
            logger.info("%s: prepared before and complete, skipped (delete %s to redo)",
                        out_dir, manifest_path)
            _remove_intermediate(out_dir, src, tgt)
            return manifest
        if state == "damaged":
            # a file was deleted or damaged after the fact: redo every step from the raw files
            logger.warning("%s: a prepared file is missing or truncated; preparing again", out_dir)
            for path in _step_files(out_dir) + [os.path.join(out_dir, "spm.model")]:
                if os.path.exists(path):
                    os.unlink(path)
            os.unlink(manifest_path)
    _check_settings(out_dir, settings)

    read_stats = {}
    for split in SPLITS:
        read_stats[split] = _load_stats(out_dir, f"read.{split}")
        if read_stats[split] is None:
            read_stats[split] = _read_split(split, raw[split], out_dir, src, tgt, clean)
            _save_stats(out_dir, f"read.{split}", read_stats[split])
        else:
            logger.info("%s: read before, skipped", split)

    model_prefix = os.path.join(out_dir, "spm")
    if not os.path.exists(model_prefix + ".model"):
        logger.info("training sentencepiece (vocabulary <= %d, character coverage %s, %s sentences sampled)",
                    spm_cfg.vocab_size, spm_cfg.character_coverage, spm_cfg.input_sentence_size or "all")
        train_sentencepiece([os.path.join(out_dir, f"train.read.{lang}") for lang in (src, tgt)],
                            model_prefix, spm_cfg, threads)
    sp = load_sentencepiece(model_prefix + ".model")

    encode_stats = {}
    for split in SPLITS:
        encode_stats[split] = _load_stats(out_dir, f"encode.{split}")
        if encode_stats[split] is None:
            encode_stats[split] = _encode_split(split, out_dir, src, tgt, SentencePieceEncoder(sp, threads),
                                                clean, raw[split], max_positions)
            _save_stats(out_dir, f"encode.{split}", encode_stats[split])
        else:
            logger.info("%s: encoded before, skipped", split)

    splits = {}
    for split in SPLITS:
        r, e = read_stats[split], encode_stats[split]
        splits[split] = {"read": r["read"], "kept": e["kept"], "dropped": {**r["dropped"], **e["dropped"]}}
        logger.info("%s", SplitStats(**splits[split]).summary(split))
    files = {name: count_text_lines(os.path.join(out_dir, name))
             for split in SPLITS for kind in ("", ".raw") for lang in (src, tgt)
             for name in [f"{split}{kind}.{lang}"]}
    manifest = {
        "settings": settings,
        "splits": splits,
        "files": files,
        "spm": {"model": "spm.model", "pieces": sp.get_piece_size(),
                "sha256": file_sha256(model_prefix + ".model")},
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    _remove_intermediate(out_dir, src, tgt)
    return manifest


def prepare_test_set(files: Sequence[tuple[str, str]], out_dir: str, src: str, tgt: str,
                     spm_model: str | None = None, threads: int = 0, max_positions: int = MAX_POSITIONS) -> dict:
    """An extra test set, as the test split is prepared: every line kept, encoded with the run's model.

    Writes ``OUT/test.{src,tgt}`` (pieces of ``spm_model``; without one, the words as they are,
    for a word-level corpus) and ``OUT/test.raw.{src,tgt}`` (normalized: test.raw.TGT is the
    reference). Nothing is cleaned or dropped: an empty line, sides of different lengths or a
    sentence of ``max_positions`` pieces or more is a UserError naming the file and the line.
    """
    if src == tgt:
        raise UserError(f"prepare: source and target language are both {src!r}; they name the files")
    for pair in files:
        for path in pair:
            if not os.path.exists(path):
                raise UserError(f"{path}: no such file (extra test set); check the file names in "
                                "extra_test_sets (under raw_dir, or absolute)")
    os.makedirs(out_dir, exist_ok=True)
    encoder = SentencePieceEncoder(load_sentencepiece(spm_model), threads) if spm_model else WordLevel()
    try:
        read = _read_split("test", files, out_dir, src, tgt, CleanConfig())
        encoded = _encode_split("test", out_dir, src, tgt, encoder, CleanConfig(), files, max_positions)
    finally:
        _remove_intermediate(out_dir, src, tgt, ("test",))
    return {"inputs": [[input_id(s), input_id(t)] for s, t in files], "read": read["read"], "kept": encoded["kept"],
            "spm": {"model": spm_model, "sha256": file_sha256(spm_model)} if spm_model else "word-level"}


def _remove_intermediate(out_dir: str, src: str, tgt: str, splits: Sequence[str] = SPLITS) -> None:
    # once the manifest is written, {split}.read.* live on as {split}.raw.*
    for split in splits:
        for lang in (src, tgt):
            path = os.path.join(out_dir, f"{split}.read.{lang}")
            if os.path.exists(path):
                os.unlink(path)
