"""Peak memory of fairseq beam search for one batch, measured on CPU, and the memory model it fits.

Why: the teacher translates the whole training set at beam 5 (Seq-KD) and beam 35 (Seq-Inter);
a batch that does not fit the GPU fails, and fails again on every rerun. This measures what one
batch of ``fairseq-generate`` costs at the real model sizes and fits a memory model from which
``--max-tokens`` for a 16 GB GPU is derived (docs/scale.md).

What runs: fairseq's ``SequenceGenerator`` (what fairseq-generate builds for ``--beam N``) on
one batch of ``bsz`` random source sentences of ``src`` tokens (EOS included), with a
randomly initialised ``transformer_wmt_en_de`` (6+6 layers, d=512, 8 heads, FFN 2048, shared
embeddings; ``--arch transformer_vaswani_wmt_en_de_big`` for the big one) over a dummy
Dictionary of 32,000 symbols: no training, no download. ``min_len`` is set to the output bound
``max_len = int(max_len_a * src + max_len_b)``, so EOS is forbidden until then and every
hypothesis runs to the bound: the worst case of that batch shape. One torch thread.

How peak memory is measured: every configuration runs in a fresh child process. After the
model is built and a tiny warm-up generation has initialised the kernels, the child trims the
heap (``malloc_trim``), resets the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``
resets ``VmHWM`` to the current RSS, Linux >= 4.0), reads ``VmRSS`` as the baseline (model
weights, Python, fairseq), runs ``generate`` and reports ``VmHWM - baseline``: the true high-water
mark during the search, freed temporaries included. The child runs with
``MALLOC_MMAP_THRESHOLD_=65536`` so every tensor buffer is its own ``mmap`` and counts as it is
touched and leaves RSS when freed (glibc's adaptive threshold would otherwise recycle freed
heap and blur the figure). RSS rather than ``torch.profiler``'s memory profile: the profiler
counts only tensor allocations, while RSS is what the machine must have, allocator overhead
and the Python objects of finished hypotheses included; with one buffer per mapping the two
agree up to page rounding.

The fit: per hypothesis (``hyps = beam x bsz``), with ``T = max_len + 1`` decoder steps,

    bytes ~= c0 + hyps * (c_t * T + c_s * src + c_st * src * T + c_h)

* ``c_t``: the decoder's incremental state, self-attention keys and values of every layer
  (layers x 2 x d x 4 bytes per target position; 24,576 for the base model), plus the
  ``tokens`` (int64) and ``scores`` (float32) buffers (12 bytes per position);
* ``c_s``: encoder-decoder attention keys and values of every layer (layers x 2 x d x 4) plus the
  encoder output and embedding expanded to every hypothesis (2 x d x 4) and the source ids (8);
* ``c_st``: the float32 attention buffer ``attn`` (hyps x src x (T+1)) that SequenceGenerator
  fills at every step, and its copy in each finalized hypothesis: about 8 bytes;
* ``c_h``: per-hypothesis, per-step buffers over the vocabulary (logits, log-probs, the beam
  search's candidate scores; float32 x V each): ``c_h / (4 V)`` is the number of such buffers.

The coefficients are fitted by non-negative least squares on the measurements and printed
beside the values derived from the model's sizes; the derived fp16-GPU figures use the
fitted model with the activations halved (the incremental state, encoder output) and what
fairseq keeps in float32 left at 4 bytes (``attn``, ``scores``, the log-probs:
``get_normalized_probs`` upcasts to float32 before ``log_softmax``).

--max-tokens: fairseq's ``batch_by_size`` makes a batch of ``n`` sentences whose padded length
``S = max(src, tgt)`` satisfies ``n x S <= max_tokens`` (and ``n <= --batch-size`` if given), so a
batch holds ``max_tokens / S`` sentences and the worst case is either many short sentences
(per-hypothesis vocabulary buffers dominate) or few long ones (``src x T`` attention and the
state grow with S). The recommendation scans S from 2 (one piece and EOS) to the longest sentence ``prepare``
keeps (250 pieces + EOS) and takes the largest --max-tokens (a multiple of 256) that fits the
budget at every S, with and without a --batch-size cap.

Prints progress on stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

from memstats import reset_peak, status_kib

VOCAB = 32000
GIB = 1024**3
# The configurations: (beam, bsz, src, max_len_a, max_len_b). The a/b pairs other than
# (1.2, 10) fix the output length independently of the source, which separates the
# self-attention (target) term from the encoder-decoder (source) term in the fit.
FULL_GRID = [
    *[(5, b, s, 1.2, 10) for b in (1, 4) for s in (20, 50, 100)],
    *[(35, 1, s, 1.2, 10) for s in (20, 50, 100)],
    *[(35, 2, s, 1.2, 10) for s in (20, 50)],
    (35, 2, 100, 0.0, 30),
    (35, 1, 10, 0.0, 130),
    (5, 8, 10, 0.0, 60),
    # many hypotheses, three steps: the per-hypothesis vocabulary buffers dominate
    (35, 8, 5, 0.0, 2),
    (35, 16, 5, 0.0, 2),
]
QUICK_GRID = [(5, 1, 20, 1.2, 10), (5, 4, 10, 0.0, 40), (35, 1, 20, 1.2, 10), (35, 2, 40, 0.0, 10),
              (35, 8, 5, 0.0, 2)]
# prepare drops training pairs with a side above 250 pieces (CleanConfig.max_tokens); + EOS.
# The shortest: one piece + EOS (prepare drops empty sides).
LONGEST_SOURCE = 251
SHORTEST_SOURCE = 2
MAX_TOKENS_CEILING = 32768  # the search for --max-tokens stops here
# (beam, --max-tokens, --batch-size) settings whose worst batch the JSON reports
SETTINGS = [(beam, mt, cap) for beam in (5, 35)
            for mt, cap in ((2048, None), (4096, None), (8192, None), (4096, 128), (6144, 128), (7168, 128),
                            (8192, 128), (8192, 256), (16384, 256))]
# Kept free on the GPU: CUDA context and kernels (~0.5-1 GB), the caching allocator's
# fragmentation, and the error of a model fitted on CPU. The budget for one batch is
# (GPU bytes - fp16 weights) * GPU_USABLE - CUDA_CONTEXT; "16 GB" as sold is 16e9 bytes (14.9 GiB).
CUDA_CONTEXT = 1 * GIB
GPU_USABLE = 0.75


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the child


def build_model(arch: str, vocab: int = VOCAB):
    """A randomly initialised fairseq model of ``arch`` (shared embeddings) over a dummy dictionary."""
    from types import SimpleNamespace

    from fairseq.data import Dictionary
    from fairseq.models import ARCH_CONFIG_REGISTRY, ARCH_MODEL_REGISTRY

    d = Dictionary()
    for i in range(vocab - len(d)):
        d.add_symbol(f"w{i}")
    args = argparse.Namespace(share_all_embeddings=True, arch=arch)
    ARCH_CONFIG_REGISTRY[arch](args)
    task = SimpleNamespace(source_dictionary=d, target_dictionary=d)
    model = ARCH_MODEL_REGISTRY[arch].build_model(args, task)
    model.eval()
    return model, d, args


def _generate(model, d, beam: int, bsz: int, src: int, a: float, b: float, seed: int = 0) -> int:
    """One forced-length beam search over random sources; returns the output length bound."""
    import torch
    from fairseq.sequence_generator import SequenceGenerator

    max_len = min(int(a * src + b), model.max_decoder_positions() - 1)
    gen = SequenceGenerator([model], d, beam_size=beam, max_len_a=a, max_len_b=b, min_len=max_len)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(d.nspecial, len(d), (bsz, src), generator=g)
    tokens[:, -1] = d.eos()
    sample = {"id": torch.arange(bsz), "net_input": {"src_tokens": tokens,
                                                     "src_lengths": torch.full((bsz,), src)}}
    hypos = gen.generate([model], sample)
    got = {len(h["tokens"]) for sent in hypos for h in sent}
    if got != {max_len + 1}:  # every hypothesis must have run to the bound (+ EOS)
        raise RuntimeError(f"hypotheses of lengths {sorted(got)}, expected {max_len + 1}")
    return max_len


def child(cfg: dict) -> dict:
    """Measure one configuration in this (fresh) process."""
    import torch

    torch.set_num_threads(1)
    model, d, args = build_model(cfg["arch"])
    _generate(model, d, 2, 1, 5, 0.0, 4)  # warm-up: kernels and lazy buffers, not measured
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc_trim(0)
    method = "VmHWM-after-clear_refs" if reset_peak() else "ru_maxrss"
    base = status_kib("VmRSS") * 1024
    t0 = time.perf_counter()
    max_len = _generate(model, d, cfg["beam"], cfg["bsz"], cfg["src"], cfg["a"], cfg["b"])
    seconds = time.perf_counter() - t0
    if method == "ru_maxrss":
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    else:
        peak = status_kib("VmHWM") * 1024
    params = sum(p.numel() for p in model.parameters())
    return {**cfg, "max_len": max_len, "hyps": cfg["beam"] * cfg["bsz"], "peak_bytes": peak - base,
            "baseline_rss_bytes": base, "params": params, "layers": args.decoder_layers,
            "d_model": args.decoder_embed_dim, "seconds": round(seconds, 2), "method": method}


def run_child(cfg: dict, timeout: float) -> dict:
    """Run ``child(cfg)`` in a fresh interpreter with one buffer per mmap; return its result."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(cfg)],
                         capture_output=True, text=True, env=env, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"child {cfg} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- the model


