"""The data path at WMT14 scale on a CPU: time and peak memory of every stage on a synthetic corpus.

The paper's setting is WMT14 En-De: 4.5 million pairs, about 135 million target tokens, a 32k
joint vocabulary. This synthesizes a corpus of that shape and measures each stage in a child
process of its own (peak RSS: the child's own high-water mark):

- ``prepare``: ``fairseq-seqkd prepare`` on raw text (synthetic words, WMT-like lengths, the
  two sides' lengths correlated): seconds and peak RSS at ``--prepare-sentences`` pairs. By
  default 1M pairs: sentencepiece trains on a sample of at most 2M sentences (2M lines is 1M
  pairs), and everything else streams in chunks, so the peak memory at 1M pairs is the full
  corpus's, and the time to 4.5M is extrapolated (sentencepiece's training once, reading and
  encoding in proportion: ``prepare_seconds_full_estimate``).
- ``extract``: ``extract_corpus`` (``fairseq-seqkd extract``) over 8 fairseq-generate shard files
  (sentence ids in the shuffled order fairseq writes them) of a binarized WMT-like data folder,
  both made by ``benchmarks/synth.py``, at two sizes, each in a fresh child as
  ``benchmarks/extract_speed.py`` runs it (the call timed, not the imports): sentences/s and
  peak RSS at the larger size, and the RSS growth per million sentences between the two.
- ``cache``: the Word-KD cache written as ``fairseq-seqkd cache`` writes it (8 shards; each in
  chunks of contiguous sentences, within a chunk in fairseq's length-sorted batch order, a
  progress record per chunk, checksums at commit) with ``teacher_cache.ShardWriter``, synthetic
  top-8 ids and probabilities instead of a teacher; then read back through the training reader
  (``TeacherCache`` under ``TeacherCacheDataset``: ``__getitem__`` and ``collater``) in shuffled
  8k-token batches. ``cache_read_ms_per_batch`` is what the cache adds to loading a batch: the
  wrapper's time minus the plain language-pair dataset's on the same batch, interleaved; warm
  (page cache hot) and cold (each timed batch after ``posix_fadvise(DONTNEED)`` on every shard
  file, the memory maps dropped first; the binarized data itself stays warm).
- ``online_kd``: online Word-KD's extra peak memory over label-smoothed cross-entropy in units
  of tokens x vocabulary x 4 bytes (``benchmarks/online_kd_memory.py``).

``targets_met`` compares with the data path's limits (full size): extract peak <= 1024 MB, growth
<= 50 MB per million, >= 20,000 sentences/s, warm cache read <= 5 ms per batch, online KD
extra <= 2.0. ``--quick``: the same keys at 200k sentences (extract at 50k and 200k; prepare
at 20k pairs, where sentencepiece's training dominates), about 2 minutes on 2 idle cores.
Every stage also reports its CPU seconds: on shared cores the wall time measures the neighbours.

Disk: the full-size cache is about 135M tokens x 8 x (2 + 2) bytes = 4.3 GB, plus the data
(about 2 GB) and extract's output; with less free space than that, ``--cache-sentences``
limits the cache part (done automatically, and said in the JSON).

Prints progress on stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from memstats import drop_page_cache  # noqa: E402

FULL = 4_500_000
QUICK = 200_000
VOCAB = 32000
TOPK = 8
CACHE_SHARDS = 8
GEN_SHARDS = 8
READ_MAX_TOKENS = 8192  # a training batch (--max-tokens 8192 in the WMT recipe)
WRITE_MAX_TOKENS = 4000  # fairseq-seqkd cache's default --max-tokens
CHUNK_SENTENCES = 20000  # fairseq-seqkd cache's default --chunk-sentences
SPM_SAMPLE = 2_000_000  # sentences sentencepiece trains on (prepare's --input-sentence-size)
TARGETS = {"extract_peak_rss_mb": ("<=", 1024), "extract_rss_mb_per_million": ("<=", 50),
           "extract_sentences_per_s": (">=", 20000), "cache_read_ms_per_batch": ("<=", 5.0),
           "online_kd_extra_bytes_over_nv4": ("<=", 2.0)}
MB = 2**20


def log(msg: str) -> None:
    print(f"scale: {msg}", file=sys.stderr, flush=True)


def run_measured(cmd: list[str], log_path: str, env: dict | None = None) -> dict:
    """Run ``cmd`` as a child; its wall and CPU seconds, peak RSS (own high-water mark), last stdout line.

    CPU seconds (user + system) say what the stage costs when the shared cores are busy elsewhere.
    """
    out_path = log_path + ".out"
    stamped: list[tuple[float, str]] = []  # (seconds since start, stderr line): where the time went
    with open(out_path, "w") as out, open(log_path, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, text=True, errors="replace",
                                env={**os.environ, **(env or {})})

        def copy() -> None:
            for line in proc.stderr:
                stamped.append((time.perf_counter() - t0, line.rstrip("\n")))
                err.write(f"{stamped[-1][0]:9.2f} {line}")

        reader = threading.Thread(target=copy)
        reader.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        reader.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        with open(log_path, errors="replace") as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}); {log_path}:\n{tail}")
    with open(out_path, errors="replace") as f:
        lines = f.read().strip().splitlines()
    return {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "last_line": lines[-1] if lines else "", "stderr": stamped}


def cli(*args: str) -> list[str]:
    """The ``fairseq-seqkd`` command line in this interpreter."""
    return [sys.executable, "-m", "fairseq_seqkd.cli", *args]


# ----------------------------------------------------------------------------- prepare


def write_raw_pairs(prefix: str, src_lang: str, tgt_lang: str, n: int, seed: int, n_words: int = 100_000) -> None:
    """PREFIX.SRC / PREFIX.TGT: n pairs of lines of Zipf-distributed synthetic words (numpy, no Python loop).

    Words per sentence as ``synth``'s tokens per sentence, a little fewer (about 1.1 pieces a word
    come out of sentencepiece here), the target's near the source's.
    """
    from synth import sentence_lengths

    rng = np.random.default_rng(seed)
    width = 16  # a word of at most 14 letters, its separator, one spare
    table = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)[rng.integers(0, 26, (n_words, width))]
    word_len = np.clip(rng.poisson(5.0, n_words) + 1, 1, width - 2)
    cdf = np.cumsum(1.0 / np.arange(1, n_words + 1) ** 1.05)
    cdf /= cdf[-1]
    files = [open(f"{prefix}.{lang}", "wb") for lang in (src_lang, tgt_lang)]
    try:
        for lo in range(0, n, 100_000):
            src = sentence_lengths(min(100_000, n - lo), rng, mean=25.0, longest=200)
            tgt = np.maximum(1, np.rint(src * rng.uniform(0.85, 1.25, len(src)))).astype(np.int64)
            for f, k in zip(files, (src, tgt)):
                ids = np.searchsorted(cdf, rng.random(int(k.sum())))
                size = word_len[ids] + 1
                rows = table[ids]
                rows[np.arange(len(ids)), size - 1] = ord(" ")
                last = np.cumsum(k) - 1
                rows[last, size[last] - 1] = ord("\n")
                f.write(rows[np.arange(width)[None, :] < size[:, None]].tobytes())
    finally:
        for f in files:
            f.close()


def stage_prepare(work: str, n: int, full: int) -> dict:
    """``fairseq-seqkd prepare`` on n synthetic raw pairs (valid and test: 3,000 each).

    From 1M pairs on (2M lines, sentencepiece's sample) the peak memory is the full corpus's and
    the time to ``full`` pairs is extrapolated (``prepare_seconds_full_estimate``).
    """
    raw = os.path.join(work, "raw")
    os.makedirs(raw, exist_ok=True)
    t0 = time.perf_counter()
    for split, size, seed in (("train", n, 1), ("valid", 3000, 2), ("test", 3000, 3)):
        write_raw_pairs(os.path.join(raw, split), "en", "de", size, seed)
    synth_s = time.perf_counter() - t0
    out = os.path.join(work, "prepared")
    r = run_measured(cli("prepare", out, "--src", "en", "--tgt", "de",
                         *[x for s in ("train", "valid", "test")
                           for x in (f"--{s}", os.path.join(raw, f"{s}.en"), os.path.join(raw, f"{s}.de"))],
                         "--threads", "2"), os.path.join(work, "prepare.log"))
    summary = json.loads(r["last_line"])
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(raw, ignore_errors=True)
    # sentencepiece's training: from its start line to the next line (the first encoded chunk)
    starts = [t for t, line in r["stderr"] if "training sentencepiece" in line]
    after = [t for t, _ in r["stderr"] if starts and t > starts[0]]
    spm_s = (after[0] - starts[0]) if after else None
    result = {"prepare_sentences": n, "prepare_seconds": round(r["seconds"], 1),
              "prepare_cpu_seconds": round(r["cpu_seconds"], 1),
              "prepare_peak_rss_mb": round(r["peak_rss_mb"], 1), "prepare_spm_train_seconds":
                  None if spm_s is None else round(spm_s, 1),
              "prepare_pieces": summary["pieces"], "prepare_kept": summary["splits"]["train"]["kept"],
              "prepare_synth_seconds": round(synth_s, 1)}
    if spm_s is not None and 2 * n >= SPM_SAMPLE and n < full:
        # sentencepiece already trained on its full sample: only reading and encoding grow with n
        result["prepare_seconds_full_estimate"] = round(spm_s + (r["seconds"] - spm_s) * full / n)
    return result


# ----------------------------------------------------------------------------- extract


def stage_extract(work: str, sizes: list[int]) -> dict:
    """``extract_speed.measure_extract`` (a fresh child; imports not timed) of 8 shards at each size.

    The last size's data folder is kept for the cache stage.
    """
    import synth
    from extract_speed import measure_extract

    runs, data = [], None
    for n in sizes:
        folder = os.path.join(work, f"synth{n}")
        t0 = time.perf_counter()
        made = synth.synthesize(folder, n, vocab=VOCAB, num_shards=GEN_SHARDS, seed=1)
        synth_s = time.perf_counter() - t0
        out = os.path.join(work, f"extracted{n}")
        r = measure_extract(made["generated"], made["data"], out, GEN_SHARDS)
        if r["written"] != n:
            raise RuntimeError(f"extract wrote {r['written']} of {n} sentences")
        runs.append({"sentences": n, "seconds": round(r["seconds"], 1), "cpu_seconds": round(r["cpu_seconds"], 1),
                     "peak_rss_mb": round(r["peak_rss_mb"], 1), "import_rss_mb": round(r["import_rss_mb"], 1),
                     "sentences_per_s": round(n / r["seconds"]), "synth_seconds": round(synth_s, 1)})
        log(f"extract {n:,} sentences: {r['seconds']:.1f}s ({r['cpu_seconds']:.1f}s CPU), peak RSS "
            f"{r['peak_rss_mb']:.0f} MB, {r['import_rss_mb']:.0f} MB after imports (synthesis {synth_s:.1f}s)")
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(made["generated"], ignore_errors=True)
        if data is not None:  # the smaller size's folder: no longer needed
            shutil.rmtree(os.path.dirname(data), ignore_errors=True)
        data = made["data"]
    small, big = runs[0], runs[-1]
    growth = (big["peak_rss_mb"] - small["peak_rss_mb"]) / ((big["sentences"] - small["sentences"]) / 1e6)
    return {"extract_sentences_per_s": big["sentences_per_s"], "extract_peak_rss_mb": big["peak_rss_mb"],
            "extract_rss_mb_per_million": round(growth, 1), "extract_seconds": big["seconds"],
            "extract_cpu_seconds": big["cpu_seconds"], "extract_sizes": sizes, "extract_runs": runs, "_data": data}


# ----------------------------------------------------------------------------- cache (child stages)


def _pool(rng: np.random.Generator, tokens: int, k: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Plausible top-k rows: distinct-ish ids, and the logits the cache stores of probabilities sorted down."""
    from fairseq_seqkd.teacher_cache.format import topk_logits

    ids = rng.integers(4, vocab, (tokens, k)).astype(np.uint16)
    p = rng.dirichlet(np.ones(k + 1) * 0.5, tokens)[:, :k]
    with np.errstate(divide="ignore"):  # a probability of 0 is a logit of -inf
        return ids, topk_logits(np.log(-np.sort(-p, axis=1)))


def _load(data: str):
    from fairseq_seqkd.fairseq_glue import load_split, setup_translation_task

    task = setup_translation_task(data)
    return task, load_split(task, "train")


def _batches(dataset, order: np.ndarray, lo: int, hi: int, max_tokens: int) -> list[np.ndarray]:
    """fairseq's batches (batch_by_size, no sentence dropped) over sentence ids [lo, hi) in ``order``."""
    indices = order[(order >= lo) & (order < hi)]
    return dataset.batch_by_size(indices, max_tokens=max_tokens, required_batch_size_multiple=1)


def child_cache_write(data: str, out: str, limit: int) -> dict:
    """Write the cache of the first ``limit`` sentences of ``data``'s train split as the cache stage does."""
    from fairseq_seqkd.fairseq_glue import batch_order
    from fairseq_seqkd.layout import shard_range
    from fairseq_seqkd.teacher_cache.checks import target_lengths, target_tokens_hash
    from fairseq_seqkd.teacher_cache.format import (
        FORMAT_NAME,
        FORMAT_VERSION,
        LOGITS_DTYPE,
        ShardWriter,
        dictionary_hash,
        ids_dtype_for,
        merge_shards,
        shard_path,
    )

    t0 = time.perf_counter()
    task, dataset = _load(data)
    tgt_dict = task.target_dictionary
    n = min(limit, len(dataset))
    lengths = target_lengths(dataset)
    order = batch_order(dataset)
    identity = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "split": "train", "k": TOPK,
                "ids_dtype": ids_dtype_for(len(tgt_dict)), "logits_dtype": LOGITS_DTYPE, "vocab_size": len(tgt_dict),
                "teacher_checkpoint_sha256": "0" * 64, "target_dictionary_sha256": dictionary_hash(tgt_dict),
                "total_sentences": n, "num_shards": CACHE_SHARDS}
    pool_ids, pool_logits = _pool(np.random.default_rng(0), 1 << 20, TOPK, len(tgt_dict))
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    at = 0
    for i in range(CACHE_SHARDS):
        first, end = shard_range(n, CACHE_SHARDS, i)
        meta = {**identity, "teacher_checkpoint": "synthetic", "shard_id": i, "first_sentence": first,
                "target_tokens_sha256": target_tokens_hash(dataset, first, end)}
        writer = ShardWriter(shard_path(out, "train", i, CACHE_SHARDS), meta, lengths[first:end])
        try:
            for lo in range(first, end, CHUNK_SENTENCES):
                hi = min(end, lo + CHUNK_SENTENCES)
                for batch in _batches(dataset, order, lo, hi, WRITE_MAX_TOKENS):
                    for sid in batch.tolist():
                        m = int(lengths[sid])
                        if at + m > len(pool_ids):
                            at = 0
                        writer.write(sid - first, pool_ids[at:at + m], pool_logits[at:at + m])
                        at += m
                writer.record_progress(hi - first)
            writer.commit()
        finally:
            writer.close()
    header = merge_shards(out, "train")
    write_s = time.perf_counter() - t0
    return {"cache_sentences": n, "cache_tokens": header["num_tokens"], "cache_bytes": header["bytes"],
            "cache_write_seconds": round(write_s, 1), "cache_setup_seconds": round(setup_s, 1)}


