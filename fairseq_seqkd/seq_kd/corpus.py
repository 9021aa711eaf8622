"""Seq-KD and Seq-Inter corpora: ``fairseq-generate`` output merged into binarized fairseq data.

The teacher translates a split with fairseq's own generator, possibly in shards::

    fairseq-generate DATA --user-dir PLUGIN --task translation_kd --path TEACHER.pt \\
        --gen-subset train --beam 5 --nbest 1 --required-batch-size-multiple 1 \\
        [--num-shards N --shard-id I] [--seq-inter --beam 35] > GEN/shardI.txt.tmp 2> GEN/shardI.log \\
      && mv GEN/shardI.txt.tmp GEN/shardI.txt

and :func:`extract_corpus` turns the outputs into a parallel corpus in the split's original
order: the source is the original data (its binarized split, or a raw text file), the target
the first ``H-`` line of each sentence id (the 1-best; with ``--seq-inter`` the candidate
closest to the reference). It is written as text (``OUT/text/SPLIT.{src,tgt}``) and binarized
with the ORIGINAL dictionaries (fairseq's indexed-dataset builder, as fairseq-preprocess does),
next to copies of the dictionaries and of the data's other splits, so ``fairseq-train OUT``
trains on it like on any fairseq data.

What it checks, refusing with the list of what is wrong rather than dropping anything:

- the shard set: with a folder and ``num_shards``, every ``shard{i}.txt`` for i < N must
  exist (a file appears only when its shard finished, thanks to the ``.tmp``-then-``mv`` above);
  a missing shard is named, to be rerun alone;
- every sentence id of the split appears exactly once over all files: missing ids (fairseq
  drops up to 7 sentences per shard without ``--required-batch-size-multiple 1``, and skips
  over-long ones with ``--skip-invalid-size-inputs-valid-test``) and duplicated ids (e.g.
  ``--num-shards`` with ``--task translation``, which fairseq-generate ignores) are named;
- the output is in the dictionary's token space: ``H-`` lines must be generated without
  ``--post-process``/``--remove-bpe``/``--replace-unk`` (``--bpe``/``--tokenizer`` only change
  ``D-`` lines and are fine); every hypothesis token must be a dictionary symbol, and its
  token count must match its ``P-`` line (one score per token plus EOS), which also catches a
  line cut by stderr text written into the same file (keep ``2>`` separate);
- every hypothesis is whole: fairseq-generate writes ``H-``, ``D-`` and ``P-`` lines for each,
  so a sentence block whose first ``H-`` line has no ``P-`` line after it is a cut file (a
  generation that died, a full disk), refused with the shard to regenerate;
- ``S-`` lines, where present, match the data's source sentences (the output belongs to
  this data and split), and a ``Translated N sentences`` line, where present (stderr merged
  into the file), matches the number of sentences in that file.

It streams, so WMT-sized corpora (millions of sentences) fit in a fixed amount of memory: pass 1
reads each file in pieces of whole blocks (:mod:`fairseq_seqkd.teacher.generate_output`; fairseq's usual
``--nbest 1`` blocks in bulk, any other line by line), encodes each first ``H-``
line to token ids and appends them to a temporary file in file order, keeping per sentence id only
a few numbers in arrays (about 25 bytes); pass 2 writes the pairs in id order a chunk of
sentences at a time, reading the source from the split's own files and the hypotheses from the
temporary file (:mod:`fairseq_seqkd.data.indexed`). The output is byte for byte what fairseq's
indexed-dataset builder writes for the same pairs.

An empty hypothesis (the teacher emitted only EOS) is counted, its ids are reported, and
``empty`` decides: ``reference`` (default) keeps the pair with the original reference as
target, ``drop`` leaves the pair out, ``error`` refuses.

:func:`extract_translations` makes the same corpus from another toolkit's translations (a
line-aligned text file, or K-best TSV lists: :mod:`fairseq_seqkd.seq_kd.kbest`): pass 1 encodes them
into the student's tokens and keeps one candidate per sentence (:meth:`Hypotheses.store`); the
checks, pass 2 and the output are shared (:func:`_extract`).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain, repeat

import numpy as np

from fairseq_seqkd.data.indexed import IndexedReader, IndexedWriter, SymbolLines, builder_dtype
from fairseq_seqkd.errors import UserError
from fairseq_seqkd.evaluate.scoring import format_ids
from fairseq_seqkd.io_utils import check_free_space
from fairseq_seqkd.seq_kd import kbest as kb
from fairseq_seqkd.seq_kd.sentence_bleu import SentenceBLEU
from fairseq_seqkd.teacher.generate_output import UNTAGGED, chunk_blocks, read_chunks, regular_blocks, translated_count

logger = logging.getLogger(__name__)

EMPTY_POLICIES = ("reference", "drop", "error")
SHARD_NAME = "shard{}.txt"
CHUNK = 4096  # sentences written at a time: what pass 2 holds in memory, whatever the corpus size
WORK = ".work"  # the temporary files of pass 1, inside the temporary output folder
TEMPORARY_PREFIX = ".extract-"  # the temporary output folder inside the output folder
OWNER = "pid"  # in the temporary folder: "PID HOST" of the extract that made it
_TYPECODES = {np.dtype(np.uint16): "H", np.dtype(np.uint32): "I", np.dtype(np.int64): "q"}


def shard_files(generated: list[str], num_shards: int | None = None) -> list[str]:
    """The generation files: ``DIR/shard{i}.txt`` for i < num_shards from a folder, or the files given.

    A missing shard is a UserError that names every missing one.
    """
    if len(generated) == 1 and os.path.isdir(generated[0]):
        folder = generated[0]
        if num_shards is None:
            found = [int(m.group(1)) for f in os.listdir(folder)
                     if (m := re.fullmatch(r"shard(\d+)\.txt", f))]
            if not found:
                raise UserError(f"{folder}: no {SHARD_NAME.format('<i>')} generation files; write each "
                                f"fairseq-generate shard's output there (or name the files)")
            num_shards = max(found) + 1
        files = [os.path.join(folder, SHARD_NAME.format(i)) for i in range(num_shards)]
        missing = [i for i, f in enumerate(files) if not os.path.isfile(f)]
        if missing:
            raise UserError(
                f"{folder}: incomplete set of shards: {len(missing)} of {num_shards} missing (shard ids "
                f"{format_ids(missing)}: {', '.join(os.path.basename(files[i]) for i in missing[:10])}). "
                "A shard's file appears only when its generation finished: rerun each missing shard alone "
                "(fairseq-generate ... --num-shards N --shard-id I), then extract again")
        return files
    missing = [f for f in generated if not os.path.isfile(f)]
    if missing:
        raise UserError(f"generation output not found: {', '.join(missing)}; rerun the generation that "
                        "writes it (a shard that died is rerun alone), or check the path")
    if num_shards is not None and num_shards != len(generated):
        raise UserError(f"--num-shards {num_shards} but {len(generated)} generation files given "
                        f"({', '.join(generated)}): name one file per shard")
    return list(generated)


def _format_ids(ids: np.ndarray) -> str:
    """``format_ids`` of an array of ids, converting only the ten it shows."""
    return format_ids(np.asarray(ids)[:10].tolist()) + (f", ... ({len(ids)} in all)" if len(ids) > 10 else "")


@dataclass
class FileCheck:
    """What reading one generation file found: its size and its faults (the first few of each, and counts)."""

    path: str
    distinct: int = 0  # sentence ids in the file
    translated: int | None = None  # the "Translated N sentences" line, where stderr was merged in
    bad_lines: list[str] = field(default_factory=list)  # the first 5
    truncated: list[tuple[int, int]] = field(default_factory=list)  # the first 10 (id, line of its H-)
    truncated_count: int = 0
    no_hypothesis: np.ndarray | None = None  # ids of blocks with no H- line, sorted

    def problems(self) -> list[str]:
        """This file's faults as lines of the error message."""
        out = [f"{self.path}: {b}" for b in self.bad_lines]
        if self.truncated:
            sid, line = self.truncated[0]
            ids = format_ids([i for i, _ in self.truncated]) + (
                f", ... ({self.truncated_count} in all)" if self.truncated_count > len(self.truncated) else "")
            out.append(f"{self.path}: the hypothesis of ids {ids} has no P- line (H-{sid} at line {line}): "
                       "fairseq-generate writes H-, D- and P- lines for every hypothesis, so the file is cut "
                       "(its generation died, or the disk filled); regenerate this shard, then extract again")
        if self.translated is not None and self.translated != self.distinct:
            out.append(f"{self.path}: says 'Translated {self.translated} sentences' but holds "
                       f"{self.distinct}: the file is truncated or mixed; regenerate it")
        if self.no_hypothesis is not None and len(self.no_hypothesis):
            out.append(f"{self.path}: no H- line for ids {_format_ids(self.no_hypothesis)} (generated with "
                       "--quiet, or the file is cut)")
        return out


