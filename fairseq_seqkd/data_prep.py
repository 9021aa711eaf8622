"""From downloaded parallel text to the tokenized corpus the pipeline binarizes.

The recipes' data step: read each split from plain text, WMT "fake SGML" (``<seg id=..>``),
IWSLT XML test files or IWSLT ``train.tags.*`` files; clean the training pairs (every dropped
pair counted by reason and logged); check the test set strictly (an empty or missing line is
an error, never dropped: a BLEU over a shortened test set is not comparable); train ONE joint
sentencepiece model on the training text (it needs no word boundaries, so Thai works as is);
encode every split. The output folder ``OUT`` holds

    {train,valid,test}.{src,tgt}       sentencepiece pieces, what fairseq-preprocess reads
    {train,valid,test}.raw.{src,tgt}   the same sentences, detokenized (test.raw.TGT is the
                                       reference sacrebleu scores against)
    spm.model, spm.vocab               the joint sentencepiece model
    prepare.json                       the manifest (settings, counts, drops), written last

Every file is written atomically; a rerun skips the steps whose outputs are complete, so a
killed run continues, and a finished folder is verified (line counts) in seconds.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.io_utils import atomic_write_text

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
MANIFEST = "prepare.json"
SETTINGS = ".prepare.settings.json"  # written first: a half-prepared folder remembers its settings
MANIFEST_VERSION = 1
# A pair whose longer side has at most this many pieces is never dropped for its length ratio:
# ratios of tiny counts ("Hi." against one Thai piece) are noise, not misalignment.
RATIO_MIN_TOKENS = 10
ENCODE_CHUNK = 20_000  # lines per sentencepiece batch: bounded memory on multi-million-line corpora

_SEG = re.compile(r"<seg\b[^>]*>(.*?)</seg>", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# Reading one side of a split


def normalize_line(line: str) -> str:
    """Strip and collapse all whitespace (tabs, CR, Unicode separators) to single spaces."""
    # str.split() also splits on \x85, \u2028 and friends, which str.splitlines() (and so a
    # reader of the reference file) would take for line breaks.
    return " ".join(line.split())


def _open_text(path: str):
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file; check the data folder (RAW_DIR) and the file names")
    # newline="\n": a stray carriage return inside a line must not split it (commoncrawl has some)
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="\n")
    return open(path, encoding="utf-8", newline="\n")


def detect_format(path: str) -> str:
    """The format of a raw file from its name: 'sgml', 'xml', 'tags' or 'text'."""
    name = os.path.basename(path)
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".sgm"):
        return "sgml"
    if name.endswith(".xml"):
        return "xml"
    if name.startswith("train.tags."):
        return "tags"
    return "text"


def iter_plain(path: str) -> Iterator[str]:
    """Every line of a plain text file, normalized (empty lines kept: the caller decides)."""
    with _open_text(path) as f:
        for line in f:
            yield normalize_line(line)


def iter_segments(path: str) -> Iterator[str]:
    """The ``<seg>`` contents of a WMT SGML or IWSLT XML file, in file order."""
    # Both are line-oriented with one <seg> per line; WMT's "fake SGML" is not valid XML (bare
    # '&'), so no XML parser and no entity unescaping, as sacrebleu reads these files.
    with _open_text(path) as f:
        for line in f:
            m = _SEG.search(line)
            if m:
                yield normalize_line(m.group(1))


def iter_tags(path: str) -> Iterator[str]:
    """The text lines of an IWSLT ``train.tags.*`` file, skipping its metadata tag lines."""
    with _open_text(path) as f:
        for line in f:
            # <url>, <keywords>, <speaker>, <talkid>, <title>, <description>, <reviewer>, ...:
            # talk metadata, one line each and in the same places on both sides
            if line.lstrip().startswith("<"):
                continue
            yield normalize_line(line)


def iter_side(path: str) -> Iterator[str]:
    """The sentences of one side of a split, in the format its file name says."""
    fmt = detect_format(path)
    if fmt in ("sgml", "xml"):
        return iter_segments(path)
    if fmt == "tags":
        return iter_tags(path)
    return iter_plain(path)


def read_side(path: str) -> list[str]:
    """All sentences of one side of a (small) split as a list."""
    return list(iter_side(path))


def iter_pairs(src_path: str, tgt_path: str) -> Iterator[tuple[str, str]]:
    """Aligned (source, target) sentences; different counts are a UserError naming both files."""
    src_it, tgt_it = iter_side(src_path), iter_side(tgt_path)
    n = 0
    for s in src_it:
        t = next(tgt_it, None)
        if t is None:
            rest = 1 + sum(1 for _ in src_it)
            raise UserError(f"{src_path} has {n + rest} sentences but {tgt_path} has {n}: "
                            "the two sides of a parallel corpus must align line by line")
        n += 1
        yield s, t
    rest = sum(1 for _ in tgt_it)
    if rest:
        raise UserError(f"{src_path} has {n} sentences but {tgt_path} has {n + rest}: "
                        "the two sides of a parallel corpus must align line by line")


# ---------------------------------------------------------------------------------------------
# Cleaning and checking


@dataclass
class CleanConfig:
    """What counts as a bad training pair."""

    max_chars: int = field(default=2000, metadata={
        "help": "drop a training pair with a side longer than this many characters (before sentencepiece)"})
    max_tokens: int = field(default=250, metadata={
        "help": "drop a training pair with a side longer than this many sentencepiece pieces"})
    max_ratio: float = field(default=3.0, metadata={
        "help": f"drop a training pair whose piece counts differ by more than this factor (where the "
                f"longer side has more than {RATIO_MIN_TOKENS} pieces)"})


@dataclass
class SplitStats:
    """Sentence pairs read, kept and dropped (by reason) for one split."""

    read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def summary(self, split: str) -> str:
        lost = sum(self.dropped.values())
        why = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none"
        return f"{split}: {self.read} pairs read, {self.kept} kept, {lost} dropped ({why})"


def raw_drop_reason(src: str, tgt: str, cfg: CleanConfig) -> str | None:
    """Why a raw training pair is dropped before sentencepiece ('empty', 'too_long_chars'), or None."""
    if not src or not tgt:
        return "empty"
    if len(src) > cfg.max_chars or len(tgt) > cfg.max_chars:
        return "too_long_chars"
    return None


def token_drop_reason(n_src: int, n_tgt: int, cfg: CleanConfig) -> str | None:
    """Why an encoded training pair is dropped ('too_long_tokens', 'ratio'), or None."""
    if n_src > cfg.max_tokens or n_tgt > cfg.max_tokens:
        return "too_long_tokens"
    longer, shorter = max(n_src, n_tgt), min(n_src, n_tgt)
    if longer > RATIO_MIN_TOKENS and longer > cfg.max_ratio * max(shorter, 1):
        return "ratio"
    return None


def read_test_pairs(src_path: str, tgt_path: str) -> list[tuple[str, str]]:
    """A test (or scored) set, strictly: every sentence present and non-empty, or a UserError."""
    src, tgt = read_side(src_path), read_side(tgt_path)
    if len(src) != len(tgt):
        raise UserError(f"test set: {src_path} has {len(src)} sentences but {tgt_path} has {len(tgt)}; "
                        "a test set must align line by line: fix or replace the files")
    for path, lines in ((src_path, src), (tgt_path, tgt)):
        for i, line in enumerate(lines):
            if not line:
                unit = "segment" if detect_format(path) in ("sgml", "xml") else "line"
                raise UserError(f"{path}: {unit} {i + 1} is empty; a test sentence is never dropped (BLEU "
                                "would no longer be comparable): restore it or use the complete "
                                "official file")
    return list(zip(src, tgt))


# ---------------------------------------------------------------------------------------------
# Atomic streaming output


@contextmanager
def _atomic_open(path: str):
    """A text file handle whose content appears at ``path`` only when the block succeeds."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def count_lines(path: str) -> int:
    """Newline count of a file (fast, bytewise)."""
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
    return n


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


