"""The paper's six findings, checked against the figures of one run.

Kim & Rush (2016) report, on WMT14 En-De: (1) Seq-KD lifts the student's greedy BLEU well above a
baseline student of the same size (+4.2); (2) a Seq-KD student decodes greedily almost as well as
with beam search (18.9 vs 19.0); (3) Word-KD helps a little (+0.7 greedy); (4) Seq-KD, Seq-Inter
and Word-KD together are best or close to it; (5) the student decodes greedily about 10 times
faster than the teacher with beam search; (6) 80% of the student's weights can be pruned, and
the student retrained, for a few tenths of BLEU.

Each finding becomes a test with a threshold (the same ones the project's Multi30k run must
pass): ``held`` is True or False, or None when the run lacks a system it needs. Only reads the
report's ``systems`` (see ``fairseq_seqkd.evaluate.report``).
"""

from __future__ import annotations

from collections.abc import Callable

SEQ_KD_WORD_KD = "seq_kd_word_kd"  # Seq-KD data with Word-KD throughout: where the combination starts
COMBINED = "seq_kd_seq_inter_word_kd"
STUDENTS = ["baseline", "word_kd", "seq_kd", "seq_inter", SEQ_KD_WORD_KD, COMBINED]
# thresholds, in BLEU points or ratios
SEQ_KD_GAIN = 1.0  # (1) Seq-KD greedy >= baseline greedy + this
GREEDY_GAP = 0.5  # (2) Seq-KD beam - greedy <= this
CLOSE_TO_BEST = 0.5  # (4) combined within this of the best student, greedy and beam
SPEEDUP = 10.0  # (5) student greedy words/s over teacher beam words/s
PRUNE_LOSS = 0.5  # (6) pruned beam >= combined beam - this
PRUNE_KEEP = 0.2  # (6) pruned non-zero parameters <= this x the combined student's
# a trained system whose greedy BLEU is below this x the baseline's is not a finding but a broken
# training; judged only where the baseline has more than MIN_BASELINE BLEU (near 0, halves are noise)
FAR_BELOW = 0.5
MIN_BASELINE = 1.0
# the systems the pipeline trains (the baseline is the yardstick), and its training rules' names:
# each writes logs/RULE.log
TRAIN_RULES = {name: f"train_{name}" for name in ["teacher", *STUDENTS, "pruned"] if name != "baseline"} | {
    COMBINED: "train_combined"}


def _get(systems: dict, name: str, key: str):
    return (systems.get(name) or {}).get(key)


def _greedy_over_baseline(s: dict, name: str, label: str, margin: float,
                          paper: str) -> tuple[bool, str] | None:
    """Whether ``name``'s greedy BLEU is at least the baseline's + ``margin`` (findings 1 and 3)."""
    mine, base = _get(s, name, "bleu_greedy"), _get(s, "baseline", "bleu_greedy")
    if mine is None or base is None:
        return None
    text = f"{label} {mine:.1f} vs baseline {base:.1f} greedy ({mine - base:+.1f}; paper {paper})"
    return mine >= base + margin, text


def _seq_kd_gain(s: dict) -> tuple[bool, str] | None:
    return _greedy_over_baseline(s, "seq_kd", "Seq-KD", SEQ_KD_GAIN, "+4.2")


def _greedy_gap(s: dict) -> tuple[bool, str] | None:
    greedy, beam = _get(s, "seq_kd", "bleu_greedy"), _get(s, "seq_kd", "bleu_beam")
    if greedy is None or beam is None:
        return None
    base = ""
    bg, bb = _get(s, "baseline", "bleu_greedy"), _get(s, "baseline", "bleu_beam")
    if bg is not None and bb is not None:
        base = f"; baseline {bg:.1f} / {bb:.1f} ({bb - bg:+.1f})"
    return beam - greedy <= GREEDY_GAP, (f"Seq-KD {greedy:.1f} greedy / {beam:.1f} beam ({beam - greedy:+.1f}; "
                                         f"paper 18.9 / 19.0){base}")


