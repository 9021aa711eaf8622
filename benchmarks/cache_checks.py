"""What the teacher cache's integrity checks cost: checksums, the value scan, the target-token hash.

Format version 2 of the cache added per-shard CRC-32s (computed at commit, checked by
``fairseq-seqkd cache --verify`` and by the merge), a value scan run whenever training loads
the cache (offsets, ids < vocabulary, and since version 3 logits 0 first and <= 0), a sha256 of each shard's target
token ids (compared with the data at training load and in ``--verify``) and a progress record
per chunk of a shard being built. This measures each on synthetic data of WMT14's shape and
extrapolates to WMT14 (135M target tokens, k = 8: a 4.3 GB cache, a 270 MB uint16 target side):

- a target side of ``--tokens`` tokens (32k vocabulary, sentences of 1-80 tokens, mean about
  28) written in fairseq's mmap format; ``hash_mtokens_per_s``: ``target_tokens_hash`` over it;
- one cache shard of the same sentences at k = 8 written with ``ShardWriter`` in chunks of
  ``--chunk-sentences``; ``progress_ms_per_chunk``: the mean ``record_progress`` (flush of the
  chunk's pages, header rewrite, fsync); ``commit_s``: the commit (checksums of the whole shard);
- ``crc_gb_per_s`` / ``scan_gb_per_s``: ``verify_checksums`` and ``check_values`` over the
  shard, warm (page cache hot) and cold (after ``posix_fadvise(DONTNEED)``; the disk's speed).

Prints progress on stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import types

import numpy as np
from memstats import drop_page_cache

WMT_TOKENS = 135_000_000
VOCAB = 32_000
K = 8


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2M tokens instead of 20M (under 30 s)")
    p.add_argument("--tokens", type=int, default=None, help="target tokens to synthesize")
    p.add_argument("--chunk-sentences", type=int, default=20000, help="sentences per chunk (default 20000)")
    a = p.parse_args()
    tokens_wanted = a.tokens or (2_000_000 if a.quick else 20_000_000)

    from fairseq.data.indexed_dataset import MMapIndexedDataset

    from fairseq_seqkd.teacher_cache.checks import target_tokens_hash
    from fairseq_seqkd.teacher_cache.format import (
        FORMAT_NAME,
        FORMAT_VERSION,
        LOGITS_DTYPE,
        ShardWriter,
        merge_shards,
        shard_path,
        topk_logits,
    )
    from fairseq_seqkd.teacher_cache.reader import TeacherCache

    rng = np.random.default_rng(0)
    lengths = np.clip(rng.gamma(2.0, 14.0, size=tokens_wanted // 20), 1, 80).astype(np.int64)
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), tokens_wanted)) + 1]
    n, ntok = len(lengths), int(lengths.sum())
    with tempfile.TemporaryDirectory(prefix="cache_checks.") as work:
        stem = os.path.join(work, "train.en-de.de")
        rng.integers(4, VOCAB, ntok, dtype=np.uint16).tofile(stem + ".bin")
        with MMapIndexedDataset.Index.writer(stem + ".idx", np.uint16) as index:
            index.write(lengths.astype(np.int32))
        tgt = MMapIndexedDataset(stem)
        dataset = types.SimpleNamespace(tgt=tgt, tgt_sizes=tgt.sizes)
        target_tokens_hash(dataset, 0, min(n, 1000))  # warm-up
        hash_s = timed(lambda: target_tokens_hash(dataset, 0, n))
        log(f"{n} sentences, {ntok} tokens: target hash {hash_s:.2f}s")

        meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "split": "train", "k": K, "ids_dtype": "uint16",
                "logits_dtype": LOGITS_DTYPE, "vocab_size": VOCAB, "teacher_checkpoint_sha256": "0" * 64,
                "target_dictionary_sha256": "0" * 64, "total_sentences": n, "num_shards": 1,
                "teacher_checkpoint": "synthetic", "shard_id": 0, "first_sentence": 0,
                "target_tokens_sha256": target_tokens_hash(dataset, 0, n)}
        pool = 1 << 20
        pool_ids = rng.integers(0, VOCAB, (pool, K), dtype=np.uint16)
        pool_logits = topk_logits(np.log(np.sort(rng.random((pool, K), dtype=np.float32) + 1e-9, axis=1)[:, ::-1]))
        writer = ShardWriter(shard_path(work, "train", 0, 1), meta, lengths)
        offsets = writer.offsets
        progress_s, write_s = [], 0.0
        for lo in range(0, n, a.chunk_sentences):
            hi = min(n, lo + a.chunk_sentences)
            t0 = time.perf_counter()
            for j in range(lo, hi):
                at = int(offsets[j]) % (pool - 80)
                m = int(lengths[j])
                writer.write(j, pool_ids[at:at + m], pool_logits[at:at + m])
            write_s += time.perf_counter() - t0
            progress_s.append(timed(lambda hi=hi: writer.record_progress(hi)))
        commit_s = timed(writer.commit)
        merge_shards(work, "train")
        cache = TeacherCache(work, "train")
        shard_bytes = cache.header["bytes"]
        log(f"shard of {shard_bytes / 1e9:.2f} GB written in {write_s:.1f}s; {len(progress_s)} progress records "
            f"(mean {1000 * np.mean(progress_s):.1f} ms); commit {commit_s:.2f}s")
        crc_warm = min(timed(cache.verify_checksums) for _ in range(2))
        scan_warm = min(timed(cache.check_values) for _ in range(2))
        cache.close()
        drop_page_cache([cache.shards[0]["path"]])
        crc_cold = timed(cache.verify_checksums)
        cache.close()
        drop_page_cache([cache.shards[0]["path"]])
        scan_cold = timed(cache.check_values)
        cache.close()

    gb = shard_bytes / 1e9
    wmt_cache_gb = WMT_TOKENS * K * 4 / 1e9
    hash_rate = ntok / hash_s / 1e6
    result = {
        "sentences": n,
        "tokens": ntok,
        "shard_gb": round(gb, 3),
        "hash_mtokens_per_s": round(hash_rate, 1),
        "progress_ms_per_chunk": round(1000 * float(np.mean(progress_s)), 2),
        "chunk_sentences": a.chunk_sentences,
        "commit_s": round(commit_s, 3),
        "crc_gb_per_s_warm": round(gb / crc_warm, 2),
        "crc_gb_per_s_cold": round(gb / crc_cold, 2),
        "scan_gb_per_s_warm": round(gb / scan_warm, 2),
        "scan_gb_per_s_cold": round(gb / scan_cold, 2),
        "wmt14_estimate_s": {
            "target_hash": round(WMT_TOKENS / 1e6 / hash_rate, 1),
            "verify_checksums_warm": round(wmt_cache_gb / (gb / crc_warm), 1),
            "value_scan_warm": round(wmt_cache_gb / (gb / scan_warm), 1),
            "training_load_check_warm": round(WMT_TOKENS / 1e6 / hash_rate + wmt_cache_gb / (gb / scan_warm), 1),
            "progress_records": round(4.5e6 / a.chunk_sentences * float(np.mean(progress_s)), 1),
        },
        "quick": a.quick,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
