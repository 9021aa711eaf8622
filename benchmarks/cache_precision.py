"""How far the cached top-k is from the teacher's, at each temperature: format 2 (float16 probabilities) against 3.

The KD term uses the teacher's top-k renormalised at temperature T: q_i = p_i^(1/T) / sum_j p_j^(1/T).
Format 2 stored p_i in float16, which keeps 11 bits only above 6.1e-5, fewer below and none under
3e-8; the power 1/T lifts exactly that tail into the distribution. Format 3 stores
d_i = log(p_i / p_1) in float16 (``topk_logits``), whose relative rounding error 2^-11 does not
grow in the tail. For each T this prints, over every row, the largest L1 distance
(sum_i |q_i - q*_i|) and the largest single |q_i - q*_i| between the q the criterion computes from
the stored values and q* computed in float64 from the teacher's float32 log-probabilities, next
to the bound 2^-10 * ln(k) that format 3 must keep (see ``topk_logits``).

Rows, k = 8 over a 32,000-word vocabulary:
- teacher-like: log_softmax of logits drawn N(0, s^2) with the first word raised by m, for s in
  1, 2, 4, 8 and m in 0, 5, 10, 20 (flat to very confident);
- worst case: the top log-probability uniform in [-ln 32000, 0] (down to a flat teacher) and
  the gaps to it uniform in [0, 40], sorted.

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch

VOCAB, K = 32_000, 8
TEMPERATURES = (0.5, 1.0, 2.0, 4.0)


def teacher_like_rows(rows: int, seed: int) -> torch.Tensor:
    """(n, K) float32 top-k log-probabilities of random teachers from flat to very confident."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in (1.0, 2.0, 4.0, 8.0):
        for m in (0.0, 5.0, 10.0, 20.0):
            z = torch.randn(rows, VOCAB, generator=g) * s
            z[:, 0] += m
            out.append(torch.log_softmax(z, dim=-1).topk(K, dim=-1).values)
    return torch.cat(out)


def worst_case_rows(rows: int, seed: int) -> torch.Tensor:
    """(n, K) float32 top-k log-probabilities with the top anywhere down to 1/VOCAB and gaps up to 40."""
    g = torch.Generator().manual_seed(seed)
    top = -torch.rand(rows, 1, generator=g) * math.log(VOCAB)
    gaps = (torch.rand(rows, K, generator=g) * 40).sort(dim=-1).values
    gaps[:, 0] = 0
    return top - gaps


def criterion_q(stored: str, lprobs: torch.Tensor, temperature: float) -> torch.Tensor:
    """The tempered top-k the word_kd criterion computes from what format ``stored`` keeps of ``lprobs``."""
    from fairseq_seqkd.criterions.word_kd import tempered_teacher
    from fairseq_seqkd.teacher_cache.format import topk_logits

    if stored == "v2_float16_probs":
        return tempered_teacher(lprobs.exp().half(), temperature)
    logits = torch.from_numpy(topk_logits(lprobs.numpy()))  # what a shard holds
    return tempered_teacher(torch.softmax(logits.float(), dim=-1), temperature)  # as teacher_distribution does


def errors(lprobs: torch.Tensor) -> dict:
    """Per format and temperature: the largest and the mean L1 distance, and the largest entry error."""
    out: dict = {}
    for stored in ("v2_float16_probs", "v3_float16_logits"):
        for t in TEMPERATURES:
            exact = torch.softmax(lprobs.double() / t, dim=-1)
            diff = (criterion_q(stored, lprobs, t).double() - exact).abs()
            l1 = diff.sum(dim=-1)
            out.setdefault(stored, {})[str(t)] = {"max_l1": float(l1.max()), "mean_l1": float(l1.mean()),
                                                  "max_entry": float(diff.max())}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rows (a few seconds)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    rows = 100 if a.quick else 500
    sets = {"teacher_like": teacher_like_rows(rows, a.seed), "worst_case": worst_case_rows(400 * rows, a.seed)}
    bound = 2**-10 * math.log(K)
    result = {"k": K, "vocab": VOCAB, "rows": {name: len(x) for name, x in sets.items()},
              "bound_l1_v3": bound, "errors": {name: errors(x) for name, x in sets.items()}}
    for name, per_format in result["errors"].items():
        for stored, per_t in per_format.items():
            line = "  ".join(f"T={t}: {e['max_l1']:.1e} ({e['max_entry']:.1e})" for t, e in per_t.items())
            print(f"{name:12s} {stored:18s} max L1 (max entry)  {line}")
    v3_max = max(e["max_l1"] for per_format in result["errors"].values()
                 for e in per_format["v3_float16_logits"].values())
    result["v3_within_bound"] = bool(v3_max <= bound)
    print(json.dumps(result))
    return 0 if result["v3_within_bound"] else 1


if __name__ == "__main__":
    np.seterr(divide="ignore")  # a probability of 0 is a logit of -inf
    raise SystemExit(main())
