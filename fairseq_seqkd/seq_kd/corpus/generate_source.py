"""The hypotheses of ``fairseq-generate`` output shards: the first ``H-`` line of each sentence id.

Each file is read in pieces of whole blocks (:mod:`fairseq_seqkd.teacher.generate_output`);
fairseq's usual ``--nbest 1`` blocks are encoded in bulk, any other block line by line. The
hypotheses must be in the dictionary's token space (generated without ``--post-process``), whole
(an ``H-`` line with its ``P-`` line), and of this data (``S-`` lines match its sources).
"""

from __future__ import annotations

import gc
import os
import re
from array import array
from collections import Counter
from itertools import repeat

import numpy as np

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.io_utils import format_ids
from fairseq_seqkd.layout import generation_shard
from fairseq_seqkd.seq_kd.corpus.checks import FileCheck, id_problems
from fairseq_seqkd.seq_kd.corpus.data import source_hashes, source_strings
from fairseq_seqkd.seq_kd.corpus.source import Split
from fairseq_seqkd.seq_kd.corpus.store import Hypotheses
from fairseq_seqkd.teacher.generate_output import UNTAGGED, chunk_blocks, read_chunks, regular_blocks, translated_count

SHARD_NAME = "shard{}.txt"  # a shard's file named by hand; the pipeline's is layout.generation_shard's shard0000.txt
MAX_FILES = 32000  # the files' numbers are int16 in the store
GENERATE_SCORE = ("the H- line's score as fairseq-generate prints it: base 2, length-normalized (divided by "
                  "length ** --lenpen) unless generated with --unnormalized")


def _folder_shards(folder: str, num_shards: int | None) -> list[str]:
    """Shard i's file in ``folder`` for i < num_shards: ``shard0000.txt`` (the pipeline's), else ``shard{i}.txt``."""
    names = set(os.listdir(folder))
    if num_shards is None:
        found = [int(m.group(1)) for f in names if (m := re.fullmatch(r"shard(\d+)\.txt", f))]
        if not found:
            raise UserError(f"{folder}: no shard0000.txt, shard0001.txt, ... (or {SHARD_NAME.format('<i>')}) "
                            "generation files; write each fairseq-generate shard's output there (or name the files)")
        num_shards = max(found) + 1
    padded = [os.path.basename(generation_shard(folder, i)) for i in range(num_shards)]
    plain = [SHARD_NAME.format(i) for i in range(num_shards)]
    both = [i for i in range(num_shards) if padded[i] != plain[i] and padded[i] in names and plain[i] in names]
    if both:
        i = both[0]
        raise UserError(f"{folder}: {len(both)} shards have two files (shard ids {format_ids(both)}: {padded[i]} "
                        f"and {plain[i]}): keep one file per shard (the pipeline writes {padded[i]}), then extract "
                        "again")
    found = [next((name for name in (padded[i], plain[i]) if os.path.isfile(os.path.join(folder, name))), None)
             for i in range(num_shards)]
    # a missing shard is named as the folder names its shards: the pipeline's way if any file is named so
    names = padded if any(f is not None and f != plain[i] for i, f in enumerate(found)) else plain
    files = [os.path.join(folder, f if f is not None else names[i]) for i, f in enumerate(found)]
    missing = [i for i, f in enumerate(found) if f is None]
    if missing:
        raise UserError(
            f"{folder}: incomplete set of shards: {len(missing)} of {num_shards} missing (shard ids "
            f"{format_ids(missing)}: {', '.join(os.path.basename(files[i]) for i in missing[:10])}). "
            "A shard's file appears only when its generation finished: rerun each missing shard alone "
            "(fairseq-generate ... --num-shards N --shard-id I), then extract again")
    return files


def shard_files(generated: list[str], num_shards: int | None = None) -> list[str]:
    """The generation files: shard i's file in a folder for i < num_shards (``shard0000.txt`` or ``shard{i}.txt``),
    or the files given. A missing shard is a UserError that names every missing one."""
    if len(generated) == 1 and os.path.isdir(generated[0]):
        return _folder_shards(generated[0], num_shards)
    missing = [f for f in generated if not os.path.isfile(f)]
    if missing:
        raise UserError(f"generation output not found: {', '.join(missing)}; rerun the generation that "
                        "writes it (a shard that died is rerun alone), or check the path")
    if num_shards is not None and num_shards != len(generated):
        raise UserError(f"--num-shards {num_shards} but {len(generated)} generation files given "
                        f"({', '.join(generated)}): name one file per shard")
    return list(generated)