def features(hyps: int, src: int, max_len: int) -> list[float]:
    """The fit's regressors: [1, hyps*T, hyps*src, hyps*src*T, hyps], T = max_len + 1 steps."""
    t = max_len + 1
    return [1.0, hyps * t, hyps * src, hyps * src * t, hyps]


def derived_coefficients(layers: int, d_model: int, vocab: int, act_bytes: int = 4,
                         vocab_buffers: float = 4.0) -> dict:
    """The per-hypothesis coefficients read off fairseq's code for a model's sizes (bytes)."""
    kv = layers * 2 * d_model * act_bytes
    return {"c0": 0.0, "c_t": kv + 12, "c_s": kv + 2 * d_model * act_bytes + 8, "c_st": 8.0,
            "c_h": vocab_buffers * vocab * 4}


def fit(measurements: list[dict]) -> dict:
    """Non-negative least squares of peak bytes on :func:`features`, relative residuals weighted."""
    import numpy as np
    from scipy.optimize import nnls

    x = np.array([features(m["hyps"], m["src"], m["max_len"]) for m in measurements])
    y = np.array([m["peak_bytes"] for m in measurements], dtype=float)
    w = 1.0 / y  # relative error: small batches count as much as big ones
    coef, _ = nnls(x * w[:, None], y * w)
    return dict(zip(("c0", "c_t", "c_s", "c_st", "c_h"), (float(c) for c in coef)))


