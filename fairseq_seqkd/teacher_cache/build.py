"""Building a teacher top-k cache: run the teacher over a split, shard by shard, chunk by chunk.

The teacher is one checkpoint or an ensemble (``a.pt:b.pt``): the cache then holds the top-k of
the members' mean probability (``fairseq_glue.ensemble_log_probs``), the distribution fairseq's
ensemble decoding searches. A shard is processed in chunks of contiguous sentence ids; each
finished chunk is flushed and recorded in the shard's ``.tmp`` file (see
``teacher_cache.ShardWriter``), so a build killed partway resumes from its last completed chunk.
Sentences are batched in the dataset's own order under a fixed seed, so a resumed shard, a shard
built alone (``--shard-id``) and the same shard of a build of every shard are byte for byte the
same file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.fairseq_glue import (
    batch_order,
    load_split,
    load_teachers_for_data,
    setup_translation_task,
    teacher_autocast,
    teacher_batches,
    teacher_names,
    teacher_topk,
)
from fairseq_seqkd.io_utils import check_free_space, file_sha256
from fairseq_seqkd.layout import shard_range
from fairseq_seqkd.teacher_cache.checks import check_against_dataset, target_lengths, target_tokens_hash
from fairseq_seqkd.teacher_cache.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    LOGITS_DTYPE,
    ShardWriter,
    _identity_diff,
    _rebuild_hint,
    _scan,
    dictionary_hash,
    header_path,
    ids_dtype_for,
    merge_shards,
    read_shard_header,
    shard_layout,
    shard_path,
    topk_logits,
)
from fairseq_seqkd.teacher_cache.reader import TeacherCache

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SENTENCES = 20000


def build_cache(data: str, teacher_path: str, out_dir: str, split: str = "train", topk: int = 8,
                max_tokens: int | None = 4000, max_sentences: int | None = None, num_shards: int = 1,
                shard_id: int | None = None, source_lang: str | None = None, target_lang: str | None = None,
                cpu: bool = False, fp16: bool = False, num_workers: int = 0, progress: bool = True,
                chunk_sentences: int = DEFAULT_CHUNK_SENTENCES, teacher_dict: str | None = None,
                teacher_dict_unchecked: bool = False,
                on_chunk: Callable[[int, int], None] | None = None) -> dict:
    """Build (or resume) the teacher top-k cache of ``data``'s ``split`` into ``out_dir``.

    ``teacher_path`` is one checkpoint or an ensemble separated by ':' (the top-k of the members'
    mean probability is stored). Runs the teacher with teacher forcing over the shards asked
    for (``shard_id`` None: all of them), skipping finished shards and resuming partial ones
    after their last completed chunk of ``chunk_sentences`` sentences, and writes the split
    header once every shard exists.
    ``on_chunk(shard_id, sentences_done)`` is called after each recorded chunk. Returns
    {"header": dict or None, "built": [...], "skipped": [...], "missing": [...],
    "resumed": {shard id: sentences kept}, "batches": int, "seconds": float}.
    """
    from fairseq import utils
    from tqdm import tqdm

    if topk < 1:
        raise UserError(f"--topk must be >= 1, got {topk}")
    if chunk_sentences < 1:
        raise UserError(f"--chunk-sentences must be >= 1, got {chunk_sentences}")
    if num_shards < 1 or (shard_id is not None and not 0 <= shard_id < num_shards):
        raise UserError(f"--shard-id must lie in [0, --num-shards={num_shards}), got {shard_id}")
    use_cuda = torch.cuda.is_available() and not cpu
    if fp16 and not use_cuda:
        raise UserError("--fp16 needs a GPU; drop --fp16 (or --cpu)")
    start = time.perf_counter()
    task, teachers, paths = load_teachers_for_data(data, teacher_path, source_lang, target_lang, teacher_dict,
                                                   teacher_dict_unchecked)
    members = teacher_record(paths)
    dataset = load_split(task, split)
    tgt_dict = task.target_dictionary
    lengths = target_lengths(dataset)
    k = min(topk, len(tgt_dict))
    identity = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "split": split, "k": k,
                "ids_dtype": ids_dtype_for(len(tgt_dict)), "logits_dtype": LOGITS_DTYPE,
                "vocab_size": len(tgt_dict),
                "teacher_checkpoint_sha256": teachers_sha256([m["sha256"] for m in members]),
                "target_dictionary_sha256": dictionary_hash(tgt_dict), "total_sentences": len(dataset),
                "num_shards": num_shards}
    _check_existing(out_dir, split, identity, members)
    shards = range(num_shards) if shard_id is None else [shard_id]
    check_free_space(out_dir, _bytes_to_write(out_dir, split, shards, num_shards, lengths, k, identity["ids_dtype"]),
                     f"the teacher cache of split '{split}' (top-{k}, {len(shards)} shard(s) of {num_shards})")
    if use_cuda:
        for teacher in teachers:
            teacher.cuda()
    # --fp16: autocast over the float32 weights (log-softmax stays float32), and a check of every
    # batch's output, so an overflow stops the build instead of reaching the cache
    precision = teacher_autocast(torch.device("cuda" if use_cuda else "cpu"),
                                 torch.float16 if fp16 else torch.float32)
    finite_fix = ("Its activations overflow float16: rebuild without --fp16" if fp16 else
                  "Check that the checkpoint translates (fairseq-generate --path TEACHER.pt), then rebuild") + \
        f": {_rebuild_hint(split, out_dir)}"
    names = teacher_names(paths)
    pad, left_pad = tgt_dict.pad(), bool(getattr(dataset, "left_pad_target", False))
    order = None
    built, skipped, resumed, batches = [], [], {}, 0
    for i in shards:
        path = shard_path(out_dir, split, i, num_shards)
        first, end = shard_range(len(dataset), num_shards, i)
        tokens_hash = target_tokens_hash(dataset, first, end)
        if os.path.exists(path):
            header = read_shard_header(path)
            diff = _teachers_diff(identity, header, members) or _identity_diff(identity, header)
            if not diff and header.get("target_tokens_sha256") != tokens_hash:
                diff = "its target tokens differ from this data's"
            if diff:
                raise UserError(f"{path}: a finished shard of another build ({diff}); delete the {split}.* "
                                f"files in {out_dir} or choose another --out")
            logger.info("shard %d of %d already complete: %s", i, num_shards, path)
            skipped.append(i)
            continue
        writer = _shard_writer(path, {**identity, "teacher_checkpoint": ":".join(m["path"] for m in members),
                                      "teachers": members, "shard_id": i, "first_sentence": first,
                                      "target_tokens_sha256": tokens_hash}, lengths[first:end])
        if writer.done:
            logger.info("shard %d of %d: resuming %s after sentence %d of %d (sentences %d..%d are done)", i,
                        num_shards, writer.tmp, first + writer.done, end, first, first + writer.done)
            resumed[i] = writer.done
        if order is None:
            order = batch_order(dataset)
        bar = tqdm(total=end - first, initial=writer.done, desc=f"{split} shard {i + 1}/{num_shards}",
                   unit="sent", disable=not progress, mininterval=1.0)
        try:
            for lo in range(first + writer.done, end, chunk_sentences):
                hi = min(end, lo + chunk_sentences)
                for sample in teacher_batches(task, teachers, dataset, lo, hi, max_tokens, max_sentences,
                                              num_workers, order):
                    if use_cuda:
                        sample = utils.move_to_cuda(sample)
                    with precision:  # each member's output checked before it is averaged
                        ids, lprobs = teacher_topk(teachers, names, sample["net_input"], k, finite_fix)
                    target = sample["target"]
                    ids_np = ids.cpu().numpy().astype(identity["ids_dtype"])
                    logits_np = topk_logits(lprobs.cpu().numpy())
                    width = target.size(1)
                    for row, (sid, n) in enumerate(zip(sample["id"].tolist(), target.ne(pad).sum(1).tolist())):
                        cols = slice(width - n, width) if left_pad else slice(0, n)
                        writer.write(sid - first, ids_np[row, cols], logits_np[row, cols])
                    batches += 1
                    bar.update(len(sample["id"]))
                writer.record_progress(hi - first)
                if on_chunk is not None:
                    on_chunk(i, hi - first)
            header = writer.commit()
        finally:
            writer.close()  # an interruption keeps the .tmp and its recorded chunks for a rerun
            bar.close()
        logger.info("shard %d of %d: %d sentences, %d tokens -> %s", i, num_shards, header["num_sentences"],
                    header["num_tokens"], path)
        built.append(i)
    finished, _ = _scan(out_dir, split)
    missing = [i for i in range(num_shards) if i not in finished.get(num_shards, {})]
    header = merge_shards(out_dir, split) if not missing else None
    if header is not None and header["num_tokens"] != int(lengths.sum()):
        raise UserError(f"{header_path(out_dir, split)}: {header['num_tokens']} tokens cached but the split "
                        f"has {int(lengths.sum())}; delete the cache and rebuild it")
    return {"header": header, "built": built, "skipped": skipped, "missing": missing, "resumed": resumed,
            "batches": batches, "seconds": time.perf_counter() - start}


def _bytes_to_write(out_dir: str, split: str, shards: Sequence[int], num_shards: int, lengths: np.ndarray, k: int,
                    ids_dtype: str) -> int:
    """Disk space the unfinished ``shards`` still need: their files' sizes, less what a partial one holds already."""
    needed = 0
    for i in shards:
        path = shard_path(out_dir, split, i, num_shards)
        if os.path.exists(path):
            continue
        first, end = shard_range(len(lengths), num_shards, i)
        size = shard_layout(end - first, int(lengths[first:end].sum()), k, ids_dtype)["bytes"]
        # a partial shard is a sparse file: only the blocks of its written chunks are on disk
        held = os.stat(path + ".tmp").st_blocks * 512 if os.path.exists(path + ".tmp") else 0
        needed += max(0, size - held)
    return needed