class Hypotheses:
    """Pass 1 over the generation files: the first ``H-`` line of each sentence id, encoded to token ids.

    The ids go to a temporary file in the order they are read; what grows with the corpus is
    a few arrays indexed by sentence id (blocks seen, the file of the last block and of the
    hypothesis, offset and length in the temporary file, and the hash of the source sentence):
    about 25 bytes a sentence. They are ``array.array`` objects (fast to index one at a time, as
    this loop does) seen through numpy views for the checks that read them whole. Ids beyond the
    data's ``n`` sentences (output of other data) are kept in dicts: they are an error.
    """

    _FLUSH = 1 << 20  # token ids buffered before they are written

    def __init__(self, n: int, tgt_dict, tmp: str, source_hashes: array | None = None):
        self.n, self.dict = n, tgt_dict
        # blocks seen saturates at 2: only none, one and more are told apart. Arrays made by
        # repetition, without a temporary of their size (freed temporaries leave the heap fragmented)
        self._blocks, self._last_file, self._hyp_file = array("B", [0]) * n, array("h", [-1]) * n, \
            array("h", [-1]) * n
        self._offset, self._length = array("q", [0]) * n, array("i", [0]) * n
        self.blocks, self.last_file, self.hyp_file = (np.frombuffer(a, t) if n else np.zeros(0, t) for a, t in (
            (self._blocks, np.uint8), (self._last_file, np.int16), (self._hyp_file, np.int16)))
        self.offset = np.frombuffer(self._offset, np.int64) if n else np.zeros(0, np.int64)
        self.length = np.frombuffer(self._length, np.int32) if n else np.zeros(0, np.int32)  # 1: empty
        self.extra_blocks, self.extra_last, self.extra_hyp = Counter(), {}, {}
        self.repeats = (array("q"), array("h"))  # (id, file) of every block of a repeated id, in file order
        self._hashes = source_hashes
        self.differ_count, self.differ_first = 0, None  # S- lines unlike the data: count, (id, file, text)
        self.unknown: np.ndarray | None = None  # ids whose hypothesis holds unknown tokens
        self.unknown_tokens, self._unknown_order = Counter(), {}
        self.dtype = builder_dtype(len(tgt_dict))
        self.ids_path = os.path.join(tmp, "hypotheses.ids")
        self._ids = open(self.ids_path, "wb")
        self._buffer: list[int] = []
        self._written = 0
        # a hypothesis whose text is not its tokens joined by single spaces (never from fairseq) is kept as text
        self.irregular_path = os.path.join(tmp, "hypotheses.txt")
        self._irregular = open(self.irregular_path, "wb")
        self.irregular = array("q")  # (id, offset, length) triples
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
        check = FileCheck(path)
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
        ids = np.flatnonzero((self.last_file == index) & (self.hyp_file != index))
        extra = sorted(i for i, f in self.extra_last.items() if f == index and self.extra_hyp.get(i) != index)
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
        sids, sources, scores, texts, probs = parsed
        m = len(sids)
        ids = np.fromiter(map(int, sids), np.int64, m)
        if not m or int(ids.max()) >= self.n or self.blocks[ids].any() or len(np.unique(ids)) != m:
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
        self.blocks[ids] = 1
        self.last_file[ids] = index
        self.hyp_file[ids] = index
        check.distinct += m
        ends = np.cumsum(sizes)
        self.offset[ids] = self._written + ends - sizes
        self.length[ids] = sizes
        encoded = np.full(int(ends[-1]), self.dict.eos_index, self.dtype)
        keep = np.ones(len(encoded), bool)
        keep[ends - 1] = False
        encoded[keep] = self._codes[found]
        self._flush()
        self._ids.write(encoded.tobytes())
        self._written += len(encoded)
        return True

    def _block(self, index: int, path: str, check: FileCheck, sid: int, lines: list) -> None:
        """One sentence block read line by line: any block, the general case."""
        n, blocks, last_file, hyp_file = self.n, self._blocks, self._last_file, self._hyp_file
        offset, length, hashes, buffer = self._offset, self._length, self._hashes, self._buffer
        lookup, eos = self.dict.indices.__getitem__, self.dict.eos_index
        known = sid < n
        previous = last_file[sid] if known else self.extra_last.get(sid, -1)
        seen = blocks[sid] if known else self.extra_blocks[sid]
        if seen:
            if seen == 1:
                self.repeats[0].append(sid)
                self.repeats[1].append(previous)
            self.repeats[0].append(sid)
            self.repeats[1].append(index)
        if known:
            blocks[sid] = 2 if seen else 1
            last_file[sid] = index
            has_hypothesis = hyp_file[sid] == index
        else:
            self.extra_blocks[sid] += 1
            self.extra_last[sid] = index
            has_hypothesis = self.extra_hyp.get(sid) == index
        first_block = previous != index
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
                    self.extra_hyp[sid] = index
                    continue
                hyp_file[sid] = index
                mark = len(buffer)
                try:
                    buffer.extend(map(lookup, tokens))
                except KeyError:
                    del buffer[mark:]
                    buffer.extend(self._unknown(sid, tokens))
                buffer.append(eos)
                offset[sid], length[sid] = self._written, len(tokens) + 1
                self._written += len(tokens) + 1
                text = text.strip()
                # only ASCII spaces, single, between tokens: then the tokens joined are the text
                if not (text.isprintable() and "  " not in text) and " ".join(tokens) != text:
                    data = text.encode("utf-8")
                    self.irregular.extend((sid, self._irregular.tell(), len(data)))
                    self._irregular.write(data)
                if len(buffer) > self._FLUSH:
                    self._flush()
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
            self.unknown = np.zeros(self.n, bool)
        self.unknown[sid] = True
        self.unknown_tokens.update(bad)
        for k, t in enumerate(bad):  # Counter order as if counted in id order: first (id, place)
            self._unknown_order[t] = min(self._unknown_order.get(t, (sid, k)), (sid, k))
        return ids

    def store(self, ids: np.ndarray, tokens: np.ndarray, sizes: np.ndarray, index: int) -> None:
        """Hypotheses given as token ids (EOS included, back to back) for sentences ``ids`` of file ``index``.

        They are appended to the temporary file; an id stored again points to its new hypothesis.
        """
        if not len(ids):
            return
        self._flush()
        self._ids.write(np.asarray(tokens).astype(self.dtype).tobytes())
        ends = np.cumsum(sizes)
        self.offset[ids] = self._written + ends - sizes
        self.length[ids] = sizes
        self.hyp_file[ids] = index
        self._written += int(ends[-1])

    def see(self, ids: np.ndarray, index: int) -> None:
        """Distinct sentence ids met in file ``index``: one met before in another file is a repeated id."""
        before = self.blocks[ids] > 0
        other = before & (self.last_file[ids] != index)
        for sid in ids[other].tolist():  # a fault: rare
            if self.blocks[sid] == 1:
                self.repeats[0].append(sid)
                self.repeats[1].append(self.last_file[sid])
            self.repeats[0].append(sid)
            self.repeats[1].append(index)
        self.blocks[ids] = np.where(other, 2, np.maximum(self.blocks[ids], 1))
        self.last_file[ids] = index

    def _flush(self) -> None:
        self._ids.write(array(_TYPECODES[self.dtype], self._buffer))
        self._buffer.clear()

    def close(self) -> None:
        """Write what is buffered and close the temporary files."""
        self._flush()
        self._ids.close()
        self._irregular.close()

    def repeated(self) -> tuple[np.ndarray, list[int]]:
        """(repeated ids sorted, the files of the first one's blocks in reading order)."""
        ids = np.frombuffer(self.repeats[0], np.int64) if len(self.repeats[0]) else np.zeros(0, np.int64)
        if not len(ids):
            return ids, []
        unique = np.unique(ids)
        files = np.frombuffer(self.repeats[1], np.int16)[ids == unique[0]]
        return unique, files.tolist()

    def most_unknown(self, k: int = 5) -> dict[str, int]:
        """The ``k`` most frequent unknown tokens, ties in the order a pass in id order meets them."""
        order = sorted(self.unknown_tokens.items(), key=lambda kv: (-kv[1], self._unknown_order[kv[0]]))
        return dict(order[:k])


