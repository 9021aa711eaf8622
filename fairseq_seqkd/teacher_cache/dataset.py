"""A teacher top-k cache next to fairseq data: checked against a split, then added to its batches.

:class:`TeacherCacheDataset` adds ``teacher_topk_ids`` / ``teacher_topk_logits`` to batches (read once
per batch); :func:`attach_teacher_cache` checks the cache against the split
(:func:`fairseq_seqkd.teacher_cache.checks.check_against_dataset`) and wraps it, for the task.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from fairseq.data import BaseWrapperDataset, Dictionary

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.fairseq_glue import TEACHER_IDS_KEY, TEACHER_LOGITS_KEY
from fairseq_seqkd.teacher_cache.checks import check_against_dataset
from fairseq_seqkd.teacher_cache.format import _scan, header_path
from fairseq_seqkd.teacher_cache.reader import TeacherCache, concat_ranges, row_view

logger = logging.getLogger(__name__)

class TeacherCacheDataset(BaseWrapperDataset):
    """Adds ``teacher_topk_ids`` (long) / ``teacher_topk_logits`` (float16), (B, T, k), to each batch.

    They are aligned and padded like ``target`` (right or left padding, bucketing, any batch
    order); padded positions hold id 0 with logit 0. The logits stay float16 as stored: fairseq's
    --fp16/--bf16 convert only float32 sample tensors, so they reach the criterion unchanged.
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
        cached, ids, logits = self.cache.take(batch["id"].numpy())  # rows in the collater's (sorted) order
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
        dense_logits = np.zeros((bsz * width, k), dtype=logits.dtype)
        row_view(dense_ids)[at] = row_view(ids)
        row_view(dense_logits)[at] = row_view(logits)
        # int32 (torch has few uint16 kernels): half the bytes of int64 to copy to a GPU; the criterion
        # widens them to int64 for gather/scatter where the batch is, on the device
        batch[TEACHER_IDS_KEY] = torch.from_numpy(dense_ids.astype(np.int32)).view(bsz, width, k)
        batch[TEACHER_LOGITS_KEY] = torch.from_numpy(dense_logits).view(bsz, width, k)
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