def decode_pieces(pieces: str) -> str:
    """Detokenize one line of space-separated pieces, exactly as fairseq's --post-process sentencepiece."""
    from fairseq.data.data_utils import post_process

    return post_process(pieces, "sentencepiece")


# ---------------------------------------------------------------------------------------------
# The whole preparation


Raw = dict[str, Sequence[tuple[str, str]]]  # split -> [(src_file, tgt_file), ...], concatenated


def _file_id(path: str) -> dict:
    # name and size, not the full path: moving RAW_DIR must not invalidate a prepared folder
    return {"name": os.path.basename(path), "bytes": os.path.getsize(path) if os.path.exists(path) else None}


def _settings(raw: Raw, src: str, tgt: str, clean: CleanConfig, spm_cfg: SpmConfig) -> dict:
    return {
        "version": MANIFEST_VERSION, "src": src, "tgt": tgt,
        "inputs": {split: [[_file_id(s), _file_id(t)] for s, t in raw[split]] for split in SPLITS},
        "clean": asdict(clean), "spm": asdict(spm_cfg),
    }


def _check_settings(out_dir: str, settings: dict) -> None:
    """Refuse to mix outputs made with other settings into ``out_dir``."""
    path = os.path.join(out_dir, SETTINGS)
    if not os.path.exists(path):
        atomic_write_text(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")
        return
    with open(path, encoding="utf-8") as f:
        try:
            old = json.load(f)
        except json.JSONDecodeError:
            old = None
    if old != settings:
        changed = sorted(k for k in set(settings) | set(old or {}) if (old or {}).get(k) != settings.get(k))
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
    with _atomic_open(paths[0]) as fs, _atomic_open(paths[1]) as ft:
        for src_path, tgt_path in files:
            logger.info("%s: reading %s and %s", split, src_path, tgt_path)
            pairs = read_test_pairs(src_path, tgt_path) if split == "test" else iter_pairs(src_path, tgt_path)
            for s, t in pairs:
                stats.read += 1
                if split == "train":
                    reason = raw_drop_reason(s, t, clean)
                else:  # valid: only what fairseq cannot use; test: nothing (checked above)
                    reason = "empty" if not s or not t else None
                if reason:
                    stats.drop(reason)
                    continue
                fs.write(s + "\n")
                ft.write(t + "\n")
                stats.kept += 1
                if stats.read % 1_000_000 == 0:
                    logger.info("%s: %d pairs read", split, stats.read)
    if stats.kept == 0:
        names = ", ".join(p for pair in files for p in pair)
        raise UserError(f"{split}: no usable sentence pair in {names}; check that these are the right files")
    logger.info("read %s", stats.summary(split))
    return asdict(stats)


def _encode_split(split: str, out_dir: str, src: str, tgt: str, sp, clean: CleanConfig,
                  threads: int) -> dict:
    """Write OUT/{split}.{src,tgt} in pieces and OUT/{split}.raw.{src,tgt} beside them, pair for pair.

    Training pairs too long or out of ratio in pieces are dropped here (counted); valid and test
    pairs never are.
    """
    stats = SplitStats()
    read_paths = [os.path.join(out_dir, f"{split}.read.{lang}") for lang in (src, tgt)]
    out_paths = [os.path.join(out_dir, f"{split}{kind}.{lang}")
                 for kind in ("", ".raw") for lang in (src, tgt)]
    total = count_lines(read_paths[0])
    with _atomic_open(out_paths[0]) as es, _atomic_open(out_paths[1]) as et, \
            _atomic_open(out_paths[2]) as rs, _atomic_open(out_paths[3]) as rt:
        src_lines: list[str] = []
        tgt_lines: list[str] = []

        def flush() -> None:
            enc_s, enc_t = encode_lines(sp, src_lines, threads), encode_lines(sp, tgt_lines, threads)
            for s, t, ps, pt in zip(src_lines, tgt_lines, enc_s, enc_t):
                stats.read += 1
                reason = token_drop_reason(len(ps), len(pt), clean) if split == "train" else None
                if reason:
                    stats.drop(reason)
                    continue
                es.write(" ".join(ps) + "\n")
                et.write(" ".join(pt) + "\n")
                rs.write(s + "\n")
                rt.write(t + "\n")
                stats.kept += 1
            src_lines.clear()
            tgt_lines.clear()
            logger.info("%s: encoded %d / %d pairs", split, stats.read, total)

        for s, t in iter_pairs(*read_paths):
            src_lines.append(s)
            tgt_lines.append(t)
            if len(src_lines) >= ENCODE_CHUNK:
                flush()
        flush()
    if stats.kept == 0:
        raise UserError(f"{split}: every pair was dropped while encoding {read_paths[0]}; "
                        "raise --max-tokens / --max-ratio")
    logger.info("encoded %s", stats.summary(split))
    return asdict(stats)


def _verify(out_dir: str, manifest: dict) -> bool:
    """Whether every file the manifest lists exists with its recorded line count."""
    if not os.path.exists(os.path.join(out_dir, manifest.get("spm", {}).get("model", "spm.model"))):
        return False
    for name, lines in manifest.get("files", {}).items():
        path = os.path.join(out_dir, name)
        if not os.path.exists(path) or count_lines(path) != lines:
            return False
    return True


def _step_files(out_dir: str) -> list[str]:
    return [os.path.join(out_dir, f".prepare.{step}.{split}.json") for step in ("read", "encode")
            for split in SPLITS]


def prepare_corpus(raw: Raw, out_dir: str, src: str, tgt: str, vocab_size: int = 32000,
                   clean: CleanConfig | None = None, spm_cfg: SpmConfig | None = None,
                   threads: int = 0) -> dict:
    """Read, clean, train the joint sentencepiece model and encode every split; return the manifest.

    ``raw`` maps each of train/valid/test to a list of (source file, target file) pairs that are
    concatenated in order. Resumable: completed steps are skipped; a finished folder is verified.
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
        with open(manifest_path, encoding="utf-8") as f:
            try:
                manifest = json.load(f)
            except json.JSONDecodeError:
                manifest = {}
        if manifest.get("settings") == settings and _verify(out_dir, manifest):
            logger.info("%s: prepared before and complete, skipped (delete %s to redo)",
                        out_dir, manifest_path)
            _remove_intermediate(out_dir, src, tgt)
            return manifest
        if manifest.get("settings") == settings:
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
            encode_stats[split] = _encode_split(split, out_dir, src, tgt, sp, clean, threads)
            _save_stats(out_dir, f"encode.{split}", encode_stats[split])
        else:
            logger.info("%s: encoded before, skipped", split)

    splits = {}
    for split in SPLITS:
        r, e = read_stats[split], encode_stats[split]
        splits[split] = {"read": r["read"], "kept": e["kept"], "dropped": {**r["dropped"], **e["dropped"]}}
        logger.info("%s", SplitStats(**splits[split]).summary(split))
    files = {name: count_lines(os.path.join(out_dir, name))
             for split in SPLITS for kind in ("", ".raw") for lang in (src, tgt)
             for name in [f"{split}{kind}.{lang}"]}
    manifest = {
        "settings": settings,
        "splits": splits,
        "files": files,
        "spm": {"model": "spm.model", "pieces": sp.get_piece_size(),
                "sha256": _sha256(model_prefix + ".model")},
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    _remove_intermediate(out_dir, src, tgt)
    return manifest


def _remove_intermediate(out_dir: str, src: str, tgt: str) -> None:
    # once the manifest is written, {split}.read.* live on as {split}.raw.*
    for split in SPLITS:
        for lang in (src, tgt):
            path = os.path.join(out_dir, f"{split}.read.{lang}")
            if os.path.exists(path):
                os.unlink(path)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()
