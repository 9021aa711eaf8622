"""A fairseq teacher folder (the model zoo's layout): read it and check it.

A folder such as fairseq's ``wmt16.en-de.joined-dict.transformer`` (Ott et al., 2018) holds

    model.pt                         the checkpoint (or one other *.pt, or a named one)
    dict.SRC.txt, dict.TGT.txt       its dictionaries
    bpecodes (or code)               subword-nmt BPE codes, applied after Moses tokenization
    or sentencepiece.bpe.model / spm.model   a sentencepiece model (no tokenizer before it)

:func:`read_teacher_folder` finds these files and refuses, before any long job starts, a folder
whose dictionaries do not fit the checkpoint's embeddings, whose language pair is not the one asked
for, whose subword model is missing, or whose shared embeddings sit over two different dictionaries.
:func:`plan_teacher_folder` is the part of it a run's plan needs, without fairseq and without reading
the checkpoint's tensors.
:func:`fairseq_seqkd.teacher.teacher_data.prepare_teacher_data` then encodes text as the teacher's
data was, and binarizes it with the teacher's dictionaries.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fairseq_seqkd.checkpoints.storage import load_checkpoint
from fairseq_seqkd.data.prepare import load_sentencepiece
from fairseq_seqkd.data.text_codec import BPES, TOKENIZERS
from fairseq_seqkd.errors import UserError

logger = logging.getLogger(__name__)

# the names fairseq's hub loader (hub_utils.from_pretrained) gives these files, and common others
CODES_NAMES = ("bpecodes", "code", "codes", "bpe.codes")
SPM_NAMES = ("sentencepiece.bpe.model", "spm.model", "sentencepiece.model")
NSPECIAL = 4  # <s> <pad> </s> <unk>: fairseq's Dictionary adds them before the file's symbols
DEFAULT_MAX_POSITIONS = 1024  # fairseq's transformer default, for checkpoints that do not say


@dataclass
class TeacherFolderConfig:
    """Which files of the folder to use, and how its text was tokenized (auto: detected)."""

    checkpoint: str = field(default="", metadata={
        "help": "checkpoint file, in the folder or a path (default: model.pt, else the folder's only *.pt)"})
    bpe: str = field(default="auto", metadata={
        "help": "subword model: auto (from the checkpoint's config, else the files present), "
                "subword_nmt or sentencepiece"})
    bpe_codes: str = field(default="", metadata={
        "help": "subword-nmt BPE codes file (default: the folder's bpecodes or code)"})
    sentencepiece_model: str = field(default="", metadata={
        "help": "sentencepiece model file (default: the folder's sentencepiece.bpe.model, spm.model or only *.model)"})
    tokenizer: str = field(default="auto", metadata={
        "help": "tokenizer applied before the subword model: auto (moses with subword_nmt, none with "
                "sentencepiece, unless the checkpoint's config names one), moses, space or none"})
    moses_no_dash_splits: bool = field(default=False, metadata={
        "help": "Moses: don't split hyphenated words (fairseq's --moses-no-dash-splits)"})
    moses_no_escape: bool = field(default=False, metadata={
        "help": "Moses: don't escape &, <, >, ', \", [, ], | (fairseq's --moses-no-escape)"})
    pad_to_multiple: int = field(default=0, metadata={
        "help": "accept dictionaries short of the checkpoint's embedding rows by fairseq's padding to this "
                "multiple (their madeupwordNNNN lines missing; the data folder gets them back); 0: only "
                "for model-parallel checkpoints, which pad when they are built"})


@dataclass
class TeacherFolder:
    """A checked teacher folder: its files, languages, vocabulary sizes and text encoding."""

    folder: str
    checkpoint: str
    src: str
    tgt: str
    dicts: dict[str, str]  # language -> dict.LANG.txt path
    symbols: dict[str, int]  # language -> len(Dictionary) as fairseq loads the file (specials included)
    embedding_rows: dict[str, int]  # language -> rows of the checkpoint's embedding for that side
    pad_to_multiple: dict[str, int]  # language -> fairseq's pad_to_multiple_ factor that fills the gap (1: none)
    joined: bool  # the two dictionaries hold the same symbols in the same order
    shared_embeddings: bool  # the checkpoint was trained with --share-all-embeddings
    bpe: str  # subword_nmt or sentencepiece
    bpe_file: str  # the BPE codes or the sentencepiece model
    tokenizer: str | None  # moses, space or None
    moses_no_dash_splits: bool = False
    moses_no_escape: bool = False
    max_positions: dict[str, int] = field(default_factory=dict)  # language -> the model's max positions

    def encoder_args(self) -> list[str]:
        """fairseq's options for this encoding (``fairseq-generate``/``fairseq-interactive`` accept them)."""
        return encoder_args(self.tokenizer, self.bpe, self.bpe_file, self.moses_no_dash_splits, self.moses_no_escape)