def child_cache_read(data: str, out: str, warm_batches: int, cold_batches: int) -> dict:
    """ms per 8k-token batch that the cache adds to fairseq's __getitem__ + collater, warm and cold."""
    from fairseq_seqkd.fairseq_glue import batch_order
    from fairseq_seqkd.teacher_cache.dataset import TeacherCacheDataset
    from fairseq_seqkd.teacher_cache.reader import TeacherCache

    task, dataset = _load(data)
    cache = TeacherCache(out, "train")
    wrapped = TeacherCacheDataset(dataset, cache, task.target_dictionary.pad())
    batches = _batches(dataset, batch_order(dataset), 0, len(cache), READ_MAX_TOKENS)
    rng = np.random.default_rng(0)
    picked = [batches[i] for i in rng.permutation(len(batches))[:warm_batches + cold_batches]]
    warm, cold = picked[:warm_batches], picked[warm_batches:]
    files = [os.path.join(out, s["file"]) for s in cache.header["shards"]]

    def load(ds, batch) -> float:
        t0 = time.perf_counter()
        ds.collater([ds[int(i)] for i in batch])
        return time.perf_counter() - t0

    for batch in warm:  # warm the page cache and the data's own pages
        load(wrapped, batch)
    plain_ms, wrapped_ms, tokens = [], [], []
    for j, batch in enumerate(warm):
        # alternate which goes first: neither profits from the other's cache lines every time
        first, second = (dataset, wrapped) if j % 2 == 0 else (wrapped, dataset)
        t_first, t_second = load(first, batch), load(second, batch)
        t_plain, t_wrapped = (t_first, t_second) if first is dataset else (t_second, t_first)
        plain_ms.append(t_plain * 1e3)
        wrapped_ms.append(t_wrapped * 1e3)
        tokens.append(int(dataset.tgt_sizes[batch].sum()))
    cold_extra = []
    for batch in cold:
        load(dataset, batch)  # the data's own pages warm: only the cache is cold
        t_plain = load(dataset, batch)
        cache.close()
        gc.collect()
        drop_page_cache(files)
        cold_extra.append((load(wrapped, batch) - t_plain) * 1e3)
    extra = [w - p for w, p in zip(wrapped_ms, plain_ms)]
    return {"cache_read_ms_per_batch": round(statistics.mean(extra), 3),
            "cache_read_ms_per_batch_median": round(statistics.median(extra), 3),
            "cache_read_ms_per_batch_cold": round(statistics.mean(cold_extra), 2) if cold_extra else None,
            "cache_read_ms_per_batch_cold_median": round(statistics.median(cold_extra), 2) if cold_extra else None,
            "batch_load_ms_without_cache": round(statistics.mean(plain_ms), 3),
            "batch_load_ms_with_cache": round(statistics.mean(wrapped_ms), 3),
            "read_batches_warm": len(warm), "read_batches_cold": len(cold),
            "read_batch_target_tokens": round(statistics.mean(tokens)), "read_max_tokens": READ_MAX_TOKENS}