def predict(coef: dict, hyps: int, src: int, max_len: int) -> float:
    """Bytes of one batch by the model ``coef``."""
    f = features(hyps, src, max_len)
    return sum(c * v for c, v in zip((coef["c0"], coef["c_t"], coef["c_s"], coef["c_st"], coef["c_h"]), f))


def fp16_coefficients(coef: dict, derived32: dict, derived16: dict) -> dict:
    """The fitted CPU model with the activation bytes fairseq halves in fp16 taken off."""
    out = dict(coef)
    for key in ("c_t", "c_s"):  # incremental state and encoder output: fp16 on a GPU
        out[key] = max(coef[key] - (derived32[key] - derived16[key]), 0.0)
    # logits are fp16 (one of the vocabulary buffers), log-probs and search scores stay float32
    out["c_h"] = max(coef["c_h"] - 2 * VOCAB, 0.0)
    # ``attn`` and its copies are float32 on a GPU too; too small for the CPU fit to resolve
    # (<= 4% of a batch), so never less than what the code allocates
    out["c_st"] = max(coef["c_st"], derived16["c_st"])
    return out


def batch_bytes(coef: dict, beam: int, max_tokens: int, seq_len: int, a: float, b: float,
                max_sentences: int | None = None) -> float:
    """Worst-case bytes of a batch of sentences of padded length ``seq_len`` under --max-tokens."""
    n = max_tokens // seq_len
    if max_sentences:
        n = min(n, max_sentences)
    if n == 0:
        return 0.0
    return predict(coef, beam * n, seq_len, int(a * seq_len + b))


