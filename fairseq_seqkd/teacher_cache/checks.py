"""A teacher top-k cache against the data it is used with: the target lengths, a hash of the target tokens, the values.

:func:`check_against_dataset` holds a cache to a split of fairseq data (dictionary, sentence count,
every target length, a hash of the target tokens of each shard, and a scan of the values that would
crash or poison training); the build records :func:`target_tokens_hash` in each shard. fairseq's
dataset classes are imported when a dataset is checked, not with this module.
"""

from __future__ import annotations

import hashlib

import numpy as np

from fairseq_seqkd.data.indexed import IndexedReader
from fairseq_seqkd.errors import UserError
from fairseq_seqkd.teacher_cache.format import _rebuild_hint, dictionary_hash
from fairseq_seqkd.teacher_cache.reader import TeacherCache

_HASH_BLOCK_SENTENCES = 1 << 17  # about 4M tokens (16 MiB as int32) per hashlib update


def _target_side(dataset):
    """The indexed dataset of the target side, under any bucket padding."""
    from fairseq.data import BucketPadLengthDataset

    tgt, sizes = getattr(dataset, "tgt", None), getattr(dataset, "tgt_sizes", None)
    if tgt is None or sizes is None:
        raise UserError(f"a teacher cache needs a translation dataset with a target side; got "
                        f"{type(dataset).__name__}")
    return tgt.dataset if isinstance(tgt, BucketPadLengthDataset) else tgt


def target_lengths(dataset) -> np.ndarray:
    """True target length of each sentence of a language-pair dataset (before bucket padding)."""
    from fairseq.data import BucketPadLengthDataset

    if isinstance(getattr(dataset, "tgt", None), BucketPadLengthDataset):  # --num-batch-buckets pads sizes
        return np.asarray(dataset.tgt.dataset.sizes)
    _target_side(dataset)
    return np.asarray(dataset.tgt_sizes)


def _token_blocks(tgt, first: int, end: int):
    """The target token ids of sentences [first, end) of an indexed dataset, concatenated, in blocks."""
    from fairseq.data import ConcatDataset
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    if isinstance(tgt, ConcatDataset) and all(r == 1 for r in tgt.sample_ratios):
        # train combined with train1, ...: each part holds a contiguous range of sentence ids
        start = 0
        for part, stop in zip(tgt.datasets, tgt.cumulative_sizes):
            if max(first, start) < min(end, stop):
                yield from _token_blocks(part, max(first, start) - start, min(end, stop) - start)
            start = stop
        return
    if first < end and type(tgt) is MMapIndexedDataset and getattr(tgt, "_path", None):
        # fairseq's mmap format: read the files by ranges of sentences (the .bin bytes, back to back)
        reader = IndexedReader(tgt._path)
        try:
            for lo in range(first, end, _HASH_BLOCK_SENTENCES):
                yield reader.tokens(lo, min(end, lo + _HASH_BLOCK_SENTENCES))[0]
        finally:
            reader.close()
        return
    for i in range(first, end):  # other formats: one sentence at a time (slow, but any dataset)
        yield tgt[i].numpy()


def target_tokens_hash(dataset, first: int, end: int) -> str:
    """sha256 of the target token ids of sentences [first, end) as little-endian int32, in sentence order."""
    h = hashlib.sha256()
    for block in _token_blocks(_target_side(dataset), first, end):
        h.update(np.ascontiguousarray(block, dtype="<i4"))
    return h.hexdigest()


def check_against_dataset(cache: TeacherCache, dataset, tgt_dict) -> None:
    """Stop with a UserError unless the cache was built from this data and holds no impossible value.

    Checks the dictionary, the sentence count, every target length, each shard's hash of the
    target tokens (a cache of data with the same lengths but other words is refused) and
    :meth:`TeacherCache.check_values`. At WMT14 size (135M target tokens, 4.3 GB of cache at
    k=8) that reads the target side once and the cache once: about a second or two warm.
    """
    where, fix = cache.header_file, _rebuild_hint(cache.split, cache.directory)
    expected = dictionary_hash(tgt_dict)
    if cache.header["target_dictionary_sha256"] != expected:
        raise UserError(f"{where}: built over another target dictionary (sha256 "
                        f"{cache.header['target_dictionary_sha256'][:12]}.. with "
                        f"{cache.header['vocab_size']} symbols; this data's is {expected[:12]}.. with "
                        f"{len(tgt_dict)}). Rebuild the cache from this data: {fix}")
    if len(cache) != len(dataset):
        raise UserError(f"{where}: holds {len(cache)} sentences but split '{cache.split}' of this data has "
                        f"{len(dataset)}: it was built from other data. Rebuild it: {fix}")
    sizes = target_lengths(dataset)
    for shard, lengths in cache.shard_lengths():
        first = shard["first_sentence"]
        bad = np.flatnonzero(lengths != sizes[first:first + len(lengths)])
        if len(bad):
            i = int(bad[0])
            raise UserError(f"{shard['path']}: sentence {first + i} has {int(lengths[i])} target tokens "
                            f"in the cache but {int(sizes[first + i])} in the data ({len(bad)} sentences of "
                            f"this shard differ): the cache was built from other data. Rebuild it: {fix}")
        if target_tokens_hash(dataset, first, first + len(lengths)) != shard["target_tokens_sha256"]:
            raise UserError(f"{shard['path']}: built from other target tokens than sentences {first}.."
                            f"{first + len(lengths)} of split '{cache.split}' of this data (same lengths, "
                            f"other words: the data was re-binarized or changed). Rebuild it: {fix}")
    cache.check_values()
    cache.close()  # opened for the check; workers map the files themselves
