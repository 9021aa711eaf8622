"""MBR selection speed: the batched choice (fairseq_seqkd.seq_kd.mbr) against sacrebleu pair by pair.

Setup: K-best lists of synthetic sentences (token ids of a ``--vocab`` vocabulary, 15 to 35 per
sentence): each list is K variants of one base sentence, a quarter of the tokens replaced at
random and 0 to 2 dropped at the end, so candidates share n-grams of every order as a beam's do;
scores drawn at random (the weights of ``--mbr-weights scores``). For chrF the ids are
sentencepiece-like pieces (:func:`pieces`: 1 to 7 letters, half of them starting a word with ``▁``).

- ``batched``: :meth:`MBR.choose` on the packed ids (packing included; for chrF the decoding of
  the pieces too), all sentences in one call;
- ``sacrebleu``: for every ordered pair of distinct candidates of a sentence,
  ``BLEU(tokenize='none', smooth_method='exp', effective_order=True).sentence_score`` on the ids
  written as strings, or ``CHRF().sentence_score`` on the decoded text (both made beforehand, not
  timed); expected utility and choice in plain Python, as ``tests/test_mbr.py`` computes them.

Both must choose the same candidates (checked). Candidates per second = candidates / seconds,
fastest of ``--repeats`` runs, thread CPU time by default (``--clock wall`` on a quiet machine).
Target: at least 10x sacrebleu at K = 8 for each utility. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import sys
import time

import numpy as np

TARGETS = {"speedup_k8": 10.0, "chrf_speedup_k8": 10.0}
LETTERS = "abcdefghijklmnopqrstuvwxyzäöüéß"


def lists(sentences: int, k: int, vocab: int, seed: int) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    """(candidates, group sizes, scores) of ``sentences`` K-best lists."""
    rng = np.random.default_rng(seed)
    cands = []
    for _ in range(sentences):
        base = rng.integers(4, vocab, int(rng.integers(15, 36)))
        for _ in range(k):
            c = base.copy()
            swap = rng.random(len(c)) < 0.25
            c[swap] = rng.integers(4, vocab, int(swap.sum()))
            cands.append(c[:len(c) - int(rng.integers(0, 3))].tolist())
    return cands, np.full(sentences, k), rng.normal(-1.0, 0.3, len(cands))


def pieces(vocab: int, seed: int = 0) -> list[str]:
    """A sentencepiece-like dictionary of ``vocab`` symbols: 1 to 7 letters, about half starting with ``▁``."""
    rng = np.random.default_rng(seed)
    return [("\u2581" if rng.random() < 0.5 else "") + "".join(rng.choice(list(LETTERS), int(rng.integers(1, 8))))
            for _ in range(vocab)]


def sacrebleu_choice(strings: list[str], sizes: np.ndarray, scores: np.ndarray, sacre,
                     weights: str = "scores") -> tuple[list[int], list[float]]:
    """MBR by hand (the module doc of fairseq_seqkd.seq_kd.mbr), sacrebleu pair by pair: each candidate's expected
    utility against the other candidates of its sentence, weighted by the softmax of their scores (or uniformly);
    the chosen candidates and every expected utility. The reference of tests/test_mbr.py too."""
    chosen, eus, lo = [], [], 0
    for k in sizes.tolist():
        eu = []
        for a in range(lo, lo + k):
            num = den = 0.0
            for b in range(lo, lo + k):
                if a != b:
                    w = math.exp(scores[b]) if weights == "scores" else 1.0
                    num += w * sacre.sentence_score(strings[a], [strings[b]]).score
                    den += w
            eu.append(num / den if den else 0.0)
        top = max(eu)
        chosen.append(lo + max((i for i in range(k) if eu[i] >= top - 1e-9), key=lambda i: (scores[lo + i], -i)))
        eus += eu
        lo += k
    return chosen, eus


def measure(k: int, sentences: int, vocab: int, repeats: int, clock, utility: str = "bleu") -> dict:
    from sacrebleu.metrics import BLEU, CHRF

    from fairseq_seqkd.seq_kd.mbr import MBR
    from fairseq_seqkd.seq_kd.sentence_bleu import pack
    from fairseq_seqkd.seq_kd.sentence_chrf import PieceText

    cands, sizes, scores = lists(sentences, k, vocab, seed=k)
    if utility == "chrf":
        text = PieceText(pieces(vocab))
        strings = text.texts(*pack(cands))
        sacre, choice = CHRF(), MBR("chrf", text=text)
    else:
        strings = [" ".join(map(str, c)) for c in cands]
        sacre, choice = BLEU(tokenize="none", smooth_method="exp", effective_order=True), MBR()
    batched_s = sacre_s = float("inf")
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        start = clock()
        ours, _ = choice.choose(*pack(cands), sizes, scores)
        batched_s = min(batched_s, clock() - start)
        start = clock()
        theirs, _ = sacrebleu_choice(strings, sizes, scores, sacre)
        sacre_s = min(sacre_s, clock() - start)
        gc.enable()
    assert ours.tolist() == theirs, f"the batched MBR ({utility}) chose other candidates than sacrebleu pairwise"
    n = len(cands)
    return {"utility": utility, "k": k, "sentences": sentences, "candidates": n, "pairs": int(sentences * k * (k - 1)),
            "mean_chars": round(float(np.mean([len("".join(t.split())) for t in strings])), 1)
            if utility == "chrf" else None,
            "batched_s": round(batched_s, 4), "sacrebleu_s": round(sacre_s, 4),
            "batched_candidates_per_s": round(n / batched_s), "sacrebleu_candidates_per_s": round(n / sacre_s),
            "speedup": round(sacre_s / batched_s, 1), "same_choices": True}


def cpu_name() -> str:
    """The CPU's model name (lscpu's), for the record."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer sentences and runs (a few seconds)")
    p.add_argument("--sentences", type=int, default=None,
                   help="sentences at K=8 (default 1000; quick 100); at K=35 a fifth as many")
    p.add_argument("--vocab", type=int, default=8000, help="vocabulary size (default 8000)")
    p.add_argument("--repeats", type=int, default=None, help="runs of each, the fastest counts (default 3; quick 1)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="cpu: this thread's CPU time (default: shared cores); wall: wall time")
    args = p.parse_args(argv)
    n = args.sentences or (100 if args.quick else 1000)
    repeats = args.repeats or (1 if args.quick else 3)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    t0 = time.perf_counter()
    runs = [measure(k, m, args.vocab, repeats, clock, utility) for utility in ("bleu", "chrf")
            for k, m in ((8, n), (35, max(1, n // 5)))]
    for r in runs:
        print(f"mbr_speed: {r['utility']} K={r['k']}: batched {r['batched_candidates_per_s']} candidates/s, sacrebleu "
              f"pairwise {r['sacrebleu_candidates_per_s']}/s ({r['speedup']}x)", file=sys.stderr)
    result = {"speedup_k8": runs[0]["speedup"], "speedup_k35": runs[1]["speedup"],
              "chrf_speedup_k8": runs[2]["speedup"], "chrf_speedup_k35": runs[3]["speedup"]}
    result.update({"targets": TARGETS, "targets_met": {name: result[name] >= goal for name, goal in TARGETS.items()},
                   "runs": runs, "utilities": {"bleu": "sentence BLEU (exp smoothing, effective order, tok:ids)",
                                               "chrf": "sacrebleu CHRF() defaults on the decoded pieces"},
                   "weights": "scores", "vocab": args.vocab, "repeats": repeats,
                   "clock": "thread CPU time" if args.clock == "cpu" else "wall time", "cpu": cpu_name(),
                   "quick": args.quick, "wall_s": round(time.perf_counter() - t0, 1)})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
