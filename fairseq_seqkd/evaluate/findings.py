"""The paper's seven findings, checked against the figures of one run.

Kim & Rush (2016) report, on WMT14 En-De: (1) Seq-KD lifts the student's greedy BLEU well above a
baseline student of the same size (+4.2); (2) a Seq-KD student decodes greedily almost as well as
with beam search (18.9 vs 19.0); (3) Word-KD helps a little (+0.7 greedy); (4) Seq-KD, Seq-Inter
and Word-KD together are best or close to it; (5) the student decodes greedily about 10 times
faster than the teacher with beam search; (6) 80% of the student's weights can be pruned, and
the student retrained, for a few tenths of BLEU; (7) the baseline student fine-tuned on the
Seq-Inter data (the teacher's beam candidate closest to the reference) gains most of what Seq-KD
gains (14.7 to 18.5 greedy).

Each finding becomes a test with a threshold (the same ones the project's Multi30k run must
pass): ``held`` is True or False on the point values, or None when the run lacks a system it needs.
Only reads the report's ``systems`` (see ``fairseq_seqkd.evaluate.report``) and, for its verdict,
the noise of the BLEU differences it judges (``fairseq_seqkd.evaluate.significance.pair_noise``:
sacrebleu's paired bootstrap, 1,000 resamples; d = BLEU(A) - BLEU(B), p its p-value, [lo, hi] its
95% interval). Each BLEU claim is of one of two kinds, and its verdict is:

- a gain, d >= t (findings 1, t = SEQ_KD_GAIN; 3, t = 0; 7, t = SEQ_INTER_GAIN): **held** when d >= t, p < 0.05
  and lo >= t; **held, within noise** when d >= t but p >= 0.05 or lo < t (the gain may be noise, or
  smaller than t); **did not hold** when d < t.
- at most, d <= t (a gap: 2, beam - greedy <= GREEDY_GAP; 4, best other student - combined <=
  CLOSE_TO_BEST; a loss: 6, combined - pruned <= PRUNE_LOSS): **held** when d <= t and hi <= t;
  **held, within noise** when d <= t < hi (the true gap or loss may exceed t); **did not hold**
  when d > t.

A finding of several claims (4: greedy and beam) takes the worst verdict; a condition without
noise (6's non-zero share, 5's speed: timings are not resampled) that fails makes it did not hold.
Without the noise (results recorded before the outputs were), a finding that holds on the point
values is **held (point values only)**.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

SEQ_KD_WORD_KD = "seq_kd_word_kd"  # Seq-KD data with Word-KD throughout: where the combination starts
COMBINED = "seq_kd_seq_inter_word_kd"
# "X + Seq-Inter": X fine-tuned on the Seq-Inter data (the baseline's is "seq_inter", the paper's first)
TEACHER_SEQ_INTER = "teacher_seq_inter"
TEACHER_ENSEMBLE = "teacher_ensemble"  # teacher_seeds' teachers together: the teacher's work when there are several
WORD_KD_SEQ_INTER = "word_kd_seq_inter"
SEQ_KD_SEQ_INTER = "seq_kd_seq_inter"
# the students of the paper's Table 1, in its order
STUDENTS = ["baseline", "word_kd", "seq_kd", "seq_inter", WORD_KD_SEQ_INTER, SEQ_KD_SEQ_INTER, SEQ_KD_WORD_KD, COMBINED]
# thresholds, in BLEU points or ratios
SEQ_KD_GAIN = 1.0  # (1) Seq-KD greedy >= baseline greedy + this
GREEDY_GAP = 0.5  # (2) Seq-KD beam - greedy <= this
CLOSE_TO_BEST = 0.5  # (4) combined within this of the best student, greedy and beam
SPEEDUP = 10.0  # (5) student greedy words/s over teacher beam words/s
PRUNE_LOSS = 0.5  # (6) pruned beam >= combined beam - this
PRUNE_KEEP = 0.2  # (6) pruned non-zero parameters <= this x the combined student's
SEQ_INTER_GAIN = 1.5  # (7) baseline + Seq-Inter greedy >= baseline greedy + this
# a trained system whose greedy BLEU is below this x the baseline's is not a finding but a broken
# training; judged only where the baseline has more than MIN_BASELINE BLEU (near 0, halves are noise)
FAR_BELOW = 0.5
MIN_BASELINE = 1.0
# the systems the pipeline trains (the baseline is the yardstick), and its training rules' names:
# each writes logs/RULE.log
TRAIN_RULES = {name: f"train_{name}" for name in ["teacher", TEACHER_SEQ_INTER, *STUDENTS, "pruned"]
               if name != "baseline"} | {COMBINED: "train_combined"}


def seeded(name: str, seed: int | None) -> str:
    """The system ``name`` trained with a further seed of student_seeds: NAME.seedS (None: ``name`` itself)."""
    return name if seed is None else f"{name}.seed{seed}"


def seed_of(system: str) -> tuple[str, int | None]:
    """(name, seed) of a system NAME.seedS; (system, None) for any other."""
    name, dot, seed = system.rpartition(".seed")
    return (name, int(seed)) if dot and name and seed.isdecimal() else (system, None)


HELD, WITHIN_NOISE, FAILED, POINT_ONLY = "held", "held, within noise", "did not hold", "held (point values only)"
P_SIGNIFICANT = 0.05


class Claim(NamedTuple):
    """BLEU(a, decoding_a) - BLEU(b, decoding_b) is at least (``gain``) or at most (``at_most``) ``threshold``."""

    kind: str
    a: str
    decoding_a: str
    b: str
    decoding_b: str
    threshold: float

    @property
    def pair(self) -> tuple[str, str, str, str]:
        return self.a, self.decoding_a, self.b, self.decoding_b


def _get(systems: dict, name: str, key: str):
    return (systems.get(name) or {}).get(key)


Judged = tuple[bool, str, list[Claim]]


def _greedy_over_baseline(s: dict, name: str, label: str, margin: float, paper: str) -> Judged | None:
    """Whether ``name``'s greedy BLEU is at least the baseline's + ``margin`` (findings 1 and 3)."""
    mine, base = _get(s, name, "bleu_greedy"), _get(s, "baseline", "bleu_greedy")
    if mine is None or base is None:
        return None
    text = f"{label} {mine:.1f} vs baseline {base:.1f} greedy ({mine - base:+.1f}; paper {paper})"
    return mine >= base + margin, text, [Claim("gain", name, "greedy", "baseline", "greedy", margin)]


def _seq_kd_gain(s: dict) -> Judged | None:
    return _greedy_over_baseline(s, "seq_kd", "Seq-KD", SEQ_KD_GAIN, "+4.2")


def _greedy_gap(s: dict) -> Judged | None:
    greedy, beam = _get(s, "seq_kd", "bleu_greedy"), _get(s, "seq_kd", "bleu_beam")
    if greedy is None or beam is None:
        return None
    base = ""
    bg, bb = _get(s, "baseline", "bleu_greedy"), _get(s, "baseline", "bleu_beam")
    if bg is not None and bb is not None:
        base = f"; baseline {bg:.1f} / {bb:.1f} ({bb - bg:+.1f})"
    return (beam - greedy <= GREEDY_GAP,
            f"Seq-KD {greedy:.1f} greedy / {beam:.1f} beam ({beam - greedy:+.1f}; paper 18.9 / 19.0){base}",
            [Claim("at_most", "seq_kd", "beam", "seq_kd", "greedy", GREEDY_GAP)])


def _word_kd(s: dict) -> Judged | None:
    return _greedy_over_baseline(s, "word_kd", "Word-KD", 0.0, "+0.7")


def _seq_inter_gain(s: dict) -> Judged | None:
    return _greedy_over_baseline(s, "seq_inter", "Baseline + Seq-Inter", SEQ_INTER_GAIN, "+3.8")


def _combined_best(s: dict) -> Judged | None:
    if _get(s, COMBINED, "bleu_greedy") is None:
        return None
    held, parts, claims = True, [], []
    for decoding in ("greedy", "beam"):
        key = f"bleu_{decoding}"
        others = {n: _get(s, n, key) for n in STUDENTS if n != COMBINED and _get(s, n, key) is not None}
        mine = _get(s, COMBINED, key)
        if not others or mine is None:
            return None
        best = max(others, key=others.get)
        held = held and mine >= others[best] - CLOSE_TO_BEST
        parts.append(f"{decoding}: combined {mine:.1f}, best other student {best} {others[best]:.1f}")
        claims.append(Claim("at_most", best, decoding, COMBINED, decoding, CLOSE_TO_BEST))
    return held, "; ".join(parts), claims


def _speedup(s: dict) -> Judged | None:
    student, teacher = _get(s, "seq_kd", "words_per_s_greedy"), _get(s, "teacher", "words_per_s_beam")
    if not student or not teacher:
        return None
    text = f"Seq-KD greedy {student:.0f} words/s vs teacher beam {teacher:.0f} ({student / teacher:.1f}x; paper 10x)"
    deployed = _get(s, "pruned_ct2_int8", "words_per_s_greedy")
    if deployed:
        text += f"; pruned student in CTranslate2 int8 {deployed:.0f} words/s ({deployed / teacher:.1f}x)"
    return student / teacher >= SPEEDUP, text, []


def _pruning(s: dict) -> Judged | None:
    pb, cb = _get(s, "pruned", "bleu_beam"), _get(s, COMBINED, "bleu_beam")
    pn, cn = _get(s, "pruned", "nonzero_params"), _get(s, COMBINED, "nonzero_params")
    if None in (pb, cb, pn, cn) or not cn:
        return None
    held = pb >= cb - PRUNE_LOSS and pn <= PRUNE_KEEP * cn
    return held, (f"pruned {pb:.1f} vs unpruned {cb:.1f} beam ({pb - cb:+.1f}), "
                  f"{pn / cn:.0%} of its weights non-zero (paper: 80% pruned for a few tenths)"), \
        [Claim("at_most", COMBINED, "beam", "pruned", "beam", PRUNE_LOSS)]


FINDINGS: list[tuple[str, str, Callable[[dict], Judged | None]]] = [
    ("seq_kd_gain", f"Seq-KD lifts greedy BLEU over the baseline student (by >= {SEQ_KD_GAIN})", _seq_kd_gain),
    ("greedy_close_to_beam", f"The Seq-KD student's greedy is within {GREEDY_GAP} BLEU of its beam", _greedy_gap),
    ("word_kd_helps", "Word-KD does not hurt greedy BLEU (paper: +0.7)", _word_kd),
    ("combined_best", f"Seq-KD + Seq-Inter + Word-KD is best or within {CLOSE_TO_BEST} BLEU of the best student",
     _combined_best),
    ("student_faster", f"The student decodes greedily >= {SPEEDUP:.0f}x faster than the teacher's beam", _speedup),
    ("pruning_cheap", f"80% pruned and retrained, the student loses <= {PRUNE_LOSS} BLEU (beam)", _pruning),
    ("seq_inter_gain", f"Fine-tuned on Seq-Inter data, the baseline student gains greedy BLEU (by >= {SEQ_INTER_GAIN})",
     _seq_inter_gain),
]


def comparisons(systems: dict) -> list[tuple[str, str, str, str]]:
    """The BLEU differences (a, decoding, b, decoding) the findings judge on these systems, each once."""
    pairs = []
    for _fid, _text, test in FINDINGS:
        result = test(systems)
        for claim in result[2] if result else []:
            if claim.pair not in pairs:
                pairs.append(claim.pair)
    return pairs


def claim_verdict(claim: Claim, diff: float, noise: dict | None) -> str:
    """One claim's verdict (the module's docstring): ``diff`` the point difference, ``noise`` its
    ``{"p", "interval"}`` (None: not measured)."""
    gain = claim.kind == "gain"
    if (diff < claim.threshold) if gain else (diff > claim.threshold):
        return FAILED
    if noise is None:
        return POINT_ONLY
    low, high = noise["interval"]
    if gain:
        return HELD if noise["p"] < P_SIGNIFICANT and low >= claim.threshold else WITHIN_NOISE
    return HELD if high <= claim.threshold else WITHIN_NOISE


_ORDER = [HELD, POINT_ONLY, WITHIN_NOISE, FAILED]  # the worst last


def _noise_text(claim: Claim, diff: float, noise: dict | None) -> str:
    what = f"{claim.a} {claim.decoding_a} - {claim.b} {claim.decoding_b}"
    if noise is None:
        return f"{what} {diff:+.2f} (no interval)"
    low, high = noise["interval"]
    return f"{what} {diff:+.2f} [{low:+.2f}, {high:+.2f}] p={noise['p']:.3f}"


def check_findings(systems: dict, noise: dict | None = None) -> list[dict]:
    """One entry per finding: ``{"id", "finding", "held", "verdict", "measured", "noise"}``.

    ``held`` is the point values' (None: not measured); ``verdict`` one of HELD, WITHIN_NOISE, FAILED,
    POINT_ONLY or "not measured"; ``noise`` maps each of ``comparisons(systems)`` to ``{"p", "interval"}``
    (None: none measured), and the entry's ``noise`` lists each claim with its figures.
    """
    out = []
    for fid, text, test in FINDINGS:
        result = test(systems)
        if result is None:
            out.append({"id": fid, "finding": text, "held": None, "verdict": "not measured",
                        "measured": "not measured in this run", "noise": []})
            continue
        held, measured, claims = result
        verdicts, details = [], []
        for claim in claims:
            diff = round(_get(systems, claim.a, f"bleu_{claim.decoding_a}")
                         - _get(systems, claim.b, f"bleu_{claim.decoding_b}"), 2)
            n = (noise or {}).get(claim.pair)
            verdicts.append(claim_verdict(claim, diff, n))
            details.append({"claim": claim.kind, "a": f"{claim.a} {claim.decoding_a}",
                            "b": f"{claim.b} {claim.decoding_b}", "threshold": claim.threshold, "diff": diff,
                            "p": n and n["p"], "interval": n and n["interval"], "verdict": verdicts[-1]})
            measured += "; " + _noise_text(claim, diff, n)
        if not held:
            verdict = FAILED  # a condition without noise (speed, non-zero share) failed, or a claim did
        else:
            verdict = max(verdicts, key=_ORDER.index) if verdicts else HELD
        out.append({"id": fid, "finding": text, "held": held, "verdict": verdict, "measured": measured,
                    "noise": details})
    return out


def _bold(verdict: str) -> str:
    if verdict == POINT_ONLY:
        return "**held** (point values only, no interval)"
    return f"**{verdict}**"


def findings_markdown(findings: list[dict]) -> str:
    """A numbered list: each finding, its verdict (or not measured), and the figures behind it."""
    lines = [f"{i}. {f['finding']}: " + ("" if f["held"] is None else _bold(f["verdict"]) + ". ")
             + f"{f['measured']}." for i, f in enumerate(findings, 1)]
    return "\n".join(lines) + "\n"


def _cell(f: dict) -> str:
    if f["held"] is None:
        return "–"
    worst = max(f["noise"], key=lambda d: _ORDER.index(d["verdict"]), default=None)
    if worst is None:
        return f["verdict"]
    figures = f"{worst['diff']:+.1f}"
    if worst["interval"] is not None:
        figures += f" [{worst['interval'][0]:+.1f}, {worst['interval'][1]:+.1f}], p {worst['p']:.3f}"
    return f"{f['verdict']} ({figures})"


def findings_table(by_test_set: dict[str, list[dict]]) -> str:
    """Findings x test sets: each cell the verdict and the difference behind it (the worst claim's)."""
    names = list(by_test_set)
    lines = ["| Finding | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for i, (fid, _text, _test) in enumerate(FINDINGS):
        cells = [_cell(by_test_set[n][i]) for n in names]
        lines.append(f"| {i + 1}. {fid} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def far_below_baseline(systems: dict) -> list[str]:
    """A warning for each trained system (TRAIN_RULES) scoring far below the baseline student, greedy.

    Far below: under FAR_BELOW x the baseline's BLEU where that is over MIN_BASELINE, or 0 where the
    baseline's is not. No method of the paper costs that much; a training that diverged or stopped
    early does, and the findings would then judge a broken model.
    """
    base = _get(systems, "baseline", "bleu_greedy")
    if base is None:
        return []
    warnings = []
    for name, rule in TRAIN_RULES.items():
        mine = _get(systems, name, "bleu_greedy")
        if mine is None:
            continue
        if (base > MIN_BASELINE and mine < FAR_BELOW * base) or (mine == 0 and base != 0):
            warnings.append(f"{name} scores {mine:.1f} greedy BLEU, the baseline student {base:.1f} (below "
                            f"{FAR_BELOW:g}x): a training that diverged or stopped early may be the cause; "
                            f"look at logs/{rule}.log")
    return warnings
