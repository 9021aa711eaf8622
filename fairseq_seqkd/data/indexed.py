"""fairseq's ``mmap`` indexed dataset (``PREFIX.bin`` + ``PREFIX.idx``) read and written by chunks of sentences.

The format of ``fairseq.data.indexed_dataset.MMapIndexedDataset``: the ``.bin`` holds every
sentence's token ids back to back in one integer dtype; the ``.idx`` holds a header (magic,
version 1, dtype code, sentence count), then the sizes (int32) and the byte offsets (int64) of
the sentences. fairseq's builder adds one tensor at a time and keeps every size in a Python
list; here whole numpy chunks are read and written, so a corpus of millions of sentences streams
through in bounded memory, and the bytes are those fairseq's ``make_builder(...).add_item`` writes.
Also here: token ids to text lines as ``Dictionary.string`` writes them, a chunk at a time.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
_HEADER = len(MAGIC) + 8 + 1 + 8  # magic, version, dtype code, count
_CODES = {np.dtype(t): code for code, t in ((1, np.uint8), (2, np.int8), (3, np.int16), (4, np.int32),
                                             (5, np.int64), (6, np.float64), (8, np.uint16),
                                             (9, np.uint32), (10, np.uint64))}
_DTYPES = {code: t for t, code in _CODES.items()}
_COPY_ITEMS = 1 << 16  # sizes copied 64K at a time when the index is written (1M cost ~36 MB of int64 temporaries)


def builder_dtype(vocab_size: int | None) -> np.dtype:
    """The dtype fairseq's ``best_fitting_int_dtype`` picks for a vocabulary (what ``make_builder`` writes)."""
    if vocab_size is None:
        return np.dtype(np.uint32)
    if vocab_size < 65500:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32 if vocab_size < 4294967295 else np.int64)