def max_tokens_for(coef: dict, beam: int, budget: float, a: float, b: float,
                   max_sentences: int | None = None, longest: int = LONGEST_SOURCE,
                   ceiling: int = MAX_TOKENS_CEILING) -> tuple[int, int]:
    """Largest --max-tokens (multiple of 256, at most ``ceiling``) whose worst batch fits ``budget``.

    The worst batch is taken over padded lengths 2..longest. Returns (max_tokens, the padded
    length of the worst batch at that setting); ``ceiling`` means memory never binds below it.
    """
    best, worst_len = 0, 0
    for mt in range(256, ceiling + 1, 256):
        peak, s = max((batch_bytes(coef, beam, mt, s, a, b, max_sentences), s)
                      for s in range(SHORTEST_SOURCE, longest + 1))
        if peak > budget:
            break
        best, worst_len = mt, s
    return best, worst_len


# ----------------------------------------------------------------------------- main


def measure_grid(arch: str, grid: list[tuple], timeout: float) -> list[dict]:
    """Every configuration of ``grid`` in a child of its own."""
    start = time.perf_counter()
    measurements = []
    for i, (beam, bsz, src, la, lb) in enumerate(grid):
        m = run_child({"arch": arch, "beam": beam, "bsz": bsz, "src": src, "a": la, "b": lb}, timeout)
        measurements.append(m)
        log(f"[{i + 1}/{len(grid)}] beam {beam} bsz {bsz} src {src} max_len {m['max_len']}: "
            f"{m['peak_bytes'] / 2**20:.1f} MiB above the model in {m['seconds']:.1f}s "
            f"({time.perf_counter() - start:.0f}s so far)")
    return measurements


def worst_batch(coef: dict, beam: int, max_tokens: int, a: float, b: float,
                max_sentences: int | None = None) -> dict:
    """The worst batch over padded lengths: GiB and the length it happens at."""
    peak, at = max((batch_bytes(coef, beam, max_tokens, s, a, b, max_sentences), s)
                   for s in range(SHORTEST_SOURCE, LONGEST_SOURCE + 1))
    return {"worst_gib": round(peak / GIB, 2), "at_length": at}


