"""Encoding a split, one way for every encoder: read and clean the pairs, encode them in batches, write them.

Both data paths use it: ``prepare`` (the pipeline's own sentencepiece model, :mod:`fairseq_seqkd.data.prepare`)
and ``teacher-data`` (a teacher folder's Moses/BPE or sentencepiece, :mod:`fairseq_seqkd.teacher.folder`).
An encoder is anything with ``encode_batch(lines) -> pieces of each line`` (:class:`Encoder`). Training
pairs are dropped by rule (counted by reason); a valid or test sentence never is: one that encodes
to nothing or too long for the model is an error. Outputs are written atomically.

One resume policy: a folder's JSON manifest, written last, records its settings, with every input
file known by its content (:func:`input_id`: :func:`~fairseq_seqkd.io_utils.content_fingerprint`),
and every output file with its line count (:func:`files_complete`); a rerun with the same settings
over complete files keeps the folder.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fairseq_seqkd.data.read import iter_pairs, read_test_pairs
from fairseq_seqkd.errors import UserError
from fairseq_seqkd.io_utils import atomic_open, content_fingerprint, count_text_lines

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
# A pair whose longer side has at most this many pieces is never dropped for its length ratio:
# ratios of tiny counts ("Hi." against one Thai piece) are noise, not misalignment.
RATIO_MIN_TOKENS = 10
LOG_EVERY = 100_000  # pairs between progress lines



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


def read_pairs(split: str, files: Sequence[tuple[str, str]], clean: CleanConfig,
               stats: SplitStats) -> Iterator[tuple[str, str, tuple[str, str, int]]]:
    """(source, target, (source file, target file, sentence number)) of the pairs of a split that are kept.

    Training pairs empty or too long in characters are dropped, valid pairs only when empty, test
    pairs never (read strictly: an empty or missing sentence is a UserError); ``stats`` counts them.
    """
    for src_path, tgt_path in files:
        logger.info("%s: reading %s and %s", split, src_path, tgt_path)
        pairs = read_test_pairs(src_path, tgt_path) if split == "test" else iter_pairs(src_path, tgt_path)
        for n, (s, t) in enumerate(pairs, 1):
            stats.read += 1
            if split == "train":
                reason = raw_drop_reason(s, t, clean)
            else:  # valid: only what fairseq cannot use; test: nothing (checked above)
                reason = "empty" if not s or not t else None
            if reason:
                stats.drop(reason)
                continue
            yield s, t, (src_path, tgt_path, n)
            if stats.read % 1_000_000 == 0:
                logger.info("%s: %d pairs read", split, stats.read)


class Encoder(Protocol):
    """Text to subword pieces, a batch of lines at a time."""

    def encode_batch(self, lines: Sequence[str]) -> list[list[str]]:
        """The pieces of each line."""
        ...


@dataclass
class Encoded:
    """What :func:`encode_split` wrote: the pairs' counts, and per side the tokens and those outside the vocabulary."""

    stats: SplitStats
    tokens: tuple[int, int] = (0, 0)
    unknown: tuple[int, int] = (0, 0)


# (index of the pair among those encoded, source pieces, target pieces) of each valid/test pair refused
TooLong = list[tuple[int, int, int]]