class _DatasetSide:
    """A side of a split that is not in fairseq's mmap format, read through its fairseq dataset (slower)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def tokens(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        if getattr(self.dataset, "supports_prefetch", False):  # fairseq's cached format reads nothing unasked
            self.dataset.prefetch(range(start, stop))
        items = [self.dataset[i].numpy() for i in range(start, stop)]
        sizes = np.array([len(x) for x in items], np.int32)
        return (np.concatenate(items) if items else np.zeros(0, np.int64)), sizes

    def num_tokens(self) -> int:
        """Token ids of the whole side."""
        return int(np.asarray(self.dataset.sizes, dtype=np.int64).sum())

    def close(self) -> None:
        pass


def _side(dataset):
    """A chunked reader of one side of the split: the files themselves where they are in fairseq's mmap format."""
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    if type(dataset) is MMapIndexedDataset and getattr(dataset, "_path", None):
        return IndexedReader(dataset._path)
    return _DatasetSide(dataset)


def _mmap_sides(folder: str, split: str, src: str, tgt: str) -> tuple | None:
    """(source reader, reference reader or None) of ``split`` where fairseq would load both as mmap datasets.

    The files fairseq-generate's ``load_langpair_dataset`` picks (no combine, the task's default
    options: no wrapping dataset), read from their headers without building fairseq's dataset,
    whose sizes arrays grow with the corpus. None where anything differs (another format, no
    such split, sides of different lengths): fairseq then loads it, with its own errors.
    """
    from fairseq.data.indexed_dataset import IndexedDataset, infer_dataset_impl

    for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
        prefix = os.path.join(folder, f"{split}.{pair}.")
        if IndexedDataset.exists(prefix + src):
            break
    else:
        return None
    if infer_dataset_impl(prefix + src) != "mmap":
        return None
    has_target = infer_dataset_impl(prefix + tgt) is not None or IndexedDataset.exists(prefix + tgt)
    if has_target and infer_dataset_impl(prefix + tgt) != "mmap":
        return None
    readers = []
    try:
        for lang in (src, tgt) if has_target else (src,):
            readers.append(IndexedReader(prefix + lang))
    except ValueError:  # a version this reader does not know: fairseq's own loader decides
        for r in readers:
            r.close()
        return None
    if has_target and len(readers[0]) != len(readers[1]):
        for r in readers:
            r.close()
        return None
    return readers[0], (readers[1] if has_target else None)