def derive(measurements: list[dict], layers: int, d_model: int, params: int, a: float, b: float,
           gpu_gb: float) -> dict:
    """The fit, its errors, and the fp16 GPU settings that follow from it."""
    coef = fit(measurements)
    derived32 = derived_coefficients(layers, d_model, VOCAB, 4)
    derived16 = derived_coefficients(layers, d_model, VOCAB, 2)
    for m in measurements:
        m["fit_bytes"] = round(predict(coef, m["hyps"], m["src"], m["max_len"]))
        m["fit_error"] = round(m["fit_bytes"] / m["peak_bytes"] - 1, 4)
        m["derived_bytes"] = round(predict(derived32, m["hyps"], m["src"], m["max_len"]))
        m["derived_error"] = round(m["derived_bytes"] / m["peak_bytes"] - 1, 4)
    # the GPU, fp16: weights (fp16) and the CUDA context off the top, a quarter kept free
    gpu = gpu_gb * 10**9
    budget = (gpu - 2 * params) * GPU_USABLE - CUDA_CONTEXT
    coef16 = fp16_coefficients(coef, derived32, derived16)
    rec = {}
    for beam in (5, 35):
        for cap in (None, 64, 128, 256):
            mt, worst = max_tokens_for(coef16, beam, budget, a, b, cap)
            rec[f"beam{beam}" + (f"_batch_size{cap}" if cap else "")] = {
                "max_tokens": mt, "memory_binds": mt < MAX_TOKENS_CEILING, "worst_padded_length": worst,
                "worst_batch_gib": round(batch_bytes(coef16, beam, mt, worst, a, b, cap) / GIB, 2)}
    # what given settings cost at their worst batch, fp16
    table = {f"beam{beam}_max_tokens{mt}" + (f"_batch_size{cap}" if cap else ""):
             worst_batch(coef16, beam, mt, a, b, cap) for beam, mt, cap in SETTINGS}
    for beam in (5, 35):
        # the recipe before bounds: --batch-size 128, fairseq's default max_len_b 200, a = 0
        table[f"beam{beam}_batch_size128_max_len_200"] = {
            "worst_gib": round(predict(coef16, beam * 128, LONGEST_SOURCE, 200) / GIB, 2), "at_length": LONGEST_SOURCE}
    return {
        "measurements": [{k: m[k] for k in ("beam", "bsz", "hyps", "src", "a", "b", "max_len", "peak_bytes",
                                             "fit_bytes", "fit_error", "derived_bytes", "derived_error",
                                             "seconds")} for m in measurements],
        "fit": {k: round(v, 3) for k, v in coef.items()},
        "fit_vocab_buffers": round(coef["c_h"] / (4 * VOCAB), 2),
        "fit_max_abs_error": round(max(abs(m["fit_error"]) for m in measurements), 4),
        "derived_fp32": derived32,
        "fit_fp16": {k: round(v, 3) for k, v in coef16.items()},
        "gpu": {"bytes": gpu, "weights_fp16_bytes": 2 * params, "cuda_context_bytes": CUDA_CONTEXT,
                "usable_fraction": GPU_USABLE, "batch_budget_gib": round(budget / GIB, 2)},
        "max_len_a": a, "max_len_b": b, "source_lengths": [SHORTEST_SOURCE, LONGEST_SOURCE],
        "recommended": rec,
        "worst_batches_fp16": table,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a tiny grid, under 2 minutes on 2 cores")
    p.add_argument("--arch", default="transformer_wmt_en_de",
                   help="fairseq architecture (default transformer_wmt_en_de; the big one: "
                        "transformer_vaswani_wmt_en_de_big)")
    p.add_argument("--max-len-a", type=float, default=1.2, help="output bound a x src + b for the derivation")
    p.add_argument("--max-len-b", type=float, default=10, help="(default 1.2 and 10)")
    p.add_argument("--gpu-gb", type=float, default=16.0, help="GPU memory for the derivation (GB, default 16)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per configuration (default 600)")
    p.add_argument("--measurements", default=None,
                   help="refit and derive from the JSON (last line) of an earlier run instead of measuring")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return 0

    start = time.perf_counter()
    if a.measurements:
        with open(a.measurements) as f:
            old = json.loads(f.read().strip().splitlines()[-1])
        measurements, arch, quick = old["measurements"], old["arch"], old["quick"]
        layers, d_model, params = old["layers"], old["d_model"], old["params"]
        method = old["method"]
    else:
        measurements = measure_grid(a.arch, QUICK_GRID if a.quick else FULL_GRID, a.timeout)
        arch, quick = a.arch, a.quick
        layers, d_model, params = (measurements[0][k] for k in ("layers", "d_model", "params"))
        method = measurements[0]["method"]
    result = {"arch": arch, "vocab": VOCAB, "params": params, "layers": layers, "d_model": d_model,
              "method": method,
              **derive(measurements, layers, d_model, params, a.max_len_a, a.max_len_b, a.gpu_gb),
              "quick": quick, "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
