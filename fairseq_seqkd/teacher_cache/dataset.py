"""A teacher top-k cache next to fairseq data: checked against a split, then added to its batches.

:func:`check_against_dataset` holds a cache to the data it is used with (dictionary, sentence
count, every target length, a hash of the target tokens of each shard, and a scan of the values
that would crash or poison training); :class:`TeacherCacheDataset` adds ``teacher_topk_ids`` /
``teacher_topk_probs`` to batches (read once per batch); :func:`attach_teacher_cache` does both for the task.
"""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np
import torch
from fairseq.data import BaseWrapperDataset, BucketPadLengthDataset, ConcatDataset, Dictionary
from fairseq.data.indexed_dataset import MMapIndexedDataset

from fairseq_seqkd.data.indexed import IndexedReader
from fairseq_seqkd.errors import UserError
from fairseq_seqkd.fairseq_glue import TEACHER_IDS_KEY, TEACHER_PROBS_KEY
from fairseq_seqkd.teacher_cache.format import (
    TeacherCache,
    _rebuild_hint,
    _scan,
    concat_ranges,
    dictionary_hash,
    header_path,
    row_view,
)

logger = logging.getLogger(__name__)

_HASH_BLOCK_SENTENCES = 1 << 17  # about 4M tokens (16 MiB as int32) per hashlib update


def _target_side(dataset):
    """The indexed dataset of the target side, under any bucket padding."""
    tgt, sizes = getattr(dataset, "tgt", None), getattr(dataset, "tgt_sizes", None)
    if tgt is None or sizes is None:
        raise UserError(f"a teacher cache needs a translation dataset with a target side; got "
                        f"{type(dataset).__name__}")
    return tgt.dataset if isinstance(tgt, BucketPadLengthDataset) else tgt


def target_lengths(dataset) -> np.ndarray:
    """True target length of each sentence of a language-pair dataset (before bucket padding)."""
    if isinstance(getattr(dataset, "tgt", None), BucketPadLengthDataset):  # --num-batch-buckets pads sizes
        return np.asarray(dataset.tgt.dataset.sizes)
    _target_side(dataset)
    return np.asarray(dataset.tgt_sizes)


def _token_blocks(tgt, first: int, end: int):
    """The target token ids of sentences [first, end) of an indexed dataset, concatenated, in blocks."""
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


def check_against_dataset(cache: TeacherCache, dataset, tgt_dict: Dictionary) -> None:
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


class TeacherCacheDataset(BaseWrapperDataset):
    """Adds ``teacher_topk_ids`` (long) / ``teacher_topk_probs`` (float16), (B, T, k), to each batch.

    They are aligned and padded like ``target`` (right or left padding, bucketing, any batch
    order); padded positions hold id 0 with probability 0.
    """

    def __init__(self, dataset, cache: TeacherCache, pad: int):
        super().__init__(dataset)
        self.cache = cache
        self.pad = pad
        self.left_pad_target = bool(getattr(dataset, "left_pad_target", False))

    # No __getitem__: the cache is read once per batch in the collater (one vectorized gather
    # over the batch's sentence ids), not once per sentence.

    def collater(self, samples):
        batch = self.dataset.collater(samples)
        if not batch or batch.get("target") is None:
            return batch
        target = batch["target"]
        bsz, width = target.shape
        k = self.cache.k
        cached, ids, probs = self.cache.take(batch["id"].numpy())  # rows in the collater's (sorted) order
        lengths = target.ne(self.pad).sum(dim=1).numpy()
        if not np.array_equal(cached, lengths):
            row = int(np.flatnonzero(cached != lengths)[0])
            raise UserError(f"{self.cache.header_file}: sentence {int(batch['id'][row])} has "
                            f"{int(cached[row])} cached positions but {int(lengths[row])} target tokens in "
                            "the batch; rebuild the cache")
        # left padding puts the tokens at the end of each row, right padding at its start
        first = np.arange(bsz, dtype=np.int64) * width
        if self.left_pad_target:
            first += width - lengths
        at = concat_ranges(first, lengths)
        dense_ids = np.zeros((bsz * width, k), dtype=ids.dtype)
        dense_probs = np.zeros((bsz * width, k), dtype=np.float16)
        row_view(dense_ids)[at] = row_view(ids)
        row_view(dense_probs)[at] = row_view(probs)
        # the criterion gathers with the ids: int64, converted once per batch
        batch[TEACHER_IDS_KEY] = torch.from_numpy(dense_ids.astype(np.int64)).view(bsz, width, k)
        batch[TEACHER_PROBS_KEY] = torch.from_numpy(dense_probs).view(bsz, width, k)
        return batch

    def num_tokens_vec(self, indices):
        return self.dataset.num_tokens_vec(indices)


def attach_teacher_cache(dataset, directory: str, split: str, tgt_dict: Dictionary, required: bool):
    """Wrap ``dataset`` with ``split``'s cache from ``directory`` after checking it matches the data.

    When the folder holds nothing for ``split`` and it is not ``required`` (a validation split),
    the dataset is returned unchanged.
    """
    finished, partial = _scan(directory, split)
    if not required and not os.path.isfile(header_path(directory, split)) and not finished and not partial:
        logger.info("no teacher cache for split %s in %s: word_kd uses an online teacher there if "
                    "--teacher-path is given, else the label-smoothed NLL alone", split, directory)
        return dataset
    cache = TeacherCache(directory, split)
    check_against_dataset(cache, dataset, tgt_dict)
    logger.info("teacher cache %s: %d sentences, %d tokens, top-%d, checked against split %s",
                cache.header_file, len(cache), cache.num_tokens, cache.k, split)
    return TeacherCacheDataset(dataset, cache, tgt_dict.pad())