def _word_kd(s: dict) -> tuple[bool, str] | None:
    return _greedy_over_baseline(s, "word_kd", "Word-KD", 0.0, "+0.7")


def _combined_best(s: dict) -> tuple[bool, str] | None:
    if _get(s, COMBINED, "bleu_greedy") is None:
        return None
    held, parts = True, []
    for key, label in (("bleu_greedy", "greedy"), ("bleu_beam", "beam")):
        others = {n: _get(s, n, key) for n in STUDENTS if n != COMBINED and _get(s, n, key) is not None}
        mine = _get(s, COMBINED, key)
        if not others or mine is None:
            return None
        best = max(others, key=others.get)
        held = held and mine >= others[best] - CLOSE_TO_BEST
        parts.append(f"{label}: combined {mine:.1f}, best other student {best} {others[best]:.1f}")
    return held, "; ".join(parts)


def _speedup(s: dict) -> tuple[bool, str] | None:
    student, teacher = _get(s, "seq_kd", "words_per_s_greedy"), _get(s, "teacher", "words_per_s_beam")
    if not student or not teacher:
        return None
    text = f"Seq-KD greedy {student:.0f} words/s vs teacher beam {teacher:.0f} ({student / teacher:.1f}x; paper 10x)"
    deployed = _get(s, "pruned_ct2_int8", "words_per_s_greedy")
    if deployed:
        text += f"; pruned student in CTranslate2 int8 {deployed:.0f} words/s ({deployed / teacher:.1f}x)"
    return student / teacher >= SPEEDUP, text


def _pruning(s: dict) -> tuple[bool, str] | None:
    pb, cb = _get(s, "pruned", "bleu_beam"), _get(s, COMBINED, "bleu_beam")
    pn, cn = _get(s, "pruned", "nonzero_params"), _get(s, COMBINED, "nonzero_params")
    if None in (pb, cb, pn, cn) or not cn:
        return None
    held = pb >= cb - PRUNE_LOSS and pn <= PRUNE_KEEP * cn
    return held, (f"pruned {pb:.1f} vs unpruned {cb:.1f} beam ({pb - cb:+.1f}), "
                  f"{pn / cn:.0%} of its weights non-zero (paper: 80% pruned for a few tenths)")


FINDINGS: list[tuple[str, str, Callable[[dict], tuple[bool, str] | None]]] = [
    ("seq_kd_gain", f"Seq-KD lifts greedy BLEU over the baseline student (by >= {SEQ_KD_GAIN})", _seq_kd_gain),
    ("greedy_close_to_beam", f"The Seq-KD student's greedy is within {GREEDY_GAP} BLEU of its beam", _greedy_gap),
    ("word_kd_helps", "Word-KD does not hurt greedy BLEU (paper: +0.7)", _word_kd),
    ("combined_best", f"Seq-KD + Seq-Inter + Word-KD is best or within {CLOSE_TO_BEST} BLEU of the best student",
     _combined_best),
    ("student_faster", f"The student decodes greedily >= {SPEEDUP:.0f}x faster than the teacher's beam", _speedup),
    ("pruning_cheap", f"80% pruned and retrained, the student loses <= {PRUNE_LOSS} BLEU (beam)", _pruning),
]


def check_findings(systems: dict) -> list[dict]:
    """One entry per finding: ``{"id", "finding", "held", "measured"}`` (held None: not measured)."""
    out = []
    for fid, text, test in FINDINGS:
        result = test(systems)
        held, measured = (None, "not measured in this run") if result is None else result
        out.append({"id": fid, "finding": text, "held": held, "measured": measured})
    return out


def findings_markdown(findings: list[dict]) -> str:
    """A numbered list: each finding, held / did not hold / not measured, and the figures."""
    verdict = {True: "**held**. ", False: "**did not hold**. ", None: ""}
    lines = [f"{i}. {f['finding']}: {verdict[f['held']]}{f['measured']}." for i, f in enumerate(findings, 1)]
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