def teacher_record(paths: Sequence[str]) -> list[dict]:
    """What a cache header records of each teacher: its absolute path, the sha256 and size of its file."""
    return [{"path": os.path.abspath(p), "sha256": file_sha256(p), "bytes": os.path.getsize(p)} for p in paths]


def teachers_sha256(shas: Sequence[str]) -> str:
    """A cache's ``teacher_checkpoint_sha256``: the checkpoint's sha256, or for an ensemble the sha256 of
    its members' sha256s, one per line in ``--path`` order (another ensemble, or another order, differs)."""
    if len(shas) == 1:
        return shas[0]
    return hashlib.sha256("\n".join(shas).encode("ascii")).hexdigest()


def _describe_teachers(header: dict) -> str:
    members = header.get("teachers")
    if not members:  # a cache written before the header listed its teachers
        return f"{header.get('teacher_checkpoint', '?')} (sha256 {str(header.get('teacher_checkpoint_sha256'))[:12]}..)"
    return " : ".join(f"{m['path']} (sha256 {m['sha256'][:12]}..)" for m in members)


def _teachers_diff(identity: dict, header: dict, members: list[dict]) -> str | None:
    """How the teachers of a finished cache or shard differ from this build's, or None."""
    if header.get("teacher_checkpoint_sha256") == identity["teacher_checkpoint_sha256"]:
        return None
    return (f"built from teacher(s) {_describe_teachers(header)}, but this build's are "
            f"{_describe_teachers({'teachers': members})}")