def _language_pair_data(data: str, split: str, source_lang: str | None, target_lang: str | None):
    """(task, source reader, reference reader or None, data folder) of ``split`` as fairseq-generate sees it.

    The task gives the languages and dictionaries; the sides are read from their files by chunks.
    """
    from fairseq import utils

    from fairseq_seqkd.fairseq_glue import setup_translation_task

    task = setup_translation_task(data, source_lang, target_lang)
    folder = utils.split_paths(data)[0]
    sides = _mmap_sides(folder, split, task.cfg.source_lang, task.cfg.target_lang)
    if sides is None:
        try:
            task.load_dataset(split)
        except FileNotFoundError as e:
            raise UserError(f"{data}: no binarized split '{split}' ({e})") from e
        dataset = task.dataset(split)
        sides = _side(dataset.src), (_side(dataset.tgt) if dataset.tgt is not None else None)
        # fairseq's dataset (sizes arrays) is let go; a side not in the mmap format keeps its own part
        task.datasets.pop(split, None)
        del dataset
        gc.collect()  # a cycle may hold it, and pass 1 runs with the collector off
    return (task, *sides, folder)


def _other_split_files(folder: str, split: str, src: str, tgt: str) -> list[str]:
    """The data's other binarized splits (valid, test, ...), not ``split`` nor its ``split1``... parts."""
    pairs = {f"{src}-{tgt}", f"{tgt}-{src}"}
    keep = []
    for name in sorted(os.listdir(folder)):
        parts = name.split(".")
        if (len(parts) == 4 and parts[1] in pairs and parts[2] in (src, tgt) and parts[3] in ("bin", "idx")
                and not re.fullmatch(re.escape(split) + r"\d*", parts[0])):
            keep.append(name)
    return keep


def _text_lines(path: str) -> Iterator[str]:
    """The stripped lines of a UTF-8 text file, split as ``str.splitlines`` splits, read by blocks."""
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        rest = ""
        while block := f.read(1 << 20):
            lines = (rest + block).splitlines(keepends=True)
            rest = lines.pop() if lines[-1].splitlines()[0] == lines[-1] else ""
            yield from (line.strip() for line in lines)
        if rest:
            yield rest.strip()


def _source_strings(reader, decoder: SymbolLines, start: int, stop: int) -> list[str]:
    """Sentences ``start``..``stop - 1`` of the source as ``src_dict.string`` writes them."""
    tokens, sizes = reader.tokens(start, stop)
    return decoder.lines(tokens, sizes).decode("utf-8").split("\n")[:-1]


def _source_hashes(reader, decoder: SymbolLines, n: int) -> array:
    """``hash()`` of every source sentence as UTF-8 text, to compare S- lines read in any order with the data."""
    hashes = array("q")
    for start in range(0, n, CHUNK):
        tokens, sizes = reader.tokens(start, min(n, start + CHUNK))
        hashes.extend(map(hash, decoder.lines(tokens, sizes).split(b"\n")[:-1]))
    return hashes


def _id_problems(hyps: Hypotheses, files: list[str], n: int, what: str, foreign: bool = False) -> list[str]:
    """Missing, repeated and out-of-range sentence ids, each named (``foreign``: of K-best lists, not fairseq's)."""
    problems = []
    duplicated, where = hyps.repeated()
    if len(duplicated):
        sid = duplicated[0]
        hint = ""
        if foreign:
            hint = (" The files are shards: all the candidates of a sentence must be in one file; a file given "
                    "twice, or overlapping shards, repeat ids.")
        elif len(duplicated) == n and len(files) > 1:
            hint = (" Every sentence is in several files: fairseq-generate ignores --num-shards/--shard-id "
                    "with --task translation; generate with --task translation_kd (which honours them).")
        problems.append(f"{len(duplicated)} sentence ids appear more than once (ids {_format_ids(duplicated)}; "
                        f"id {sid} in {', '.join(files[f] for f in where)}).{hint}")
    missing = np.flatnonzero(hyps.blocks == 0)
    if len(missing) and foreign:
        problems.append(f"{len(missing)} of the {n} sentences of {what} have no candidate in {', '.join(files)} "
                        f"(ids {_format_ids(missing)}): every sentence of the split needs at least one; translate "
                        "the missing ones (a shard that died, sentences the toolkit skipped) and add their lines")
    elif len(missing):
        if len(missing) >= n // 3:  # a share, not a few: the batches of other "ranks"
            cause = ("fairseq-generate with --task translation translated only its share of the batches: "
                     "--distributed-world-size defaults to the number of GPUs. Generate with "
                     "--distributed-world-size 1 (or --task translation_kd, which translates everything "
                     "outside torch.distributed), and with --required-batch-size-multiple 1")
        else:
            cause = ("fairseq drops sentences unless generated with --required-batch-size-multiple 1 (and "
                     "skips over-long ones with --skip-invalid-size-inputs-valid-test)")
        problems.append(f"{len(missing)} of the {n} sentences of {what} are in no generation file (ids "
                        f"{_format_ids(missing)}): {cause}; regenerate the shard(s) holding them")
    extra = sorted(hyps.extra_blocks)
    if extra:
        problems.append(f"ids {format_ids(extra)} are beyond the {n} sentences of {what}: the output was "
                        "generated from other data or another --gen-subset")
    return problems