def stage_cache(work: str, data: str, limit: int, warm_batches: int, cold_batches: int) -> dict:
    """Write the cache (one child), evict it from the page cache, read it back (another child)."""
    out = os.path.join(work, "cache")
    me = [sys.executable, os.path.abspath(__file__)]
    w = run_measured(me + ["--child", "cache-write", data, out, str(limit)], os.path.join(work, "cache_write.log"))
    written = json.loads(w["last_line"])
    log(f"cache written: {written['cache_sentences']:,} sentences, {written['cache_bytes'] / 2**30:.2f} GiB in "
        f"{written['cache_write_seconds']}s, peak RSS {w['peak_rss_mb']:.0f} MB")
    drop_page_cache([os.path.join(out, f) for f in os.listdir(out) if f.endswith(".bin")])
    r = run_measured(me + ["--child", "cache-read", data, out, str(warm_batches), str(cold_batches)],
                     os.path.join(work, "cache_read.log"))
    read = json.loads(r["last_line"])
    log(f"cache read: {read['cache_read_ms_per_batch']} ms per batch warm, {read['cache_read_ms_per_batch_cold']} "
        f"cold, peak RSS {r['peak_rss_mb']:.0f} MB")
    shutil.rmtree(out, ignore_errors=True)
    return {**written, **read, "cache_write_peak_rss_mb": round(w["peak_rss_mb"], 1),
            "cache_read_peak_rss_mb": round(r["peak_rss_mb"], 1),
            "cache_write_cpu_seconds": round(w["cpu_seconds"], 1), "cache_read_cpu_seconds": round(r["cpu_seconds"], 1),
            "cache_write_tokens_per_s": round(written["cache_tokens"] / written["cache_write_seconds"])}


