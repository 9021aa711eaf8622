"""Teacher-cache build: bytes per token on disk, and build throughput vs a bare teacher forward pass.

The cache should be compact (ids uint16 + logits float16: 4 bytes per entry, so 32 bytes per
token at k=8, plus offsets and headers) and its build should run at about the speed of the
teacher's forward pass: top-k, float16 conversion and the memory-mapped writes must not
dominate.

Setup:
- data and teacher as in ``word_kd_speed.py``: the toy corpus binarized in process; a seeded
  random-weight transformer 4+4 layers, d=256 (ffn 1024, 4 heads) saved as a fairseq checkpoint.
- ``build_tokens_per_s``: target tokens of the train split / wall time of the whole
  ``build_cache`` call (checkpoint load and hash, dataset load, batching, teacher, top-k,
  writing, header), into a fresh folder each time.
- ``teacher_forward_tokens_per_s``: the same tokens / wall time of iterating the same batches
  (same iterator, same ``--max-tokens``) and running only ``teacher(**net_input)`` under no_grad.
- the two alternate, ``--repeats`` pairs (forward then build), after a warm-up; the
  cores are shared and their speed drifts by 2x within minutes, so each pair gives one ratio
  (adjacent in time, so under about the same load) and the median ratio counts; the tokens/s
  figures are tokens / median time. One torch thread.
- ``bytes_per_token``: every file of the cache folder (shards and JSON header) / target tokens.

Prints progress on stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import torch
from word_kd_speed import TEACHER, log, prepare_data, save_random_checkpoint

TARGETS = {"bytes_per_token": 40.0, "build_over_forward": 0.8}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small run, under 60 s on 2 cores")
    p.add_argument("--train-size", type=int, default=None, help="toy training pairs")
    p.add_argument("--topk", type=int, default=8, help="k of the cache (default 8)")
    p.add_argument("--max-tokens", type=int, default=4000, help="tokens per teacher batch (default 4000)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs of each")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    train_size = a.train_size or (800 if a.quick else 4000)
    repeats = a.repeats or (3 if a.quick else 5)
    start = time.perf_counter()

    import fairseq_seqkd
    from fairseq_seqkd.fairseq_glue import load_split, load_teacher_for_data, teacher_batches
    from fairseq_seqkd.teacher_cache.build import build_cache

    fairseq_seqkd.register()  # translation_kd, word_kd, safe globals

    with tempfile.TemporaryDirectory(prefix="cache_build.") as work:
        data = prepare_data(work, train_size)
        teacher_path = save_random_checkpoint(data, TEACHER, os.path.join(work, "teacher.pt"))
        task, teacher, _ = load_teacher_for_data(data, teacher_path)
        dataset = load_split(task, "train")
        log(f"data and teacher ready after {time.perf_counter() - start:.1f}s")

        def forward_pass(max_batches: int | None = None) -> tuple[float, int]:
            t0, tokens = time.perf_counter(), 0
            for i, sample in enumerate(teacher_batches(task, teacher, dataset, 0, len(dataset), a.max_tokens,
                                                       None)):
                if i == max_batches:
                    break
                with torch.no_grad():
                    teacher(**sample["net_input"])
                tokens += sample["ntokens"]
            return time.perf_counter() - t0, tokens

        def build() -> tuple[float, dict, int]:
            out = os.path.join(work, "cache")
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            result = build_cache(data, teacher_path, out, split="train", topk=a.topk, max_tokens=a.max_tokens,
                                 progress=False)
            seconds = time.perf_counter() - t0
            size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
            return seconds, result["header"], size

        forward_pass(max_batches=2)  # warm-up
        fwd, bld = [], []
        for r in range(repeats):
            fwd.append(forward_pass())
            bld.append(build())
            log(f"run {r + 1}/{repeats}: forward {fwd[-1][0]:.2f}s, build {bld[-1][0]:.2f}s")

    tokens = fwd[0][1]
    header, size = bld[-1][1], bld[-1][2]
    if header["num_tokens"] != tokens or header["num_sentences"] != len(dataset):
        raise SystemExit(f"cache holds {header['num_sentences']} sentences / {header['num_tokens']} tokens; "
                         f"the split has {len(dataset)} / {tokens}")
    forward_tps = tokens / statistics.median(s for s, _ in fwd)
    build_tps = header["num_tokens"] / statistics.median(s for s, _, _ in bld)
    ratio = statistics.median(f[0] / b[0] for f, b in zip(fwd, bld))
    result = {
        "topk": header["k"],
        "bytes_per_token": round(size / header["num_tokens"], 2),
        "build_tokens_per_s": round(build_tps, 1),
        "teacher_forward_tokens_per_s": round(forward_tps, 1),
        "build_over_forward": round(ratio, 3),
        "build_over_forward_per_pair": [round(f[0] / b[0], 3) for f, b in zip(fwd, bld)],
        "targets": {"bytes_per_token": f"<= {TARGETS['bytes_per_token']} at k=8",
                    "build_over_forward": f">= {TARGETS['build_over_forward']}"},
        "sentences": header["num_sentences"],
        "tokens": header["num_tokens"],
        "cache_bytes": size,
        "ids_dtype": header["ids_dtype"],
        "logits_dtype": header["logits_dtype"],
        "vocab": header["vocab_size"],
        "teacher": TEACHER,
        "max_tokens": a.max_tokens,
        "threads": torch.get_num_threads(),
        "quick": a.quick,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
