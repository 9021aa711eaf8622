"""``fairseq-seqkd extract`` at scale: sentences/s, peak RSS, and RSS growth per million sentences.

Setup: for each size, ``synth.synthesize`` writes a WMT-shaped corpus (32k sentencepiece-like
vocabulary, about 28 tokens a sentence with a long tail, binarized train split) and its
translation as 8 fairseq-generate shard files (sentences in shuffled batch order, stdout only).
``extract_corpus`` then runs in a fresh child process (one thread), which reports the time of the
call itself (imports and interpreter start-up excluded; wall and CPU time, as the cores may be
shared), its RSS after the imports and its peak
RSS (``VmHWM``, which counts the file pages it maps as well as its own memory).
``rss_mb_per_million``: (peak at the largest size - peak at the smallest) / (difference in
millions of sentences). Issue 15's limits at 4.5M sentences: peak <= 1024 MB, growth <= 50 MB per
million, >= 20,000 sentences/s.

Prints progress on stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import synth  # noqa: E402

_CHILD = """
import json, sys, time
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
from fairseq_seqkd.seq_kd.corpus import extract_corpus
base = rss("VmRSS")
t, cpu = time.perf_counter(), time.process_time()
r = extract_corpus([sys.argv[1]], sys.argv[2], sys.argv[3], split="train", num_shards=int(sys.argv[4]),
                   copy_splits=False)
seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": rss("VmHWM"), "import_rss_mb": base,
                  "written": r["written"]}))
"""


def measure_extract(generated: str, data: str, out: str, num_shards: int = 8) -> dict:
    """Run ``extract_corpus`` in a child process (one thread); {seconds, peak_rss_mb, import_rss_mb, written}."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, generated, data, out, str(num_shards)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"extract failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="corpus sizes, two or more for the growth per million (default 200,000 and 1,000,000)")
    p.add_argument("--quick", action="store_true", help="sizes 50,000 and 200,000 (well under a minute)")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--work", default=None, help="working folder (default: a temporary one, removed)")
    args = p.parse_args()
    args.sizes = args.sizes or ([50_000, 200_000] if args.quick else [200_000, 1_000_000])
    work = args.work or tempfile.mkdtemp(prefix="extract_speed.")
    runs = []
    try:
        for n in sorted(args.sizes):
            folder = os.path.join(work, f"synth{n}")
            t0 = time.perf_counter()
            made = synth.synthesize(folder, n, vocab=args.vocab, num_shards=args.shards, seed=1)
            synth_s = time.perf_counter() - t0
            gen_mb = sum(os.path.getsize(f) for f in made["files"]) / 2 ** 20
            r = measure_extract(made["generated"], made["data"], os.path.join(folder, "out"), args.shards)
            assert r["written"] == n
            runs.append({"sentences": n, "seconds": round(r["seconds"], 1),
                         "sentences_per_s": round(n / r["seconds"]), "cpu_seconds": round(r["cpu_seconds"], 1),
                         "sentences_per_cpu_s": round(n / r["cpu_seconds"]), "peak_rss_mb": round(r["peak_rss_mb"], 1),
                         "import_rss_mb": round(r["import_rss_mb"], 1), "synth_seconds": round(synth_s, 1),
                         "generation_mb": round(gen_mb)})
            print(f"{n:,} sentences: synthesized in {synth_s:.1f}s ({gen_mb:.0f} MB of generation output); "
                  f"extract {r['seconds']:.1f}s = {n / r['seconds']:,.0f} sentences/s"
                  f" ({r['cpu_seconds']:.1f}s of CPU), "
                  "peak RSS "
                  f"{r['peak_rss_mb']:.0f} MB (after imports {r['import_rss_mb']:.0f} MB)", file=sys.stderr)
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    small, big = runs[0], runs[-1]
    growth = None
    if big["sentences"] > small["sentences"]:
        growth = round((big["peak_rss_mb"] - small["peak_rss_mb"]) / ((big["sentences"] - small["sentences"]) / 1e6), 1)
    print(json.dumps({"extract_sentences_per_s": big["sentences_per_s"], "extract_peak_rss_mb": big["peak_rss_mb"],
                      "extract_rss_mb_per_million": growth, "runs": runs}))


if __name__ == "__main__":
    main()