def encoder_args(tokenizer: str | None, bpe: str, bpe_file: str, moses_no_dash_splits: bool = False,
                 moses_no_escape: bool = False) -> list[str]:
    """fairseq's --tokenizer/--bpe options for an encoding (fairseq-generate and fairseq-interactive take them)."""
    args = ["--tokenizer", tokenizer] if tokenizer else []
    if tokenizer == "moses":
        args += ["--moses-no-dash-splits"] if moses_no_dash_splits else []
        args += ["--moses-no-escape"] if moses_no_escape else []
    if bpe == "subword_nmt":
        return args + ["--bpe", "subword_nmt", "--bpe-codes", bpe_file]
    return args + ["--bpe", "sentencepiece", "--sentencepiece-model", bpe_file]


# ---------------------------------------------------------------------------------------------
# Reading the checkpoint (torch alone) and the dictionaries


def _get(obj, key: str):
    """``obj[key]`` or ``obj.key`` (a checkpoint's config mixes dicts and argparse Namespaces), or None."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def checkpoint_setting(state: Mapping, section: str, key: str):
    """A setting of a loaded checkpoint: ``cfg[section][key]``, or ``args.key`` for old checkpoints; None if absent."""
    value = _get(_get(state.get("cfg"), section), key)
    if value is None:
        value = _get(state.get("args"), key)
    return value


def find_checkpoint(folder: str, name: str = "") -> str:
    """The folder's checkpoint: ``name`` (in the folder or a path), else model.pt, else its only *.pt."""
    if name:
        for path in (os.path.join(folder, name), name):
            if os.path.isfile(path):
                return path
        raise UserError(f"{os.path.join(folder, name)}: no such checkpoint file; give the name of a .pt file "
                        f"in {folder} (or a path)")
    default = os.path.join(folder, "model.pt")
    if os.path.isfile(default):
        return default
    found = sorted(glob.glob(os.path.join(folder, "*.pt")))
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(f"{folder}: no checkpoint (model.pt or another *.pt file); a fairseq teacher folder "
                        "holds the model's checkpoint, its dict.SRC.txt and dict.TGT.txt, and its subword model")
    names = ", ".join(os.path.basename(p) for p in found)
    raise UserError(f"{folder}: several checkpoints ({names}) and no model.pt; choose one with --checkpoint "
                    "(an ensemble's members are distilled one at a time)")


def _embedding_rows(state: Mapping, path: str) -> tuple[int, int]:
    """(source, target) vocabulary rows of an encoder-decoder checkpoint's embeddings."""
    model = state["model"]
    rows = []
    for keys in (["encoder.embed_tokens.weight"],
                 ["decoder.embed_tokens.weight", "decoder.output_projection.weight"]):
        key = next((k for k in keys if k in model), None)
        if key is None:
            raise UserError(f"{path}: no {keys[0]} in the checkpoint; a teacher folder holds a fairseq "
                            "encoder-decoder translation model (transformer, lstm, fconv)")
        rows.append(int(model[key].shape[0]))
    return rows[0], rows[1]


def load_dictionary(path: str):
    """fairseq's Dictionary of ``path``; a missing or malformed file is a UserError."""
    from fairseq.data import Dictionary

    if not os.path.isfile(path):
        raise UserError(f"{path}: no such dictionary")
    try:
        return Dictionary.load(path)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"{path}: not a fairseq dictionary ({e}); use the dict.*.txt that came with the "
                        "checkpoint") from e


def dictionary_symbols(path: str) -> list[str]:
    """The symbols of a fairseq dictionary file in order, as ``Dictionary.load`` adds them after its specials.

    Text only (no fairseq): each line is ``SYMBOL COUNT [#fairseq:overwrite]``, the symbol being all
    before the last space(s); an overwrite of a symbol already there adds none.
    """
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such dictionary")
    symbols: list[str] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                word, count = line.rstrip().rsplit(" ", 1)
                overwrite = count == "#fairseq:overwrite"
                if overwrite:
                    word, count = word.rsplit(" ", 1)
                int(count)
            except ValueError as e:
                raise UserError(f"{path}: not a fairseq dictionary (expected '<token> <cnt> [flags]': "
                                f"{line.rstrip()!r}); use the dict.*.txt that came with the checkpoint") from e
            if word in seen and overwrite:
                continue
            symbols.append(word)
            seen.add(word)
    return symbols