class IndexedReader:
    """One side of a split in fairseq's mmap format, read by ranges of sentence ids with ``pread``.

    Reads copy into ordinary memory rather than mapping the files, so only the chunk asked for
    is resident whatever the corpus size.
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        with open(prefix + ".idx", "rb") as f:
            head = f.read(_HEADER)
        if len(head) < _HEADER or head[:len(MAGIC)] != MAGIC or struct.unpack("<Q", head[9:17])[0] != 1:
            raise ValueError(f"{prefix}.idx: not a fairseq mmap index")
        self.dtype = _DTYPES[head[17]]
        self.count = struct.unpack("<Q", head[18:26])[0]
        self._idx = os.open(prefix + ".idx", os.O_RDONLY)
        self._bin = os.open(prefix + ".bin", os.O_RDONLY)

    def close(self) -> None:
        """Close both files."""
        os.close(self._idx)
        os.close(self._bin)

    def __len__(self) -> int:
        return self.count

    def num_tokens(self) -> int:
        """Token ids in the .bin (its size over the dtype's)."""
        return os.fstat(self._bin).st_size // self.dtype.itemsize

    def _read(self, fd: int, dtype, count: int, offset: int) -> np.ndarray:
        data = os.pread(fd, count * np.dtype(dtype).itemsize, offset)
        return np.frombuffer(data, dtype=dtype, count=count)

    def sizes(self, start: int, stop: int) -> np.ndarray:
        """Token counts (int32) of sentences ``start`` to ``stop - 1``."""
        return self._read(self._idx, np.int32, stop - start, _HEADER + 4 * start)

    def pointers(self, start: int, stop: int) -> np.ndarray:
        """Byte offsets in the .bin (int64) of sentences ``start`` to ``stop - 1``."""
        return self._read(self._idx, np.int64, stop - start, _HEADER + 4 * self.count + 8 * start)

    def tokens(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(all token ids of sentences ``start``..``stop - 1`` back to back, in the file's dtype; their sizes)."""
        sizes = self.sizes(start, stop)
        if stop <= start:
            return np.zeros(0, self.dtype), sizes
        pointers = self.pointers(start, stop)
        item = self.dtype.itemsize
        ends = pointers + sizes.astype(np.int64) * item
        if np.array_equal(pointers[1:], ends[:-1]):  # fairseq writes sentences back to back
            return self._read(self._bin, self.dtype, int(sizes.sum()), int(pointers[0])), sizes
        parts = [self._read(self._bin, self.dtype, int(s), int(p)) for p, s in zip(pointers, sizes)]
        return np.concatenate(parts), sizes


class IndexedWriter:
    """``PREFIX.bin`` and ``PREFIX.idx`` written from chunks, byte for byte as fairseq's mmap builder writes them.

    The sizes wait in a temporary file next to the output until :meth:`finalize` writes the index.
    """

    def __init__(self, prefix: str, dtype):
        self.prefix, self.dtype = prefix, np.dtype(dtype)
        self.count = 0
        self._bin = open(prefix + ".bin", "wb")
        self._sizes = open(prefix + ".sizes.tmp", "wb")

    def add(self, tokens: np.ndarray, sizes: np.ndarray) -> None:
        """Append sentences: their token ids back to back and their sizes (cast like ``add_item`` casts)."""
        self._bin.write(np.asarray(tokens).astype(self.dtype, copy=False).tobytes())
        self._sizes.write(np.asarray(sizes, dtype=np.int32).tobytes())
        self.count += len(sizes)

    def finalize(self) -> None:
        """Close the .bin and write the .idx (header, sizes, pointers)."""
        self._bin.close()
        self._sizes.close()
        item = self.dtype.itemsize
        with open(self.prefix + ".idx", "wb") as out, open(self.prefix + ".sizes.tmp", "rb") as sizes:
            out.write(MAGIC + struct.pack("<Q", 1) + struct.pack("<B", _CODES[self.dtype])
                      + struct.pack("<Q", self.count))
            while chunk := sizes.read(4 * _COPY_ITEMS):
                out.write(chunk)
            sizes.seek(0)
            address = 0
            while chunk := sizes.read(4 * _COPY_ITEMS):
                lengths = np.frombuffer(chunk, dtype=np.int32).astype(np.int64) * item
                ends = np.cumsum(lengths) + address
                out.write((ends - lengths).tobytes())
                address = int(ends[-1])
        os.remove(self.prefix + ".sizes.tmp")


class SymbolLines:
    """Token ids to text, one line per sentence, tokens joined by spaces, a whole chunk at a time.

    With ``unk``/``skip`` it writes what ``Dictionary.string`` writes (unknown ids as the unk
    word, EOS and BOS left out); without, each id is its symbol (the inverse of a dictionary lookup).
    """

    def __init__(self, symbols: Sequence[str], unk: int | None = None, unk_word: str = "<unk>",
                 skip: Sequence[int] = ()):
        words = list(symbols)
        if unk is not None:
            words[unk] = unk_word
        self.size, self.unk = len(words), unk
        encoded = [w.encode("utf-8") for w in words]
        # one table: "word " for a token inside a sentence, "word\n" for the last, "\n" for an empty line
        self.table = np.array([w + b" " for w in encoded] + [w + b"\n" for w in encoded] + [b"\n"], dtype=object)
        self.skip = np.array(sorted(set(skip)), dtype=np.int64)

    def lines(self, tokens: np.ndarray, sizes: np.ndarray, drop_last: bool = False) -> bytes:
        """The UTF-8 lines of the sentences ``sizes`` cuts ``tokens`` into (``drop_last``: without their last token)."""
        tokens = np.asarray(tokens).astype(np.int64)
        sizes = np.asarray(sizes, dtype=np.int64)
        ends = np.cumsum(sizes)
        keep = np.ones(len(tokens), dtype=bool)
        if drop_last:
            keep[ends[sizes > 0] - 1] = False
        if len(self.skip):
            keep &= ~np.isin(tokens, self.skip)
        if not keep.all():
            kept = np.concatenate(([0], np.cumsum(keep)))
            sizes = kept[ends] - kept[ends - sizes]
            tokens, ends = tokens[keep], np.cumsum(sizes)
        if self.unk is not None:
            tokens = np.where(tokens >= self.size, self.unk, tokens)
        last = ends[sizes > 0] - 1
        tokens[last] += self.size
        empty = np.flatnonzero(sizes == 0)
        if len(empty):
            tokens = np.insert(tokens, ends[empty], 2 * self.size)
        return b"".join(self.table[tokens].tolist())
