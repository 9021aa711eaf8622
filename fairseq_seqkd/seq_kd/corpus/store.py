"""Pass 1's store: one hypothesis per sentence id, as token ids in a temporary file, in the order they come.

What grows with the corpus is a few arrays indexed by sentence id (blocks seen, the file of the
last block and of the hypothesis, offset and length in the temporary file): about 17 bytes a
sentence. They are ``array.array`` objects (fast to index one at a time, as fairseq-generate's
parser does) seen through numpy views for the checks and the writer, which read them whole.
Ids beyond the data's ``n`` sentences (output of other data) are kept in dicts: they are an error.
"""

from __future__ import annotations

import os
from array import array
from collections import Counter

import numpy as np

from fairseq_seqkd.data.indexed import builder_dtype

_TYPECODES = {np.dtype(np.uint16): "H", np.dtype(np.uint32): "I", np.dtype(np.int64): "q"}


class Hypotheses:
    """The hypotheses kept so far, the files each sentence id was met in, and the temporary files that hold them."""

    _FLUSH = 1 << 20  # token ids buffered before they are written

    def __init__(self, n: int, tgt_dict, tmp: str):
        self.n, self.eos = n, tgt_dict.eos_index
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
        self.dtype = builder_dtype(len(tgt_dict))
        self.ids_path = os.path.join(tmp, "hypotheses.ids")
        self._ids = open(self.ids_path, "wb")
        self._buffer: list[int] = []
        self._written = 0
        # a hypothesis whose text is not its tokens joined by single spaces (never from fairseq) is kept as text
        self.irregular_path = os.path.join(tmp, "hypotheses.txt")
        self._irregular = open(self.irregular_path, "wb")
        self.irregular = array("q")  # (id, offset, length) triples

    def meet(self, sid: int, index: int) -> tuple[bool, bool]:
        """A block of sentence ``sid`` in file ``index``: (its first block in this file, its hypothesis stored from
        this file already). A block of an id met before in another file makes it a repeated id."""
        known = sid < self.n
        previous = self._last_file[sid] if known else self.extra_last.get(sid, -1)
        seen = self._blocks[sid] if known else self.extra_blocks[sid]
        if seen:
            if seen == 1:
                self.repeats[0].append(sid)
                self.repeats[1].append(previous)
            self.repeats[0].append(sid)
            self.repeats[1].append(index)
        if known:
            self._blocks[sid] = 2 if seen else 1
            self._last_file[sid] = index
            has_hypothesis = self._hyp_file[sid] == index
        else:
            self.extra_blocks[sid] += 1
            self.extra_last[sid] = index
            has_hypothesis = self.extra_hyp.get(sid) == index
        return previous != index, has_hypothesis

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

    def append(self, sid: int, codes: list[int], index: int) -> None:
        """The hypothesis of sentence ``sid`` (``sid < n``) of file ``index``: its token ids without EOS."""
        self._hyp_file[sid] = index
        buffer = self._buffer
        buffer.extend(codes)
        buffer.append(self.eos)
        self._offset[sid], self._length[sid] = self._written, len(codes) + 1
        self._written += len(codes) + 1
        if len(buffer) > self._FLUSH:
            self._flush()

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

    def keep_text(self, sid: int, text: bytes) -> None:
        """The text of sentence ``sid``'s hypothesis, where it is not its tokens joined by single spaces."""
        self.irregular.extend((sid, self._irregular.tell(), len(text)))
        self._irregular.write(text)

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