def _shard_writer(path: str, meta: dict, lengths: np.ndarray) -> ShardWriter:
    try:
        return ShardWriter(path, meta, lengths)
    except ValueError as e:
        if "exceeds" not in str(e):
            raise
        # the shard's JSON header outgrew its 4096 bytes
        raise UserError(f"{path}: the {len(meta['teachers'])} teacher paths do not fit the shard's header ({e}); "
                        "give the checkpoints shorter paths (e.g. symlinks in a short folder)") from e


def _check_existing(out_dir: str, split: str, identity: dict, members: list[dict]) -> None:
    """Refuse to mix this build with a finished cache or shards of another build."""
    finished, _ = _scan(out_dir, split)
    other = sorted(n for n in finished if n != identity["num_shards"])
    if other:
        raise UserError(f"{out_dir}: holds {split} shards of a build with --num-shards {other[0]}; rerun "
                        f"with --num-shards {other[0]} to resume it, or delete its {split}.shard* files")
    path = header_path(out_dir, split)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            header = json.load(f)
        diff = _teachers_diff(identity, header, members) or \
            _identity_diff(identity, header | {"total_sentences": header.get("num_sentences")})
        if diff:
            raise UserError(f"{path}: a finished cache of another build ({diff}); delete the {split}.* files "
                            f"in {out_dir} or choose another --out")


def verify_cache(data: str, out_dir: str, split: str = "train", source_lang: str | None = None,
                 target_lang: str | None = None) -> dict:
    """Check every shard's checksums (merging finished shards into the header if it is missing),
    then check the cache against ``data``'s split (lengths, target tokens, values)."""
    if os.path.isfile(header_path(out_dir, split)):
        cache = TeacherCache(out_dir, split)
        cache.verify_checksums()
    else:
        merge_shards(out_dir, split)  # checks the checksums of every shard
        cache = TeacherCache(out_dir, split)
    task = setup_translation_task(data, source_lang, target_lang)
    check_against_dataset(cache, load_split(task, split), task.target_dictionary)
    return cache.header
