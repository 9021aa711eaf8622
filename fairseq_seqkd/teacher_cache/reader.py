"""Reading a teacher top-k cache: :class:`TeacherCache`, one split's shards through memory maps, never loaded whole."""

from __future__ import annotations

import bisect
import json
import mmap
import os

import numpy as np

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.teacher_cache.format import (
    _BLOCK_BYTES,
    FORMAT_NAME,
    FORMAT_VERSION,
    OFFSETS_DTYPE,
    _identity_diff,
    _missing_cache_error,
    _old_version_error,
    _rebuild_hint,
    _shard_fix,
    first_bad_logit_row,
    header_path,
    read_shard_header,
    verify_checksums,
)


class TeacherCache:
    """Read-only view of one split's cache: ``cache[i]`` is (ids, logits) of sentence i, (len, k) each.

    ``logits`` are float16 log(p_i / p_1) (see :func:`~fairseq_seqkd.teacher_cache.format.topk_logits`).

    Memory maps are opened lazily on first access and dropped when pickled, so each DataLoader
    worker (or distributed rank) maps the files itself and RAM stays flat as the cache grows.
    """

    def __init__(self, directory: str, split: str):
        self.directory, self.split = directory, split
        self.header_file = header_path(directory, split)
        if not os.path.isfile(self.header_file):
            raise _missing_cache_error(directory, split)
        try:
            with open(self.header_file, encoding="utf-8") as f:
                header = json.load(f)
        except ValueError as e:
            raise UserError(f"{self.header_file}: not valid JSON ({e}); delete it and run "
                            f"`fairseq-seqkd cache DATA --verify --split {split} --out {directory}`") from e
        if header.get("format") == FORMAT_NAME and header.get("version") != FORMAT_VERSION:
            raise _old_version_error(self.header_file, header.get("version"))
        if header.get("format") != FORMAT_NAME:
            raise UserError(f"{self.header_file}: not a version-{FORMAT_VERSION} {FORMAT_NAME} header; "
                            f"rebuild the cache with {_rebuild_hint(split, directory)}")
        if header["split"] != split:
            raise UserError(f"{self.header_file}: describes split '{header['split']}', not '{split}' "
                            f"(renamed file?): build the {split} cache with "
                            f"{_rebuild_hint(split, directory)}")
        self.header = header
        self.k = int(header["k"])
        self.shards: list[dict] = []
        for entry in header["shards"]:
            path = os.path.join(directory, entry["file"])
            if not os.path.isfile(path):
                raise UserError(f"{path}: listed in {self.header_file} but missing; rebuild it with "
                                f"{_rebuild_hint(split, directory)} --shard-id {entry['shard_id']}")
            shard = read_shard_header(path)
            diff = _identity_diff(header | {"total_sentences": header["num_sentences"]}, shard)
            if not diff and any(shard[key] != entry[key] for key in ("first_sentence", "bytes")):
                diff = "sentence range or size differ"
            if diff:
                raise UserError(f"{path} disagrees with {self.header_file} ({diff}): it was rebuilt after "
                                "the header was written; delete the header and run "
                                f"`fairseq-seqkd cache DATA --verify --split {split} --out {directory}`")
            self.shards.append({**shard, "path": path})
        self._first = [s["first_sentence"] for s in self.shards]
        self._first_array = np.asarray(self._first, dtype=np.int64)
        self._maps: list | None = None

    def __len__(self) -> int:
        return int(self.header["num_sentences"])

    @property
    def num_tokens(self) -> int:
        """Target tokens in the split."""
        return int(self.header["num_tokens"])

    def _open(self) -> list:
        if self._maps is None:
            # plain ndarray views over one mmap per shard: a slice of an np.memmap is another
            # memmap object, several times slower to cut and convert than an ndarray view.
            # Training reads sentences in random order: readahead (128 KB per fault) would
            # read ~64 MB from disk for one cold batch of a few hundred ~0.5 KB sentences.
            self._maps = [_shard_arrays(s, mmap.MADV_RANDOM) for s in self.shards]
        return self._maps

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"sentence {index} outside the {len(self)} of {self.header_file}")
        s = bisect.bisect_right(self._first, index) - 1
        offsets, ids, logits = self._open()[s]
        j = index - self._first[s]
        lo, hi = int(offsets[j]), int(offsets[j + 1])
        return ids[lo:hi], logits[lo:hi]

    def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lengths, ids, logits) of sentences ``indices``: ids and logits (sum(lengths), k), concatenated in order.

        One vectorized gather per shard touched instead of a Python call per sentence: the few
        hundred sentences of an 8k-token training batch cost about a millisecond, not tens.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            bad = indices[(indices < 0) | (indices >= len(self))][0]
            raise IndexError(f"sentence {bad} outside the {len(self)} of {self.header_file}")
        maps = self._open()
        # sentences grouped by shard (stable: each group keeps the batch order), a slice per shard
        shard = np.searchsorted(self._first_array, indices, side="right") - 1
        order = None if len(maps) == 1 else np.argsort(shard, kind="stable")
        grouped = indices if order is None else indices[order]
        bounds = np.searchsorted(shard if order is None else shard[order], np.arange(len(maps) + 1))
        lo, hi = np.empty(len(indices), dtype=np.int64), np.empty(len(indices), dtype=np.int64)
        touched = [s for s in range(len(maps)) if bounds[s] < bounds[s + 1]]
        for s in touched:
            a, b = bounds[s], bounds[s + 1]
            offsets, j = maps[s][0], grouped[a:b] - self._first[s]
            lo[a:b], hi[a:b] = offsets[j], offsets[j + 1]
        grouped_lengths = hi - lo
        src = concat_ranges(lo, grouped_lengths)  # token rows within each shard
        token_bounds = np.concatenate([[0], np.cumsum(grouped_lengths)])[bounds]
        if order is None:
            lengths = grouped_lengths
        else:
            lengths = np.empty_like(grouped_lengths)
            lengths[order] = grouped_lengths
        ids = np.empty((len(src), self.k), dtype=self.header["ids_dtype"])
        logits = np.empty((len(src), self.k), dtype=self.header["logits_dtype"])
        if order is None:  # one shard: the rows fill the output in order
            np.take(row_view(maps[0][1]), src, out=row_view(ids))
            np.take(row_view(maps[0][2]), src, out=row_view(logits))
            return lengths, ids, logits
        starts = np.cumsum(lengths) - lengths  # where each sentence goes in the output
        dst = concat_ranges(starts[order], grouped_lengths)
        for s in touched:
            rows = slice(token_bounds[s], token_bounds[s + 1])
            row_view(ids)[dst[rows]] = row_view(maps[s][1])[src[rows]]
            row_view(logits)[dst[rows]] = row_view(maps[s][2])[src[rows]]
        return lengths, ids, logits

    def shard_lengths(self):
        """Yield (shard header, target length of each of its sentences), one shard at a time."""
        for s in self.shards:
            yield s, np.diff(_shard_arrays(s, mmap.MADV_SEQUENTIAL)[0])

    def verify_checksums(self) -> None:
        """Read every shard whole and compare its CRC-32s with those recorded at commit (about 1.5 GB/s)."""
        for s in self.shards:
            verify_checksums(s["path"], s)

    def check_values(self) -> None:
        """A scan at memory speed that stops damage from reaching training.

        Offsets start at 0, never decrease and end at the token count; every id lies below the
        vocabulary size; every logit is 0 first and <= 0 after (no NaN). Cheaper than the checksums
        (a max over the arrays, no hashing), though a damaged block of plausible values passes.
        """
        vocab = int(self.header["vocab_size"])
        for s in self.shards:
            # its own maps, read front to back: the training maps turn readahead off
            offsets, ids, logits = _shard_arrays(s, mmap.MADV_SEQUENTIAL)
            if offsets[0] != 0 or offsets[-1] != s["num_tokens"] or (np.diff(offsets) < 0).any():
                raise UserError(f"{s['path']}: damaged: its sentence offsets are not a running count of "
                                f"{s['num_tokens']} tokens. " + _shard_fix(s["path"], s))
            rows = max(1, _BLOCK_BYTES // max(1, ids.strides[0]))
            for lo in range(0, s["num_tokens"], rows):
                block = np.asarray(ids[lo:lo + rows])
                if block.max() >= vocab or block.min() < 0:
                    bad = np.flatnonzero(((block >= vocab) | (block < 0)).any(axis=1))[0]
                    raise UserError(f"{s['path']}: damaged: token {lo + bad} of the shard holds id "
                                    f"{int(block[bad].max())}, outside the vocabulary of {vocab}. "
                                    + _shard_fix(s["path"], s))
                bad = first_bad_logit_row(np.asarray(logits[lo:lo + rows]))
                if bad is not None:
                    raise UserError(f"{s['path']}: damaged: token {lo + bad} of the shard holds logits no build "
                                    "writes (a first one other than 0, one above 0, or NaN). "
                                    + _shard_fix(s["path"], s))

    def close(self) -> None:
        """Drop the memory maps (reopened lazily on the next access)."""
        self._maps = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"] = None  # a pickled map would copy the data; each process maps its own
        return state


def row_view(a: np.ndarray) -> np.ndarray:
    """A 1-D view of a C-contiguous 2-D array with one opaque item per row.

    numpy's fancy indexing copies such items about 5-10x faster than rows of k numbers.
    """
    if a.ndim != 2 or not a.flags.c_contiguous:
        raise ValueError(f"row_view needs a C-contiguous 2-D array, got shape {a.shape}")
    return a.view(np.dtype((np.void, a.shape[1] * a.itemsize))).reshape(-1)


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The ranges [starts[i], starts[i] + lengths[i]) concatenated, as one int64 index array."""
    starts, lengths = np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    return np.repeat(starts - (ends - lengths), lengths) + np.arange(int(ends[-1]) if len(ends) else 0)


def _shard_arrays(shard: dict, advice: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets, ids, logits) of a finished shard: read-only ndarrays over one memory map of its file."""
    n, ntok, k = shard["num_sentences"], shard["num_tokens"], shard["k"]
    with open(shard["path"], "rb") as f:
        view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # the map outlives the descriptor
    if hasattr(view, "madvise"):
        view.madvise(advice)

    def array(dtype: str, at: int, shape: tuple) -> np.ndarray:
        count = int(np.prod(shape))
        if count == 0:
            return np.zeros(shape, dtype=dtype)
        return np.frombuffer(view, dtype=dtype, count=count, offset=at).reshape(shape)

    return (array(OFFSETS_DTYPE, shard["offsets_at"], (n + 1,)),
            array(shard["ids_dtype"], shard["ids_at"], (ntok, k)),
            array(shard["logits_dtype"], shard["logits_at"], (ntok, k)))
