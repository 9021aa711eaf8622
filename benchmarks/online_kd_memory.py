"""Extra peak memory of online Word-KD with the full vocabulary, over label-smoothed cross-entropy.

What is measured: the loss alone, forward and backward, on CPU. Given student logits (N, V)
(a leaf that requires grad), the student's log-probs ``log_softmax(logits)`` and a teacher
distribution over the whole vocabulary (N, V) (what ``--teacher-path`` with ``--kd-topk 0``
gives), all made before the measurement starts, one case runs

- ``ls``: fairseq's ``label_smoothed_nll_loss`` (epsilon 0.1), ``.backward()``;
- ``kd``: ``fairseq_seqkd.criterions.word_kd.word_kd_loss`` (alpha 0.5, epsilon 0.1, the
  given temperature), ``.backward()``.

Both backward passes run through the log-softmax into ``logits.grad``, so both include the
gradient buffers that any training step has. The figure is

    online_kd_extra_bytes_over_nv4 = (peak_kd - peak_ls) / (N * V * 4)

i.e. how many float32 (tokens x vocabulary) buffers the KD term costs on top of plain
label-smoothed cross-entropy (the limit: 2.0).

How peak memory is measured: each case runs in a fresh child process (one torch thread), so
no allocator cache or earlier case leaks into it. After the inputs are made, the child resets
the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs`` resets ``VmHWM`` to the
current RSS, Linux >= 4.0), reads ``VmRSS`` as the baseline, runs the loss forward and
backward, and reports ``VmHWM - baseline``: the true high-water mark of resident memory
during the loss, freed temporaries included. Buffers of this size are ``mmap``-ed by glibc,
so they count when touched and are returned when freed; smaller ones (the chunked KD's
per-chunk temporaries, a few MiB) may stay in glibc's heap after they are freed, which makes
the figure vary by up to about 0.25 between runs at 2048 x 32000 (what torch itself holds, as
a GPU's caching allocator would count it, is the lower end). Where ``clear_refs`` cannot be written
the child falls back to ``ru_maxrss``, which then also counts the input setup (reported in
the JSON as ``method``).

``measure_online_kd_extra(tokens, vocab, temperature)`` is the importable form (used by
``benchmarks/scale.py``). Prints progress on stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from memstats import reset_peak, status_kib

TARGET = 2.0  # at most 2 x tokens x vocabulary x 4 bytes above label-smoothed CE
EPSILON = 0.1
ALPHA = 0.5
PAD = 1


def _child(kind: str, tokens: int, vocab: int, temperature: float) -> dict:
    """Run one case in this (fresh) process; return its peak bytes above the inputs."""
    import torch
    import torch.nn.functional as F
    from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss

    from fairseq_seqkd.criterions.word_kd import word_kd_loss

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(tokens, vocab, generator=g).requires_grad_()
    lprobs = F.log_softmax(logits, dim=-1)
    with torch.no_grad():
        teacher = torch.randn(tokens, vocab, generator=g).mul_(2.0).softmax(dim=-1)
    target = torch.randint(2, vocab, (tokens,), generator=g)
    target[-tokens // 16:] = PAD  # some padding, as in a real batch
    exact = reset_peak()
    base = status_kib("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if kind == "ls":
        loss, _ = label_smoothed_nll_loss(lprobs, target, EPSILON, ignore_index=PAD, reduce=True)
    else:
        loss, _, _ = word_kd_loss(lprobs, None, teacher, target, PAD, ALPHA, temperature, EPSILON)
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_bytes": (peak - base) * 1024, "seconds": seconds, "loss": float(loss),
            "method": "VmHWM after clear_refs" if exact else "ru_maxrss (includes setup)"}


def run_case(kind: str, tokens: int, vocab: int, temperature: float) -> dict:
    """One case in a fresh child process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind, str(tokens), str(vocab),
                           str(temperature)], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {kind} {tokens}x{vocab} T={temperature} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_online_kd_extra(tokens: int, vocab: int, temperature: float = 1.0) -> float:
    """(peak of KD loss fwd+bwd - peak of label-smoothed CE fwd+bwd) / (tokens * vocab * 4)."""
    return measure(tokens, vocab, temperature)["online_kd_extra_bytes_over_nv4"]


def measure(tokens: int, vocab: int, temperature: float, ls: dict | None = None) -> dict:
    """Both cases of one size (``ls``: the baseline's run_case, if made); the extra memory."""
    ls = ls or run_case("ls", tokens, vocab, temperature)
    kd = run_case("kd", tokens, vocab, temperature)
    nv4 = tokens * vocab * 4
    return {"tokens": tokens, "vocab": vocab, "temperature": temperature,
            "ls_peak_over_nv4": round(ls["peak_bytes"] / nv4, 3),
            "kd_peak_over_nv4": round(kd["peak_bytes"] / nv4, 3),
            "online_kd_extra_bytes_over_nv4": round((kd["peak_bytes"] - ls["peak_bytes"]) / nv4, 3),
            "kd_extra_mb": round((kd["peak_bytes"] - ls["peak_bytes"]) / 2**20, 1),
            "ls_seconds": round(ls["seconds"], 3), "kd_seconds": round(kd["seconds"], 3),
            "method": kd["method"]}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, tokens, vocab, temperature = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
        print(json.dumps(_child(kind, tokens, vocab, temperature)))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes (about 10 s on 2 cores)")
    p.add_argument("--tokens", type=int, default=0, help="tokens per batch (default 2048, quick 1024)")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary size (default 32000)")
    p.add_argument("--temperatures", default="1,2", help="comma-separated KD temperatures (default 1,2)")
    a = p.parse_args()
    tokens = a.tokens or (1024 if a.quick else 2048)
    cases = []
    ls = run_case("ls", tokens, a.vocab, 1.0)  # the baseline has no temperature
    for temperature in (float(t) for t in a.temperatures.split(",")):
        r = measure(tokens, a.vocab, temperature, ls)
        print(f"online_kd_memory: {tokens} x {a.vocab}, T={temperature}: label-smoothed CE peak "
              f"{r['ls_peak_over_nv4']} NV4, KD {r['kd_peak_over_nv4']} NV4, extra "
              f"{r['online_kd_extra_bytes_over_nv4']} NV4 ({r['kd_extra_mb']} MiB)", file=sys.stderr, flush=True)
        cases.append(r)
    worst = max(c["online_kd_extra_bytes_over_nv4"] for c in cases)
    print(json.dumps({"online_kd_extra_bytes_over_nv4": worst, "target": TARGET, "meets_target": worst <= TARGET,
                      "cases": cases}))


if __name__ == "__main__":
    main()