@dataclass
class _Split:
    """The split being distilled, as pass 1 sees it."""

    source: object  # chunked reader of the source side
    reference: object | None  # of the target side, where the data has one
    tgt_dict: object
    n: int
    what: str  # "DATA split 'SPLIT'", for messages
    as_string: SymbolLines  # source ids to text as Dictionary.string writes them
    work: str  # folder for pass 1's temporary files


@dataclass
class _Read:
    """What pass 1 found: the hypotheses, the report's own fields and how to name empty hypotheses."""

    hyps: Hypotheses
    report: dict
    empty_error: Callable[[np.ndarray], str]


def extract_corpus(generated: list[str], data: str, out: str, split: str = "train",
                   source_lang: str | None = None, target_lang: str | None = None,
                   num_shards: int | None = None, source_text: str | None = None, empty: str = "reference",
                   copy_splits: bool = True, check_sources: bool = True) -> dict:
    """Merge ``fairseq-generate`` outputs of ``split`` into a binarized corpus in ``out``; return the report.

    See the module docstring for the checks; any failure is a UserError naming the file(s) and ids.
    """
    if empty not in EMPTY_POLICIES:
        raise UserError(f"empty-hypothesis policy {empty!r}: choose one of {', '.join(EMPTY_POLICIES)}")
    files = shard_files(generated, num_shards)
    if len(files) > 32000:
        raise UserError(f"{len(files)} generation files: merge some of them first (at most 32000)")

    def read(s: _Split) -> _Read:
        hashes = _source_hashes(s.source, s.as_string, s.n) if check_sources and source_text is None else None
        hyps = Hypotheses(s.n, s.tgt_dict, s.work, hashes)
        try:
            checks = [hyps.read(i, f) for i, f in enumerate(files)]
        finally:
            hyps.close()
        problems = [p for c in checks for p in c.problems()]
        problems += _id_problems(hyps, files, s.n, s.what)
        if hyps.differ_count:
            i, path, text = hyps.differ_first
            data_text = _source_strings(s.source, s.as_string, i, i + 1)[0]
            problems.append(f"{hyps.differ_count} S- lines differ from {s.what} (id {i}: {path} has {text!r}, the "
                            f"data {data_text!r}): generated from other data, or with --bpe/--tokenizer/"
                            "--post-process (then pass --no-source-check)")
        if problems:
            raise UserError("cannot extract a corpus from " + ", ".join(files) + ":\n  " + "\n  ".join(problems))
        if hyps.unknown is not None:
            unknown_ids = np.flatnonzero(hyps.unknown)
            raise UserError(
                f"hypotheses of {len(unknown_ids)} sentences (ids {_format_ids(unknown_ids)}) hold tokens that are "
                f"not in the target dictionary {hyps.most_unknown()}: the H- lines are not in the model's "
                "token space. Generate without --post-process/--remove-bpe/--replace-unk, and keep stderr out of "
                "the output file")
        return _Read(hyps, {"generation_files": files},
                     lambda ids: f"{len(ids)} empty hypotheses (ids {_format_ids(ids)}); choose --empty "
                                 "reference or --empty drop")

    return _extract(read, data, out, split, source_lang, target_lang, source_text, empty, copy_splits)


MAX_UNK_RATE = 0.05  # a larger share of unknown tokens means the wrong tokenization, not rare words