def encode_split(split: str, pairs: Iterable[tuple[str, str]], out_paths: Sequence[str],
                 encoders: tuple[Encoder, Encoder], clean: CleanConfig, max_positions: tuple[int, int],
                 too_long_error: Callable[[TooLong], UserError], batch_size: int,
                 vocab: tuple[set[str], set[str]] | None = None, total: int | None = None) -> Encoded:
    """Encode ``pairs`` with (source, target) ``encoders`` into ``out_paths``: pieces of each side, then the sentences.

    Training pairs that encode to nothing, or too long or out of ratio in pieces, are dropped
    (counted). A valid or test pair is never dropped: one with a side that encodes to nothing or
    to ``max_positions`` pieces or more (with the end-of-sentence token, more than fairseq takes) is
    gathered, and ``too_long_error(those)`` is raised before any output file appears. With ``vocab``,
    the pieces outside it are counted. ``total``: the number of pairs, for the progress log.
    """
    stats, tokens, unknown = SplitStats(), [0, 0], [0, 0]
    too_long: TooLong = []
    batch: list[tuple[str, str]] = []
    logged = [0]  # pairs encoded at the last progress line
    with atomic_open(out_paths[0]) as es, atomic_open(out_paths[1]) as et, \
            atomic_open(out_paths[2]) as rs, atomic_open(out_paths[3]) as rt:

        def flush() -> None:
            src_pieces = encoders[0].encode_batch([s for s, _ in batch])
            tgt_pieces = encoders[1].encode_batch([t for _, t in batch])
            for (s, t), ps, pt in zip(batch, src_pieces, tgt_pieces):
                stats.read += 1
                if split == "train":
                    reason = "empty_encoded" if not ps or not pt else token_drop_reason(len(ps), len(pt), clean)
                    if reason:
                        stats.drop(reason)
                        continue
                elif any(not p or len(p) >= m for p, m in zip((ps, pt), max_positions)):
                    too_long.append((stats.read - 1, len(ps), len(pt)))
                if vocab is not None:
                    for side, pieces in enumerate((ps, pt)):
                        tokens[side] += len(pieces)
                        unknown[side] += sum(1 for p in pieces if p not in vocab[side])
                es.write(" ".join(ps) + "\n")
                et.write(" ".join(pt) + "\n")
                rs.write(s + "\n")
                rt.write(t + "\n")
                stats.kept += 1
            batch.clear()
            if stats.read >= logged[0] + LOG_EVERY or (total is not None and stats.read == total):
                logged[0] = stats.read
                logger.info("%s: encoded %d%s pairs", split, stats.read, f" / {total}" if total is not None else "")

        for pair in pairs:
            batch.append(pair)
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
        if too_long:  # raised inside the block: no output file is written
            raise too_long_error(too_long)
    return Encoded(stats, (tokens[0], tokens[1]), (unknown[0], unknown[1]))


# ---------------------------------------------------------------------------------------------
# The resume policy


def input_id(path: str) -> dict:
    """An input file as a manifest records it: its name, its size and its content's fingerprint.

    The content decides (a retrained model or re-downloaded corpus of the same size is seen); the
    folder does not (moving the raw data keeps a prepared folder).
    """
    return {"name": os.path.basename(path), "bytes": os.path.getsize(path), "fingerprint": content_fingerprint(path)}


def same_settings(old: Any, new: Any) -> bool:
    """Whether recorded settings ``old`` are ``new``; an input recorded before fingerprints matches by name and size."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        if "fingerprint" in new and "fingerprint" not in old:  # {"name", "bytes"} or {"path", "bytes", "mtime_ns"}
            name = old.get("name") or os.path.basename(str(old.get("path")))
            return (name, old.get("bytes")) == (new["name"], new["bytes"])
        return old.keys() == new.keys() and all(same_settings(old[k], new[k]) for k in new)
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return len(old) == len(new) and all(same_settings(a, b) for a, b in zip(old, new))
    return old == new


def load_manifest(path: str) -> dict:
    """A folder's manifest, or {} when there is none or it is unreadable (then the folder is redone)."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError:
            return {}


def recorded_manifest(path: str, settings: dict, out_dir: str) -> tuple[dict, str]:
    """A folder's manifest at ``path`` and what it says of the folder for ``settings``.

    "complete": made with these settings and every file it lists whole; "damaged": these settings,
    but a file missing or cut; "other": no manifest, an unreadable one, or other settings.
    """
    manifest = load_manifest(path)
    if not same_settings(manifest.get("settings"), settings):
        return manifest, "other"
    return manifest, "complete" if files_complete(out_dir, manifest.get("files", {})) else "damaged"


def files_complete(out_dir: str, files: Mapping[str, int]) -> bool:
    """Whether every file ``files`` names is in ``out_dir`` with its recorded number of lines."""
    for name, lines in files.items():
        path = os.path.join(out_dir, name)
        if not os.path.isfile(path) or count_text_lines(path) != lines:
            return False
    return True
