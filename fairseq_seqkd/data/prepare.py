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
killed run continues, and a finished folder is verified (line counts) in seconds.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.io_utils import atomic_open, atomic_write_text, file_sha256

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
MANIFEST = "prepare.json"
SETTINGS = ".prepare.settings.json"  # written first: a half-prepared folder remembers its settings
MANIFEST_VERSION = 1
# A pair whose longer side has at most this many pieces is never dropped for its length ratio:
# ratios of tiny counts ("Hi." against one Thai piece) are noise, not misalignment.
RATIO_MIN_TOKENS = 10
ENCODE_CHUNK = 20_000  # lines per sentencepiece batch: bounded memory on multi-million-line corpora
# fairseq's default --max-source-positions / --max-target-positions (transformer, translation task);
# a sentence of more pieces than this minus one (the end-of-sentence token) is refused by
# fairseq-generate and by fairseq-train's validation
MAX_POSITIONS = 1024

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


# what reading a damaged .gz raises: a cut file; not gzip at all, or a bad CRC; corrupt deflate data
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def _gzip_error(path: str, error: Exception, lines: int) -> UserError:
    """A UserError for the damaged ``.gz`` file ``path``, read up to line ``lines``: what is wrong and the fix."""
    if isinstance(error, EOFError):
        what = f"the gzip file is cut short (truncated; its text ends abruptly after line {lines})"
    elif isinstance(error, gzip.BadGzipFile) and str(error).startswith("Not a gzipped file"):
        what = ("not gzip data, although its name ends in .gz (if it is plain text, compress it with gzip "
                "or drop the .gz from its name)")
    else:
        what = f"damaged gzip data ({error})"  # a bad CRC shows at the end: a line number would mislead
    return UserError(f"{path}: {what}. Check it with `gzip -t {path}`, then re-download it or re-compress it "
                     "from the original text; then delete the output folder (it records its input files' "
                     "sizes) and run again")