def extract_translations(translations: list[str], data: str, out: str, split: str = "train",
                         kbest: bool = False, seq_inter: bool = False, spm_model: str | None = None,
                         pieces: bool = False, bleu: SentenceBLEU | None = None,
                         source_lang: str | None = None, target_lang: str | None = None,
                         source_text: str | None = None, empty: str | None = None, copy_splits: bool = True,
                         max_unk_rate: float = MAX_UNK_RATE, threads: int = 0) -> dict:
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
    if empty not in EMPTY_POLICIES:
        raise UserError(f"empty-translation policy {empty!r}: choose one of {', '.join(EMPTY_POLICIES)}")
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
    if len(translations) > 32000:
        raise UserError(f"{len(translations)} K-best files: merge some of them first (at most 32000)")
    for path in translations:
        if not os.path.isfile(path):
            raise UserError(f"{path}: no such translation file")
    bleu = bleu or SentenceBLEU()

    def read(s: _Split) -> _Read:
        if seq_inter and s.reference is None:
            raise UserError(f"{s.what} has no target side: Seq-Inter needs the references it is measured against")
        if not kbest:
            lines = kb.count_lines(translations[0])
            if lines != s.n:
                raise UserError(
                    f"{translations[0]}: {lines} lines but {s.what} has {s.n} sentences ({abs(lines - s.n)} "
                    f"{'missing' if lines < s.n else 'too many'}): line i must be the translation of sentence i "
                    "(data-bin's order, the prepared training text's); translate every line of the split's "
                    "source, skipping none and adding none (an empty translation is an empty line)")
        encoder = kb.TokenEncoder(s.tgt_dict, spm_model, strict=pieces, threads=threads)
        choice = kb.KBestChoice(s.n, seq_inter) if kbest else None
        strip = [s.tgt_dict.eos_index, s.tgt_dict.pad_index]
        hyps = Hypotheses(s.n, s.tgt_dict, s.work)
        repeats, repeat_count, empty_lines = [], 0, []
        try:
            for index, path in enumerate(translations):
                for chunk in (kb.read_kbest(path, s.n) if kbest else kb.read_text(path)):
                    tokens, sizes = kb.encode_strictly(encoder, chunk, path)
                    if encoder.tokens >= 10_000 and encoder.rate() > max_unk_rate:
                        raise _unknown_error(translations, encoder, max_unk_rate, spm_model, pieces)
                    empties = np.flatnonzero(sizes == 1)
                    empty_lines += [(path, int(chunk.numbers[k]), int(chunk.ids[k])) for k in empties[:10].tolist()]
                    if choice is None:
                        hyps.store(chunk.ids, tokens, sizes, index)
                        hyps.see(chunk.ids, index)
                        continue
                    scores = None
                    if seq_inter:
                        refs, ref_sizes, ref_index = _references(s.reference, chunk.ids)
                        scores = kb.candidate_bleu(bleu, tokens, sizes, refs, ref_sizes, ref_index, strip)
                    kept, repeated = choice.choose(chunk.ids, chunk.scores, chunk.keys, scores)
                    repeat_count += len(repeated)
                    repeats += [(path, int(chunk.numbers[k]), int(chunk.ids[k])) for k in repeated[:5].tolist()]
                    if len(kept):
                        ends = np.cumsum(sizes)
                        parts = [tokens[e - z:e] for e, z in zip(ends[kept].tolist(), sizes[kept].tolist())]
                        hyps.store(chunk.ids[kept], np.concatenate(parts), sizes[kept], index)
                    hyps.see(np.unique(chunk.ids), index)
        finally:
            hyps.close()
        problems = []
        if repeat_count:
            where = "; ".join(f"{p} line {line} (id {sid})" for p, line, sid in repeats[:5])
            problems.append(f"{repeat_count} lines repeat an earlier line of the same sentence (same id, score and "
                            f"text: {where}): a file, or part of one, was given twice; remove the repeat")
        problems += _id_problems(hyps, translations, s.n, s.what, foreign=True)
        if problems:
            raise UserError("cannot extract a corpus from " + ", ".join(translations) + ":\n  "
                            + "\n  ".join(problems))
        if encoder.rate() > max_unk_rate:
            raise _unknown_error(translations, encoder, max_unk_rate, spm_model, pieces)

        def empty_error(ids: np.ndarray) -> str:
            where = ", ".join(f"{p} line {line}" for p, line, _ in empty_lines[:5])
            return (f"{len(ids)} sentences have an empty translation (ids {_format_ids(ids)}; {where}): every "
                    "sentence needs one, and an empty line often means a misaligned file. If the teacher "
                    "really gave nothing, choose --empty reference (the reference stands in) or --empty drop")

        report = {
            "translation_files": list(translations), "format": "kbest" if kbest else "text",
            "selection": ("seq_inter" if seq_inter else "best_score") if kbest else "line",
            "encoding": encoder.describe(), "spm_model": spm_model,
            "tokens_read": encoder.tokens, "unknown_tokens": encoder.unknown,
            "unknown_rate": round(encoder.rate(), 6),
            "most_unknown": dict(encoder.unknown_kinds.most_common(10)),
        }
        if seq_inter:
            report["bleu"] = bleu.signature()
        return _Read(hyps, report, empty_error)

    return _extract(read, data, out, split, source_lang, target_lang, source_text, empty, copy_splits)


def _unknown_error(files: list[str], encoder, limit: float, spm_model: str | None, pieces: bool) -> UserError:
    """The UserError for translations too many of whose tokens are not in the dictionary."""
    if spm_model:
        fix = (f"check that {spm_model} is the student's sentencepiece model (the one its data was encoded "
               "with) and that the translations are detokenized text in the target language")
    else:
        fix = ("for detokenized text give the student's sentencepiece model (--spm-model, e.g. "
               "prepared/spm.model); text already in the student's pieces is split at spaces")
    return UserError(f"{', '.join(files)}: {encoder.unknown} of {encoder.tokens} tokens ({encoder.rate():.1%}) are not "
                     f"in the student's dictionary (most frequent: {dict(encoder.unknown_kinds.most_common(5))}), "
                     f"more than --max-unk-rate {limit}: the translations are not in the student's token space; "
                     f"{fix}. Raise --max-unk-rate if they are right")


def _references(reader, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token ids, sizes) of the references of the distinct ``ids``, and each id's place among them."""
    unique, place = np.unique(ids, return_inverse=True)
    if int(unique[-1] - unique[0]) < 4 * len(unique):  # the usual grouped lists: one read of the range
        tokens, sizes = reader.tokens(int(unique[0]), int(unique[-1]) + 1)
        sizes = sizes.astype(np.int64)
        parts = np.split(tokens, np.cumsum(sizes)[:-1])
        keep = unique - unique[0]
    else:  # ids from all over the split: by runs of consecutive ids
        runs = np.split(unique, np.flatnonzero(np.diff(unique) != 1) + 1)
        parts, size_parts = [], []
        for run in runs:
            t, z = reader.tokens(int(run[0]), int(run[-1]) + 1)
            size_parts.append(z.astype(np.int64))
            parts += np.split(t, np.cumsum(z.astype(np.int64))[:-1])
        sizes = np.concatenate(size_parts)
        keep = np.arange(len(unique))
    chosen = [parts[k] for k in keep.tolist()]
    return (np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)), sizes[keep], place