# ----------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"{QUICK:,} sentences, under 2 minutes on 2 cores")
    p.add_argument("--sentences", type=int, default=None, help=f"corpus size (default {FULL:,}; quick {QUICK:,})")
    p.add_argument("--small-sentences", type=int, default=None,
                   help="the smaller extract size for the RSS growth (default 1,000,000; quick 50,000)")
    p.add_argument("--prepare-sentences", type=int, default=None,
                   help="pairs for the prepare stage (default 1,000,000: sentencepiece's full 2M-line sample, "
                        "the time to the corpus size extrapolated; quick 20,000); 0 skips it")
    p.add_argument("--cache-sentences", type=int, default=None,
                   help="sentences in the cache stage (default all, or what the free disk allows)")
    p.add_argument("--read-batches", type=int, default=None, help="warm batches timed (default 300, quick 30)")
    p.add_argument("--cold-batches", type=int, default=None, help="cold batches timed (default 50, quick 8)")
    p.add_argument("--kd-tokens", type=int, default=None, help="tokens of the online KD case (default 2048, "
                                                                "quick 1024)")
    p.add_argument("--workdir", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        kind, *args = a.child
        if kind == "cache-write":
            print(json.dumps(child_cache_write(args[0], args[1], int(args[2]))))
        else:
            print(json.dumps(child_cache_read(args[0], args[1], int(args[2]), int(args[3]))))
        return 0

    start = time.perf_counter()
    n = a.sentences or (QUICK if a.quick else FULL)
    small = a.small_sentences or (50_000 if a.quick else 1_000_000)
    prep_n = a.prepare_sentences if a.prepare_sentences is not None else (20_000 if a.quick else min(n, 1_000_000))
    work = a.workdir or tempfile.mkdtemp(prefix="scale.")
    os.makedirs(work, exist_ok=True)
    result: dict = {"sentences": n, "quick": a.quick, "vocab": VOCAB}
    stages: dict[str, float] = {}
    try:
        # disk: the cache (32 bytes a token at k=8, ~30 target tokens a sentence) and the data
        free = shutil.disk_usage(work).free
        per_sentence = 30 * TOPK * 4 + 8
        limit = a.cache_sentences or n
        room = int((free - 3 * 2**30 - n * 450) / per_sentence)
        result["cache_limited_by_disk"] = a.cache_sentences is None and room < limit
        if result["cache_limited_by_disk"]:
            limit = max(room, 0)
            log(f"only {free / 2**30:.1f} GiB free in {work}: the cache stage covers {limit:,} sentences")

        if prep_n:
            t0 = time.perf_counter()
            result.update(stage_prepare(work, prep_n, n))
            stages["prepare"] = time.perf_counter() - t0
            log(f"prepare {prep_n:,} pairs: {result['prepare_seconds']}s, peak RSS "
                f"{result['prepare_peak_rss_mb']:.0f} MB")

        t0 = time.perf_counter()
        ex = stage_extract(work, [small, n])
        data = ex.pop("_data")
        result.update(ex)
        stages["extract"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        warm_b = a.read_batches or (30 if a.quick else 300)
        cold_b = a.cold_batches if a.cold_batches is not None else (8 if a.quick else 50)
        result.update(stage_cache(work, data, limit, warm_b, cold_b))
        stages["cache"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        from online_kd_memory import measure

        # a temperature makes more (tokens x vocabulary) buffers: the worst case counts
        temperatures = (1.0,) if a.quick else (1.0, 2.0)
        cases = [measure(a.kd_tokens or (1024 if a.quick else 2048), VOCAB, t) for t in temperatures]
        result["online_kd_extra_bytes_over_nv4"] = max(c["online_kd_extra_bytes_over_nv4"] for c in cases)
        result["online_kd"] = cases
        stages["online_kd"] = time.perf_counter() - t0
        log(f"online KD: {result['online_kd_extra_bytes_over_nv4']} x N x V x 4 bytes over label-smoothed CE "
            f"(temperatures {', '.join(map(str, temperatures))})")
    finally:
        if not a.keep and not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    result["targets_met"] = {key: (result[key] <= limit_ if op == "<=" else result[key] >= limit_)
                             for key, (op, limit_) in TARGETS.items()}
    result["targets"] = {key: f"{op} {limit_}" for key, (op, limit_) in TARGETS.items()}
    result["stage_seconds"] = {k: round(v, 1) for k, v in stages.items()}
    result["seconds"] = round(time.perf_counter() - start, 1)
    if a.keep or a.workdir:
        result["workdir"] = work
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