class _Parser:
    """fairseq-generate output into the store, with what each file and the whole read found wrong.

    What it keeps besides the store: ids whose hypothesis holds unknown tokens, and ``S-`` lines
    unlike the data (compared by the hash of each source sentence, ``source_hashes``).
    """

    def __init__(self, hyps: Hypotheses, tgt_dict, source_hashes: array | None = None, keep_scores: bool = False):
        self.hyps, self.dict = hyps, tgt_dict
        self.scores = np.full(hyps.n, np.nan) if keep_scores else None  # each kept H- line's score
        self._hashes = source_hashes
        self.differ_count, self.differ_first = 0, None  # S- lines unlike the data: count, (id, file, text)
        self.unknown: np.ndarray | None = None  # ids whose hypothesis holds unknown tokens
        self.unknown_tokens, self._unknown_order = Counter(), {}
        self._codes = None
        keys = [k.encode("utf-8") for k in tgt_dict.indices]
        # the bulk path splits at single spaces: every symbol must be one token to str.split() too
        if keys and all(len(w.split()) == 1 and w.split()[0] == w for w in tgt_dict.indices):
            self._keys = np.array(keys, dtype=object)
            self._codes = np.fromiter(tgt_dict.indices.values(), np.int64, len(keys))
            self._key_hash = np.fromiter(map(hash, keys), np.int64, len(keys))
            self._position = {k: i for i, k in enumerate(keys)}
            # two tables of the symbols by bits of their hash, looked up for whole pieces at once (a
            # symbol whose slot is taken goes to the second; the few left over are found in the dict)
            self._mask = (1 << max(16, (8 * len(keys)).bit_length())) - 1
            self._slots = np.full((2, self._mask + 1), -1, np.int32)
            positions = np.arange(len(keys), dtype=np.int32)
            for table, bits in zip(self._slots, self._key_bits(self._key_hash)):
                free = table[bits[positions]] < 0
                table[bits[positions[free]][::-1]] = positions[free][::-1]  # the first of equals wins
                positions = positions[table[bits[positions]] != positions]

    def read(self, index: int, path: str) -> FileCheck:
        """Read generation file number ``index``; return its faults."""
        enabled = gc.isenabled()
        gc.disable()  # the loop makes millions of short-lived tuples and no cycle: collections are wasted time
        try:
            return self._read(index, path)
        finally:
            if enabled:
                gc.enable()

    def _read(self, index: int, path: str) -> FileCheck:
        check, hyps = FileCheck(path), self.hyps
        for number, chunk in read_chunks(path):
            if self._codes is not None and self._regular(index, regular_blocks(chunk), check):
                continue
            for sid, lines in chunk_blocks(number, chunk):
                if sid == UNTAGGED:
                    t = translated_count(lines[0][2])
                    if t is not None:
                        check.translated = t[0]
                    continue
                self._block(index, path, check, sid, lines)
        ids = np.flatnonzero((hyps.last_file == index) & (hyps.hyp_file != index))
        extra = sorted(i for i, f in hyps.extra_last.items() if f == index and hyps.extra_hyp.get(i) != index)
        check.no_hypothesis = np.concatenate((ids, np.array(extra, np.int64))) if extra else ids
        return check

    def _key_bits(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The slots of ``hashes`` in the two symbol tables."""
        return hashes & self._mask, (hashes >> 40) & self._mask

    def _regular(self, index: int, parsed: tuple | None, check: FileCheck) -> bool:
        """A piece of fairseq's usual blocks (``regular_blocks``) read in bulk; False, having done nothing, otherwise.

        Only a piece that the general path would read without a fault comes through here (new ids
        within the data, every token a symbol, token counts matching, sources matching): for it
        the general path gives the same, so any other piece is left to it, faults and all.
        """
        if parsed is None:
            return False
        hyps = self.hyps
        sids, sources, scores, texts, probs = parsed
        m = len(sids)
        ids = np.fromiter(map(int, sids), np.int64, m)
        if not m or int(ids.max()) >= hyps.n or hyps.blocks[ids].any() or len(np.unique(ids)) != m:
            return False
        try:
            for _ in map(float, scores):
                pass
        except ValueError:
            return False
        joined = b" ".join(filter(None, texts))
        tokens = joined.split(b" ") if joined else []
        hashes = np.fromiter(map(hash, tokens), np.int64, len(tokens))
        low, high = self._key_bits(hashes)
        found = self._slots[0][low].astype(np.int64)
        miss = np.flatnonzero((found < 0) | (self._key_hash[found] != hashes))
        found[miss] = self._slots[1][high[miss]]
        for k in miss[(found[miss] < 0) | (self._key_hash[found[miss]] != hashes[miss])].tolist():
            found[k] = self._position.get(tokens[k], -1)
            if found[k] < 0:
                return False
        # the symbols found, joined again, must be the text itself: then each token is exactly its symbol
        if b" ".join(self._keys[found].tolist()) != joined:
            return False
        lengths = np.fromiter(map(bytes.count, texts, repeat(b" ")), np.int64, m)
        lengths += np.fromiter(map(len, texts), np.int64, m) > 0
        sizes = lengths + 1
        if not np.array_equal(np.array(probs, np.int64), sizes):
            return False
        if self._hashes is not None and not np.array_equal(
                np.fromiter(map(hash, sources), np.int64, m), np.frombuffer(self._hashes, np.int64)[ids]):
            return False
        check.distinct += m
        ends = np.cumsum(sizes)
        encoded = np.full(int(ends[-1]), self.dict.eos_index, hyps.dtype)
        keep = np.ones(len(encoded), bool)
        keep[ends - 1] = False
        encoded[keep] = self._codes[found]
        hyps.store(ids, encoded, sizes, index)
        hyps.see(ids, index)  # ids new to the store: each met once, in this file
        if self.scores is not None:
            self.scores[ids] = np.fromiter(map(float, scores), np.float64, m)
        return True

    def _block(self, index: int, path: str, check: FileCheck, sid: int, lines: list) -> None:
        """One sentence block read line by line: any block, the general case."""
        hyps, hashes, lookup = self.hyps, self._hashes, self.dict.indices.__getitem__
        known = sid < hyps.n
        first_block, has_hypothesis = hyps.meet(sid, index)
        check.distinct += first_block
        source, pending = None, None
        for number, tag, rest in lines:
            if tag == "S":
                source = rest
            elif tag == "H" and not has_hypothesis:
                score, _, text = rest.partition("\t")  # an empty hypothesis: "H-7<tab>-1.2<tab>"
                try:
                    float(score)
                except ValueError:
                    if len(check.bad_lines) < 5:
                        raw = f"H-{sid}\t{rest}"
                        check.bad_lines.append(f"line {number}: malformed H- line {raw[:80]!r}")
                    continue
                has_hypothesis = True
                tokens = text.split()
                pending = (len(tokens), number)
                if not known:
                    hyps.extra_hyp[sid] = index
                    continue
                try:
                    codes = list(map(lookup, tokens))
                except KeyError:
                    codes = self._unknown(sid, tokens)
                hyps.append(sid, codes, index)
                if self.scores is not None:
                    self.scores[sid] = float(score)
                text = text.strip()
                # only ASCII spaces, single, between tokens: then the tokens joined are the text
                if not (text.isprintable() and "  " not in text) and " ".join(tokens) != text:
                    hyps.keep_text(sid, text.encode("utf-8"))
            elif tag == "P" and pending is not None:
                # one score per token plus EOS: counted as str.split() would, without splitting
                if rest and rest.isprintable() and "  " not in rest and rest[0] != " " and rest[-1] != " ":
                    scores = rest.count(" ") + 1
                else:
                    scores = len(rest.split())
                if scores != pending[0] + 1 and len(check.bad_lines) < 5:
                    check.bad_lines.append(
                        f"line {number}: H-{sid} has {pending[0]} tokens but its P- line {scores} scores "
                        "(one per token plus EOS)")
                pending = None
        if pending is not None:  # the file ends (or breaks off) inside this hypothesis
            check.truncated_count += 1
            if len(check.truncated) < 10:
                check.truncated.append((sid, pending[1]))
        if (first_block and source is not None and hashes is not None and known
                and hash(source.encode("utf-8")) != hashes[sid]):
            self.differ_count += 1
            if self.differ_first is None:
                self.differ_first = (sid, path, source)

    def _unknown(self, sid: int, tokens: list[str]) -> list[int]:
        """The ids of a hypothesis with tokens not in the dictionary (unk for those), which are noted."""
        d = self.dict
        ids = [d.indices.get(t, d.unk_index) for t in tokens]
        bad = [t for t in tokens if t not in d.indices]
        if self.unknown is None:
            self.unknown = np.zeros(self.hyps.n, bool)
        self.unknown[sid] = True
        self.unknown_tokens.update(bad)
        for k, t in enumerate(bad):  # Counter order as if counted in id order: first (id, place)
            self._unknown_order[t] = min(self._unknown_order.get(t, (sid, k)), (sid, k))
        return ids

    def most_unknown(self, k: int = 5) -> dict[str, int]:
        """The ``k`` most frequent unknown tokens, ties in the order a pass in id order meets them."""
        order = sorted(self.unknown_tokens.items(), key=lambda kv: (-kv[1], self._unknown_order[kv[0]]))
        return dict(order[:k])


class GenerateSource:
    """``fairseq-generate`` output of the split: a folder of shards or the files; see :func:`shard_files`."""

    def __init__(self, generated: list[str], num_shards: int | None = None, check_sources: bool = True):
        self.files = shard_files(generated, num_shards)
        if len(self.files) > MAX_FILES:
            raise UserError(f"{len(self.files)} generation files: merge some of them first (at most {MAX_FILES})")
        self.check_sources = check_sources
        self._scores: np.ndarray | None = None

    def read(self, s: Split) -> Hypotheses:
        """Pass 1 over the files, refused with every fault found (see :class:`FileCheck` and :func:`id_problems`)."""
        hashes = source_hashes(s.source, s.as_string, s.n) if self.check_sources and s.source_text is None else None
        hyps = Hypotheses(s.n, s.tgt_dict, s.work)
        parser = _Parser(hyps, s.tgt_dict, hashes, s.keep_scores)
        try:
            checks = [parser.read(i, f) for i, f in enumerate(self.files)]
        finally:
            hyps.close()
        problems = [p for c in checks for p in c.problems()]
        problems += id_problems(hyps, self.files, s.n, s.what)
        if parser.differ_count:
            i, path, text = parser.differ_first
            data_text = source_strings(s.source, s.as_string, i, i + 1)[0]
            problems.append(f"{parser.differ_count} S- lines differ from {s.what} (id {i}: {path} has {text!r}, "
                            f"the data {data_text!r}): generated from other data, or with --bpe/--tokenizer/"
                            "--post-process (then pass --no-source-check)")
        if problems:
            raise UserError("cannot extract a corpus from " + ", ".join(self.files) + ":\n  " + "\n  ".join(problems))
        self._scores = parser.scores
        if parser.unknown is not None:
            unknown_ids = np.flatnonzero(parser.unknown)
            raise UserError(
                f"hypotheses of {len(unknown_ids)} sentences (ids {format_ids(unknown_ids)}) hold tokens that are "
                f"not in the target dictionary {parser.most_unknown()}: the H- lines are not in the model's "
                "token space. Generate without --post-process/--remove-bpe/--replace-unk, and keep stderr out of "
                "the output file")
        return hyps

    def scores(self) -> tuple[np.ndarray, str] | None:
        """The score of each sentence's kept ``H-`` line, as printed."""
        if self._scores is None:
            return None
        return self._scores, GENERATE_SCORE

    def report(self) -> dict:
        """The generation files read."""
        return {"generation_files": self.files}

    def empty_error(self, ids: np.ndarray) -> str:
        """Empty hypotheses refused (``--empty error``)."""
        return f"{len(ids)} empty hypotheses (ids {format_ids(ids)}); choose --empty reference or --empty drop"