def utf8_error(path: str) -> UserError:
    """A UserError naming the first line of ``path`` that is not valid UTF-8, its byte offset and the fix."""
    opener = gzip.open if path.endswith(".gz") else open
    offset, n = 0, 0
    with opener(path, "rb") as f:
        try:
            for n, raw in enumerate(f, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    where = "of the decompressed text" if path.endswith(".gz") else "of the file"
                    return UserError(
                        f"{path}: line {n} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte offset "
                        f"{offset + e.start} {where}, byte {e.start + 1} of the line). prepare reads UTF-8 "
                        f"text: re-encode the file (`file -i {path}` guesses its encoding; e.g. `iconv -f "
                        f"ISO-8859-1 -t UTF-8 {path} > {path}.utf8` for Latin-1), or remove the invalid bytes "
                        "(`iconv -f UTF-8 -t UTF-8 -c`) or fix that line by hand; then delete the output "
                        "folder (it records its input files' sizes) and run prepare again")
                offset += len(raw)
        except _GZIP_ERRORS as e:  # a damaged .gz that is also not UTF-8 before the damage
            return _gzip_error(path, e, n)
    return UserError(f"{path}: not valid UTF-8; re-encode it to UTF-8 (e.g. with iconv) and run prepare again")


def _numbered_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file; invalid UTF-8 or a damaged .gz is a UserError naming the file."""
    n = 0
    with _open_text(path) as f:
        try:
            for n, line in enumerate(f, 1):
                yield n, line
        except UnicodeDecodeError:
            # the decoder reads ahead in blocks: find the line from the bytes
            raise utf8_error(path) from None
        except _GZIP_ERRORS as e:
            if not path.endswith(".gz"):
                raise
            raise _gzip_error(path, e, n) from None


def _numbered_sentences(path: str) -> Iterator[tuple[int, str]]:
    """(line number in the file, normalized sentence) of one side, in the format its name says."""
    fmt = detect_format(path)
    for n, line in _numbered_lines(path):
        if fmt in ("sgml", "xml"):
            # Both are line-oriented with one <seg> per line; WMT's "fake SGML" is not valid XML
            # (bare '&'), so no XML parser and no entity unescaping, as sacrebleu reads these files.
            m = _SEG.search(line)
            if m:
                yield n, normalize_line(m.group(1))
        elif fmt == "tags":
            # <url>, <keywords>, <speaker>, <talkid>, <title>, <description>, <reviewer>, ...:
            # talk metadata, one line each and in the same places on both sides
            if not line.lstrip().startswith("<"):
                yield n, normalize_line(line)
        else:  # plain text: empty lines kept, the caller decides
            yield n, normalize_line(line)


def iter_side(path: str) -> Iterator[str]:
    """The sentences of one side of a split, in the format its file name says."""
    return (sentence for _, sentence in _numbered_sentences(path))


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
# Files


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
    with atomic_open(paths[0]) as fs, atomic_open(paths[1]) as ft:
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


def _origin(split: str, files: Sequence[tuple[str, str]], index: int) -> tuple[str, int, str, int]:
    """(source file, its line, target file, its line) of the ``index``-th pair a valid/test split kept."""
    k = 0
    for src_path, tgt_path in files:
        for (ns, s), (nt, t) in zip(_numbered_sentences(src_path), _numbered_sentences(tgt_path)):
            if not s or not t:  # dropped from valid (_read_split); a test set has none
                continue
            if k == index:
                return src_path, ns, tgt_path, nt
            k += 1
    raise AssertionError(f"{split}: pair {index} not found in {files}")


def _too_long_error(split: str, files: Sequence[tuple[str, str]], too_long: list[tuple[int, int, int]],
                    max_positions: int) -> UserError:
    """The UserError for valid/test pairs with a side of ``max_positions`` pieces or more."""
    where = []
    for index, n_src, n_tgt in too_long[:5]:
        src_path, src_line, tgt_path, tgt_line = _origin(split, files, index)
        sides = [f"{src_path} line {src_line}: {n_src} pieces"] if n_src >= max_positions else []
        sides += [f"{tgt_path} line {tgt_line}: {n_tgt} pieces"] if n_tgt >= max_positions else []
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


def _encode_split(split: str, out_dir: str, src: str, tgt: str, sp, clean: CleanConfig,
                  threads: int, files: Sequence[tuple[str, str]] = (), max_positions: int = MAX_POSITIONS) -> dict:
    """Write OUT/{split}.{src,tgt} in pieces and OUT/{split}.raw.{src,tgt} beside them, pair for pair.

    Training pairs too long or out of ratio in pieces are dropped here (counted); valid and test
    pairs never are, and one too long for fairseq (``max_positions``) is a UserError naming its
    file and line (``files``: the split's raw files).
    """
    stats = SplitStats()
    too_long: list[tuple[int, int, int]] = []  # valid/test: (pair index, source pieces, target pieces)
    read_paths = [os.path.join(out_dir, f"{split}.read.{lang}") for lang in (src, tgt)]
    out_paths = [os.path.join(out_dir, f"{split}{kind}.{lang}")
                 for kind in ("", ".raw") for lang in (src, tgt)]
    total = count_lines(read_paths[0])
    with atomic_open(out_paths[0]) as es, atomic_open(out_paths[1]) as et, \
            atomic_open(out_paths[2]) as rs, atomic_open(out_paths[3]) as rt:
        src_lines: list[str] = []
        tgt_lines: list[str] = []

        def flush() -> None:
            enc_s, enc_t = encode_lines(sp, src_lines, threads), encode_lines(sp, tgt_lines, threads)
            for s, t, ps, pt in zip(src_lines, tgt_lines, enc_s, enc_t):
                stats.read += 1
                reason = token_drop_reason(len(ps), len(pt), clean) if split == "train" else None
                if split != "train" and max(len(ps), len(pt)) >= max_positions:
                    too_long.append((stats.read - 1, len(ps), len(pt)))
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
        if too_long:  # raised inside the block: no output file is written
            raise _too_long_error(split, files, too_long, max_positions)
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
            encode_stats[split] = _encode_split(split, out_dir, src, tgt, sp, clean, threads, raw[split],
                                                max_positions)
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
                "sha256": file_sha256(model_prefix + ".model")},
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    _remove_intermediate(out_dir, src, tgt)
    return manifest


class WordLevel:
    """Stands in for a sentencepiece model on a word-level corpus (the toy one): a piece is a word."""

    def encode(self, lines: Sequence[str], out_type=str, num_threads: int = -1) -> list[list[str]]:
        return [line.split() for line in lines]


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
    sp = load_sentencepiece(spm_model) if spm_model else WordLevel()
    try:
        read = _read_split("test", files, out_dir, src, tgt, CleanConfig())
        encoded = _encode_split("test", out_dir, src, tgt, sp, CleanConfig(), threads, files, max_positions)
    finally:
        _remove_intermediate(out_dir, src, tgt, ("test",))
    return {"inputs": [[_file_id(s), _file_id(t)] for s, t in files], "read": read["read"], "kept": encoded["kept"],
            "spm": {"model": spm_model, "sha256": file_sha256(spm_model)} if spm_model else "word-level"}


def _remove_intermediate(out_dir: str, src: str, tgt: str, splits: Sequence[str] = SPLITS) -> None:
    # once the manifest is written, {split}.read.* live on as {split}.raw.*
    for split in splits:
        for lang in (src, tgt):
            path = os.path.join(out_dir, f"{split}.read.{lang}")
            if os.path.exists(path):
                os.unlink(path)