def _extract(read: Callable[[_Split], _Read], data: str, out: str, split: str, source_lang: str | None,
             target_lang: str | None, source_text: str | None, empty: str, copy_splits: bool) -> dict:
    """The corpus from pass 1's hypotheses (``read``): empty ones handled, pairs written, files moved into ``out``."""
    task, source, reference, folder = _language_pair_data(data, split, source_lang, target_lang)
    try:
        src, tgt = task.cfg.source_lang, task.cfg.target_lang
        if os.path.realpath(out) == os.path.realpath(folder):
            raise UserError(f"--out {out} is the data folder itself: its {split} split would be overwritten; "
                            "write the distilled corpus to a new folder")
        src_dict, tgt_dict = task.source_dictionary, task.target_dictionary
        n = len(source)
        what = f"{data} split '{split}'"
        if source_text is not None:
            lines = sum(1 for _ in _text_lines(source_text))
            if lines != n:
                raise UserError(f"{source_text}: {lines} lines but {what} has {n} sentences: give "
                                "the source text the data was binarized from")
        as_string = SymbolLines(src_dict.symbols, unk=src_dict.unk_index, unk_word=src_dict.unk_word,
                                skip=[src_dict.eos_index, src_dict.bos_index])
        others = _other_split_files(folder, split, src, tgt) if copy_splits else []
        out_existed = os.path.isdir(out)
        if out_existed:
            _remove_stale_temporaries(out)
        copied = others + [f"dict.{lang}.txt" for lang in (src, tgt)]
        check_free_space(out, _corpus_bytes(source, reference, n, src_dict, tgt_dict, folder, copied),
                         f"extract's corpus of {what}")
        os.makedirs(out, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=out, prefix=TEMPORARY_PREFIX)
        try:  # the temporary folder goes, whatever happens; a killed extract's goes at the next one's start
            with open(os.path.join(tmp, OWNER), "w", encoding="utf-8") as f:
                f.write(f"{os.getpid()} {socket.gethostname()}\n")
            os.makedirs(os.path.join(tmp, WORK))
            found = read(_Split(source, reference, tgt_dict, n, what, as_string, os.path.join(tmp, WORK)))
            hyps = found.hyps
            empty_ids = np.flatnonzero(hyps.length == 1)
            if len(empty_ids) and empty == "reference" and reference is None:
                raise UserError(f"{what} has no target side to fall back on for its empty hypotheses: "
                                "use --empty drop")
            if len(empty_ids) and empty == "error":
                raise UserError(found.empty_error(empty_ids))

            sides = ((src, src_dict), (tgt, tgt_dict))
            prefix = os.path.join(tmp, f"{split}.{src}-{tgt}.")
            written, target_tokens = _write_pairs(prefix, sides, hyps, source, reference, empty,
                                                  source_text, as_string)
            shutil.rmtree(os.path.join(tmp, WORK))
            report = {
                "split": split, "source_lang": src, "target_lang": tgt, "sentences": n, "written": written,
                **found.report, "empty_hypotheses": len(empty_ids), "empty_policy": empty,
                "empty_ids": empty_ids[:1000].tolist(),
                "dropped_ids": empty_ids[:1000].tolist() if empty == "drop" else [],
                "source": source_text or os.path.join(folder, f"{split}.{src}-{tgt}.{src}"),
                "target_tokens": target_tokens,
                "copied_splits": sorted({name.split(".")[0] for name in others}),
            }
            _finish(out, tmp, split, sides, folder, others, report)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if not out_existed and not os.listdir(out):
                os.rmdir(out)
    finally:
        source.close()
        if reference is not None:
            reference.close()
    return report


def _remove_stale_temporaries(out: str) -> None:
    """Remove the temporary folders in ``out`` of extracts that were killed: their owner is gone from this host."""
    host = socket.gethostname()
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name)
        if not name.startswith(TEMPORARY_PREFIX) or not os.path.isdir(path):
            continue
        try:
            with open(os.path.join(path, OWNER), encoding="utf-8") as f:
                pid_text, _, owner_host = f.read().strip().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            logger.warning("%s: the temporary folder of an extract that does not name its process (no readable %s "
                           "file); delete it if no extract into %s is running", path, OWNER, out)
            continue
        if owner_host != host or pid <= 0 or _alive(pid):  # another host's process cannot be asked
            continue
        shutil.rmtree(path, ignore_errors=True)
        logger.info("%s: removed, the temporary folder of an extract (process %d on %s) that is gone", path, pid,
                    host)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a process of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _symbol_bytes(dictionary) -> float:
    """Bytes a token takes as text on average: its symbol (weighted by the dictionary's counts) and a separator."""
    counts = np.asarray(dictionary.count, dtype=np.float64)
    lengths = np.fromiter((len(w.encode("utf-8")) for w in dictionary.symbols), np.float64, len(dictionary.symbols))
    total = counts.sum()
    return 1.0 + float((counts * lengths).sum() / total if total > 0 else lengths.mean())


def _corpus_bytes(source, reference, n: int, src_dict, tgt_dict, folder: str, copied: list[str]) -> int:
    """About the most disk space an extract takes at once, known before it reads anything.

    Both sides binarized (``.bin`` and ``.idx``) and as text, pass 1's temporary token ids of the
    target, and the files copied from ``folder``. The target is taken to be as long as the
    reference (the source where the data has none): a teacher's translation is about as long.
    """
    tgt_tokens = (reference if reference is not None else source).num_tokens()
    total = source.num_tokens() * (builder_dtype(len(src_dict)).itemsize + _symbol_bytes(src_dict))
    total += tgt_tokens * (2 * builder_dtype(len(tgt_dict)).itemsize + _symbol_bytes(tgt_dict))
    total += 2 * (26 + 12 * n)  # each index: a header, then an int32 size and an int64 pointer per sentence
    return int(total) + sum(os.path.getsize(os.path.join(folder, name)) for name in copied)