def padded_size(size: int, factor: int) -> int:
    """``size`` after fairseq's ``Dictionary.pad_to_multiple_(factor)``."""
    return size if factor <= 1 else -(-size // factor) * factor


def padding_factors(state: Mapping, pad_to_multiple: int = 0) -> list[int]:
    """The ``pad_to_multiple_`` factors that may explain a checkpoint with more embedding rows than its dictionary."""
    # Model-parallel models pad their dictionaries to 8 x the model-parallel size when they are built
    # (fairseq/model_parallel/models/transformer.py): their dict files are short by design. Any other
    # gap is a dictionary file that lost fairseq-preprocess's madeupwordNNNN padding lines, or one
    # that lost real symbols: the two look the same by size, so only the user can say (--pad-to-multiple).
    mp = int(checkpoint_setting(state, "common", "model_parallel_size") or checkpoint_setting(
        state, "distributed_training", "model_parallel_size") or 1)
    factors = {8 * mp} if mp > 1 else set()
    if pad_to_multiple > 1:
        factors.add(pad_to_multiple)
    return sorted(factors)


def _dict_fit(lang: str, path: str, size: int, rows: int, side: str, ckpt: str, factors: Sequence[int]) -> int:
    """The padding factor that makes the dictionary fit ``rows`` (1: it fits as is), or a UserError."""
    if size == rows:
        return 1
    for factor in factors:
        if padded_size(size, factor) == rows:
            return factor
    hint = ""
    if size < rows and padded_size(size, 8) == rows:
        hint = (f" If the file only lost the {rows - size} madeupwordNNNN lines fairseq-preprocess pads a "
                "dictionary with (to a multiple of 8), pass --pad-to-multiple 8 to put them back.")
    raise UserError(
        f"{path}: {size - NSPECIAL} symbols, {size} with fairseq's {NSPECIAL} special symbols, but the {side} "
        f"embedding of {ckpt} has {rows} rows: this is not the dictionary the model was trained with (the {lang} "
        f"side's). Put the dict.{lang}.txt that came with this checkpoint in the folder (fairseq's model "
        f"archives hold it beside model.pt), or use the checkpoint that goes with this dictionary.{hint}")


def _first_difference(a: Sequence[str], b: Sequence[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"line {i - NSPECIAL + 1}: {x!r} against {y!r}"
    return f"one has {len(a) - NSPECIAL} symbols, the other {len(b) - NSPECIAL}"


# ---------------------------------------------------------------------------------------------
# The subword model and the tokenizer


def _first_codes_line(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.startswith("#version"):
                return line.rstrip("\r\n")
    return ""


def _check_codes(path: str) -> None:
    """Refuse what subword-nmt cannot read (it exits the process on a bad line)."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such BPE codes file")
    fields_ = _first_codes_line(path).split(" ")
    if len(fields_) == 3 and fields_[2].isdigit():
        raise UserError(f"{path}: fastBPE codes (pair and count per line, fairseq's --bpe fastbpe, as the WMT19 "
                        "models use), not subword-nmt codes; this pipeline encodes with subword-nmt or "
                        "sentencepiece only: use a teacher whose folder has subword-nmt codes or a sentencepiece model")
    if len(fields_) != 2:
        raise UserError(f"{path}: not subword-nmt BPE codes (each line a pair of symbols, e.g. 'e r</w>'); give "
                        "the codes file that came with the model (bpecodes or code) with --bpe-codes")


def _find(folder: str, names: Sequence[str], pattern: str | None = None) -> list[str]:
    found = [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]
    if not found and pattern:
        found = sorted(glob.glob(os.path.join(folder, pattern)))
    return found


def subword_model(folder: str, cfg: TeacherFolderConfig, state: Mapping) -> tuple[str, str]:
    """(bpe name, file) of the folder: the options first, then the checkpoint's config, then the files present."""
    if cfg.bpe not in ("auto", *BPES):
        raise UserError(f"--bpe {cfg.bpe}: choose auto, subword_nmt or sentencepiece")
    choice = cfg.bpe
    if choice == "auto":
        choice = "subword_nmt" if cfg.bpe_codes else "sentencepiece" if cfg.sentencepiece_model else "auto"
    if choice == "auto":
        named = _get(state.get("cfg"), "bpe")
        named = _get(named, "_name") if named is not None else checkpoint_setting(state, "bpe", "bpe")
        if named in BPES:
            choice = named
        elif named:
            raise UserError(f"{folder}: the checkpoint was trained with fairseq's --bpe {named}; this pipeline "
                            "encodes with subword_nmt (BPE codes) or sentencepiece only")
    codes = [cfg.bpe_codes] if cfg.bpe_codes else _find(folder, CODES_NAMES)
    spms = [cfg.sentencepiece_model] if cfg.sentencepiece_model else _find(folder, SPM_NAMES, "*.model")
    if choice == "auto":
        if codes and spms:
            raise UserError(f"{folder}: both BPE codes ({codes[0]}) and a sentencepiece model ({spms[0]}); say "
                            "which the model was trained with: --bpe subword_nmt or --bpe sentencepiece")
        choice = "subword_nmt" if codes else "sentencepiece" if spms else "none"
    if choice == "none" or (choice == "subword_nmt" and not codes) or (choice == "sentencepiece" and not spms):
        wanted = {"subword_nmt": " or ".join(CODES_NAMES[:2]) + " (subword-nmt BPE codes)",
                  "sentencepiece": " or ".join(SPM_NAMES[:2]) + " (a sentencepiece model)"}
        what = wanted.get(choice, f"{wanted['subword_nmt']}, or {wanted['sentencepiece']}")
        raise UserError(f"{folder}: no subword model: expected {what}. Copy the file that came with the "
                        "model into the folder, or give its path with --bpe-codes or --sentencepiece-model")
    if choice == "subword_nmt":
        _check_codes(codes[0])
        return choice, codes[0]
    if len(spms) > 1:
        raise UserError(f"{folder}: several sentencepiece models ({', '.join(map(os.path.basename, spms))}); "
                        "choose one with --sentencepiece-model")
    load_sentencepiece(spms[0])  # a UserError if it is not one
    return choice, spms[0]


def choose_tokenizer(cfg: TeacherFolderConfig, bpe: str, state: Mapping) -> str | None:
    """The tokenizer applied before the subword model (None: none)."""
    choice = cfg.tokenizer
    if choice not in ("auto", *TOKENIZERS):
        raise UserError(f"--tokenizer {choice}: choose auto, moses, space or none")
    if choice == "auto":
        named = _get(state.get("cfg"), "tokenizer")
        named = _get(named, "_name") if named is not None else checkpoint_setting(state, "tokenizer", "tokenizer")
        if named and named not in TOKENIZERS:
            raise UserError(f"the checkpoint was trained with fairseq's --tokenizer {named}; give --tokenizer "
                            "moses, space or none if one of them is right")
        # subword-nmt codes come after Moses tokenization in fairseq's zoo (its hub entries say
        # tokenizer moses, bpe subword_nmt); sentencepiece reads raw text
        choice = named or ("moses" if bpe == "subword_nmt" else "none")
    return None if choice == "none" else choice


# ---------------------------------------------------------------------------------------------
# The folder


def _open_folder(folder: str, src: str, tgt: str, cfg: TeacherFolderConfig,
                 mmap: bool = False) -> tuple[str, Mapping, dict[str, str]]:
    """(checkpoint, its loaded state, language -> dict file) of a folder whose language pair is ``src``-``tgt``."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: no such teacher folder (TEACHER_DIR); it should hold the checkpoint "
                        "(model.pt), dict.SRC.txt, dict.TGT.txt and the subword model")
    if src == tgt:
        raise UserError(f"source and target language are both {src!r}")
    ckpt = find_checkpoint(folder, cfg.checkpoint)
    state = load_checkpoint(ckpt, mmap=mmap)

    # the language pair: the checkpoint's own, else the dictionaries' names
    pair = (checkpoint_setting(state, "task", "source_lang"), checkpoint_setting(state, "task", "target_lang"))
    if all(pair) and tuple(pair) != (src, tgt):
        raise UserError(f"{ckpt}: this teacher translates {pair[0]}-{pair[1]} (its task's source_lang and "
                        f"target_lang) but {src}-{tgt} was asked for: use a teacher folder for {src}-{tgt}, or set the "
                        f"recipe's src/tgt to {pair[0]}/{pair[1]}")
    dicts = {lang: os.path.join(folder, f"dict.{lang}.txt") for lang in (src, tgt)}
    missing = [p for p in dicts.values() if not os.path.isfile(p)]
    if missing:
        present = sorted(os.path.basename(p)[5:-4] for p in glob.glob(os.path.join(folder, "dict.*.txt")))
        has = f"it has dictionaries for {', '.join(present)}" if present else "it has no dict.*.txt"
        raise UserError(f"{missing[0]}: no such dictionary; {has}, so its language pair is not {src}-{tgt}. "
                        f"Use a teacher folder for {src}-{tgt} (dict.{src}.txt and dict.{tgt}.txt beside the "
                        "checkpoint), or set the recipe's src/tgt to the folder's languages")
    return ckpt, state, dicts


def plan_teacher_folder(folder: str, src: str, tgt: str, cfg: TeacherFolderConfig | None = None) -> dict:
    """What planning a run needs of a teacher folder, without fairseq: ``teacher`` (the checkpoint),
    ``encoder_args``, ``joined``, ``embedding_rows``; a UserError for the faults it sees.

    The checkpoint is memory-mapped (its tensors are not read) and the dictionaries compared as text;
    :func:`read_teacher_folder`, which the pipeline's first job runs, checks them against the embeddings.
    """
    cfg = cfg or TeacherFolderConfig()
    ckpt, state, dicts = _open_folder(folder, src, tgt, cfg, mmap=True)
    rows = dict(zip((src, tgt), _embedding_rows(state, ckpt)))
    symbols = {lang: dictionary_symbols(path) for lang, path in dicts.items()}
    joined = symbols[src] == symbols[tgt] and rows[src] == rows[tgt]
    bpe, bpe_file = subword_model(folder, cfg, state)
    tokenizer = choose_tokenizer(cfg, bpe, state)
    return {"teacher": os.path.abspath(ckpt), "ok": True,
            "encoder_args": encoder_args(tokenizer, bpe, os.path.abspath(bpe_file), cfg.moses_no_dash_splits,
                                         cfg.moses_no_escape),
            "joined": joined, "embedding_rows": rows}


def read_teacher_folder(folder: str, src: str, tgt: str, cfg: TeacherFolderConfig | None = None) -> TeacherFolder:
    """Find and check a teacher folder's files for translating ``src`` into ``tgt``; UserError at the first fault."""
    cfg = cfg or TeacherFolderConfig()
    ckpt, state, dicts = _open_folder(folder, src, tgt, cfg)
    loaded = {lang: load_dictionary(path) for lang, path in dicts.items()}
    symbols = {lang: len(d) for lang, d in loaded.items()}
    rows = dict(zip((src, tgt), _embedding_rows(state, ckpt)))
    factors = padding_factors(state, cfg.pad_to_multiple)
    pad = {lang: _dict_fit(lang, dicts[lang], symbols[lang], rows[lang], side, ckpt, factors)
           for lang, side in ((src, "encoder"), (tgt, "decoder"))}
    for lang in (src, tgt):
        if pad[lang] > 1:
            logger.info("%s: %d symbols, padded to %d by fairseq's pad_to_multiple_(%d) as the checkpoint's "
                        "embedding has them; the data folder's dict.%s.txt gets the same madeupword lines",
                        dicts[lang], symbols[lang], rows[lang], pad[lang], lang)
    # one dictionary for both sides (fairseq-preprocess --joined-dictionary), padded alike
    joined = loaded[src].symbols == loaded[tgt].symbols and rows[src] == rows[tgt]
    shared = bool(checkpoint_setting(state, "model", "share_all_embeddings"))
    if shared and not (joined and rows[src] == rows[tgt]):
        difference = _first_difference(loaded[src].symbols, loaded[tgt].symbols)
        raise UserError(f"{ckpt} shares one embedding between source and target (--share-all-embeddings), but "
                        f"{dicts[src]} and {dicts[tgt]} differ ({difference}); "
                        "such a model has one joined dictionary: put the two dict files that came with the "
                        "checkpoint in the folder (they are the same file)")

    bpe, bpe_file = subword_model(folder, cfg, state)
    tokenizer = choose_tokenizer(cfg, bpe, state)
    max_positions = {}
    for lang, key in ((src, "max_source_positions"), (tgt, "max_target_positions")):
        max_positions[lang] = int(checkpoint_setting(state, "model", key)
                                  or checkpoint_setting(state, "task", key) or DEFAULT_MAX_POSITIONS)
    teacher = TeacherFolder(
        folder=os.path.abspath(folder), checkpoint=os.path.abspath(ckpt), src=src, tgt=tgt,
        dicts={k: os.path.abspath(v) for k, v in dicts.items()}, symbols=symbols, embedding_rows=rows,
        pad_to_multiple=pad, joined=joined, shared_embeddings=shared, bpe=bpe,
        bpe_file=os.path.abspath(bpe_file), tokenizer=tokenizer, moses_no_dash_splits=cfg.moses_no_dash_splits,
        moses_no_escape=cfg.moses_no_escape, max_positions=max_positions)
    logger.info("teacher folder %s: %s, %s-%s, dictionaries %s, %s%s", folder, os.path.basename(ckpt), src, tgt,
                "joined" if joined else "separate", f"{tokenizer} + " if tokenizer else "", bpe)
    return teacher
