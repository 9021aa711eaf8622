"""The names of the files that the package, the pipeline (recipes/) and the tests share; no fairseq here."""

from __future__ import annotations

import os


def generation_shard(folder: str, shard_id: int) -> str:
    """One shard of the teacher's translations of a split: ``FOLDER/shard0000.txt`` (fairseq-generate
    output or K-best TSV)."""
    return os.path.join(folder, f"shard{shard_id:04d}.txt")


def cache_header(folder: str, split: str) -> str:
    """The JSON header of a split's teacher cache: ``FOLDER/SPLIT.header.json``."""
    return os.path.join(folder, f"{split}.header.json")


def cache_shard(folder: str, split: str, shard_id: int, num_shards: int) -> str:
    """One finished shard of a split's teacher cache: ``FOLDER/SPLIT.shard0000-of-0004.bin``."""
    return os.path.join(folder, f"{split}.shard{shard_id:04d}-of-{num_shards:04d}.bin")


def shard_range(num_items: int, num_shards: int, shard_id: int) -> tuple[int, int]:
    """[first, end) of shard ``shard_id`` of ``num_items``: contiguous, sizes differing by at most one."""
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard id {shard_id} is not in [0, {num_shards})")
    return num_items * shard_id // num_shards, num_items * (shard_id + 1) // num_shards


def stopped_on_signal(save_dir: str | os.PathLike) -> str:
    """What a training stopped on a cluster's warning signal leaves in its save folder
    (fairseq_seqkd.tasks.stop_signal): it saved its checkpoint and is not finished."""
    return os.path.join(save_dir, "stopped_on_signal.json")