def _write_pairs(prefix: str, sides: tuple, hyps: Hypotheses, source, reference, empty: str,
                 source_text: str | None, as_string: SymbolLines) -> tuple[int, int]:
    """Pass 2: the pairs in id order, by chunks, as ``PREFIX{lang}.{bin,idx}`` and ``text/``; (pairs, target tokens).

    The hypotheses' ids are read from the temporary file one sentence at a time (``pread``), so
    only one chunk's worth is resident.
    """
    from fairseq.tokenizer import tokenize_line

    (src, src_dict), (tgt, tgt_dict) = sides
    folder = os.path.dirname(prefix)
    os.makedirs(os.path.join(folder, "text"), exist_ok=True)
    split = os.path.basename(prefix).split(".")[0]
    writers = [IndexedWriter(prefix + src, builder_dtype(len(src_dict))),
               IndexedWriter(prefix + tgt, builder_dtype(len(tgt_dict)))]
    texts = [open(os.path.join(folder, "text", f"{split}.{lang}"), "wb", buffering=1 << 20) for lang in (src, tgt)]
    as_symbols = SymbolLines(tgt_dict.symbols)
    tgt_string = SymbolLines(tgt_dict.symbols, unk=tgt_dict.unk_index, unk_word=tgt_dict.unk_word,
                             skip=[tgt_dict.eos_index, tgt_dict.bos_index])
    irregular = np.frombuffer(hyps.irregular, np.int64).reshape(-1, 3) if len(hyps.irregular) else None
    source_lines = _text_lines(source_text) if source_text is not None else None
    get, unk, eos = src_dict.indices.get, src_dict.unk_index, src_dict.eos_index
    n, written, target_tokens = hyps.n, 0, 0
    item = hyps.dtype.itemsize
    with open(hyps.ids_path, "rb") as f, open(hyps.irregular_path, "rb") as irregular_file:
        for start in range(0, n, CHUNK):
            stop = min(n, start + CHUNK)
            lengths = hyps.length[start:stop].astype(np.int64)
            # one pread per sentence, looped in C by map: a memory map would keep about the whole
            # temporary file resident (the kernel maps 64 KB around each random access)
            data = b"".join(map(os.pread, repeat(f.fileno(), stop - start), (lengths * item).tolist(),
                                (hyps.offset[start:stop] * item).tolist()))
            target = np.frombuffer(data, hyps.dtype)
            target_text = as_symbols.lines(target, lengths, drop_last=True)
            if source_lines is not None:
                chunk = [next(source_lines) for _ in range(start, stop)]
                # src_dict.encode_line(line, add_if_not_exist=False) without a torch tensor per line
                encoded = [[get(w, unk) for w in tokenize_line(line)] + [eos] for line in chunk]
                src_sizes = np.array([len(x) for x in encoded], np.int64)
                src_tokens = np.fromiter(chain.from_iterable(encoded), np.int64, count=int(src_sizes.sum()))
                src_text = "".join(line + "\n" for line in chunk).encode("utf-8")
            else:
                src_tokens, src_sizes = source.tokens(start, stop)
                src_sizes = src_sizes.astype(np.int64)
                src_text = as_string.lines(src_tokens, src_sizes)
            empties = np.flatnonzero(lengths == 1)
            special = irregular is not None and bool(np.any((irregular[:, 0] >= start)
                                                            & (irregular[:, 0] < stop)))
            if len(empties) or special:
                (src_tokens, src_sizes, src_text, target, lengths, target_text) = _mend_chunk(
                    start, stop, empties, empty, (src_tokens, src_sizes, src_text),
                    (target, lengths, target_text), reference, tgt_string, irregular, irregular_file)
            writers[0].add(src_tokens, src_sizes)
            writers[1].add(target, lengths)
            texts[0].write(src_text)
            texts[1].write(target_text)
            written += len(lengths)
            target_tokens += int(lengths.sum()) - len(lengths)
    for w in writers:
        w.finalize()
    for t in texts:
        t.close()
    return written, target_tokens


def _mend_chunk(start: int, stop: int, empties: np.ndarray, policy: str, source: tuple, target: tuple,
                reference, as_string: SymbolLines, irregular: np.ndarray | None, irregular_file) -> tuple:
    """A chunk with empty hypotheses (the reference stands in, or the pair is dropped) or irregular texts."""
    src_tokens, src_sizes, src_text = source
    tgt_tokens, lengths, tgt_text = target
    src_parts = np.split(src_tokens, np.cumsum(src_sizes)[:-1])
    tgt_parts = np.split(tgt_tokens, np.cumsum(lengths)[:-1])
    src_lines, tgt_lines = src_text.split(b"\n")[:-1], tgt_text.split(b"\n")[:-1]
    if irregular is not None:
        for sid, offset, size in irregular[(irregular[:, 0] >= start) & (irregular[:, 0] < stop)].tolist():
            irregular_file.seek(offset)
            tgt_lines[sid - start] = irregular_file.read(size)
    keep = np.ones(stop - start, bool)
    if policy == "reference" and len(empties):
        ref_tokens, ref_sizes = reference.tokens(start, stop)
        ref_parts = np.split(ref_tokens, np.cumsum(ref_sizes)[:-1])
        for k in empties.tolist():
            tgt_parts[k] = ref_parts[k]
            tgt_lines[k] = as_string.lines(ref_parts[k], [len(ref_parts[k])])[:-1]
    else:
        keep[empties] = False
    kept = np.flatnonzero(keep).tolist()

    def joined(parts):
        return np.concatenate([parts[k] for k in kept]) if kept else np.zeros(0, np.int64)

    return (joined(src_parts), np.array([len(src_parts[k]) for k in kept], np.int64),
            b"".join(src_lines[k] + b"\n" for k in kept), joined(tgt_parts),
            np.array([len(tgt_parts[k]) for k in kept], np.int64), b"".join(tgt_lines[k] + b"\n" for k in kept))


def _finish(out: str, tmp: str, split: str, sides: tuple, folder: str, others: list[str], report: dict) -> None:
    """Complete the corpus in the temporary folder inside ``out`` (dictionaries, other splits, report), move it in.

    Files are replaced one by one; the report goes last and an old report is removed first, so a
    report in ``out`` always describes the files next to it.
    """
    for lang, _ in sides:
        shutil.copyfile(os.path.join(folder, f"dict.{lang}.txt"), os.path.join(tmp, f"dict.{lang}.txt"))
    for name in others:
        shutil.copyfile(os.path.join(folder, name), os.path.join(tmp, name))
    report_name = f"{split}.extract.json"
    with open(os.path.join(tmp, report_name), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    if os.path.exists(os.path.join(out, report_name)):
        os.remove(os.path.join(out, report_name))
    os.makedirs(os.path.join(out, "text"), exist_ok=True)
    names = [os.path.join("text", x) for x in sorted(os.listdir(os.path.join(tmp, "text")))]
    names += sorted(x for x in os.listdir(tmp) if x not in ("text", report_name, WORK, OWNER))
    for name in names + [report_name]:
        os.replace(os.path.join(tmp, name), os.path.join(out, name))
