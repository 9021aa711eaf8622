"""Table 1 of the paper, a JSON file and plots, from the per-system results of one run.

Each stage of a run records its figures in ``RUN/results/NAME.json`` (``fairseq-seqkd
evaluate``), and on each extra test set in ``RUN/results/TESTSET/NAME.json``; the offline
pruning sweep records its points in ``RUN/results/curve/*.json``. The pipeline names the systems,
test sets and curve points its configuration asks for, and only those files are read (any other is
a leftover of an earlier configuration); a folder read by hand without the lists is globbed. The
report has one table per test set, the main one first; the paper's findings, the warnings about a
broken system and the plots are judged on the main one only. Its last section is the run's
provenance (``fairseq_seqkd.evaluate.provenance``). This module only reads files: it never runs a model.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import statistics

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.evaluate.findings import (
    COMBINED,
    SEQ_KD_SEQ_INTER,
    SEQ_KD_WORD_KD,
    STUDENTS,
    TEACHER_ENSEMBLE,
    TEACHER_SEQ_INTER,
    WORD_KD_SEQ_INTER,
    check_findings,
    comparisons,
    far_below_baseline,
    findings_markdown,
    findings_table,
    seed_of,
)
from fairseq_seqkd.evaluate.provenance import collect_provenance, provenance_lines
from fairseq_seqkd.evaluate.significance import DECODINGS, RESAMPLES, SEED, test_set_noise
from fairseq_seqkd.io_utils import atomic_write_text

logger = logging.getLogger(__name__)

# The systems of the paper's Table 1, in its order; a run may have any subset, plus extras.
SYSTEMS = ["teacher", TEACHER_ENSEMBLE, TEACHER_SEQ_INTER, *STUDENTS, "pruned", "pruned_ct2_int8"]
# compared with the teacher; every other system with the baseline
TEACHER_SIZE = {"teacher", TEACHER_ENSEMBLE, TEACHER_SEQ_INTER}
LABELS = {
    "teacher": "Teacher",
    TEACHER_ENSEMBLE: "Teacher ensemble",
    TEACHER_SEQ_INTER: "Teacher + Seq-Inter",
    "baseline": "Baseline student",
    "word_kd": "Word-KD",
    "seq_kd": "Seq-KD",
    "seq_inter": "Baseline + Seq-Inter",
    WORD_KD_SEQ_INTER: "Word-KD + Seq-Inter",
    SEQ_KD_SEQ_INTER: "Seq-KD + Seq-Inter",
    SEQ_KD_WORD_KD: "Seq-KD + Word-KD",
    COMBINED: "Seq-KD + Seq-Inter + Word-KD",
    "pruned": "Pruned 80% (retrained)",
    "pruned_ct2_int8": "Pruned, CTranslate2 int8",
}
KEYS = ["bleu_greedy", "bleu_beam", "ppl", "output_prob_greedy", "params", "nonzero_params", "words_per_s_greedy",
        "words_per_s_beam"]

# Kim & Rush (2016), Table 1, WMT14 En-De (teacher 4x1000, student 2x500): only the figures
# quoted in the project brief; None where we do not quote the paper.
PAPER = {
    "wmt14_en_de": {
        "teacher": {"bleu_greedy": 17.7, "bleu_beam": 19.5},
        "baseline": {"bleu_greedy": 14.7, "bleu_beam": 17.6},
        "word_kd": {"bleu_greedy": 15.4, "bleu_beam": None},
        "seq_kd": {"bleu_greedy": 18.9, "bleu_beam": 19.0},
    },
}


CURVE = "curve"  # results/curve/: the pruning sweep, not a test set
MAIN = "test"


def _systems(results_dir: str, names: list[str] | None = None, test_set: str = MAIN) -> dict[str, dict]:
    """``DIR/NAME.json`` for each of ``names`` (None: every ``DIR/*.json``) as systems in the paper's order
    (then others, sorted), every key of KEYS present."""
    if names is None:
        files = sorted(glob.glob(os.path.join(results_dir, "*.json")))
        if not files:
            raise UserError(f"{results_dir}: no results (*.json); run the pipeline's evaluation stages first")
        systems = {os.path.splitext(os.path.basename(path))[0]: _load(path) for path in files}
    else:
        on = "" if test_set == MAIN else f" on test set {test_set}"
        systems = {name: _load_listed(os.path.join(results_dir, f"{name}.json"), f"{name}{on}", "--systems")
                   for name in names}
    order = [s for s in SYSTEMS if s in systems] + sorted(s for s in systems if s not in SYSTEMS)
    return {s: {k: systems[s].get(k) for k in KEYS} | {k: v for k, v in systems[s].items() if k not in KEYS}
            for s in order}


def _curve(results_dir: str, names: list[str] | None = None) -> list[dict]:
    """The pruning curve's points, ``DIR/curve/NAME.json`` for each of ``names`` (None: every one), by ratio."""
    folder = os.path.join(results_dir, CURVE)
    if names is None:
        points = [_load(p) for p in sorted(glob.glob(os.path.join(folder, "*.json")))]
    else:
        points = [_load_listed(os.path.join(folder, f"{name}.json"), f"the pruning-curve point {name}", "--curve")
                  for name in sorted(names)]
    return sorted(points, key=lambda r: float(r.get("prune_ratio", 0)))


def extra_test_set_names(run_dir: str) -> list[str]:
    """The extra test sets a run folder holds results for: the folders of RUN/results but curve, sorted."""
    results_dir = os.path.join(run_dir, "results")
    return sorted(name for name in os.listdir(results_dir) if name != CURVE
                  and glob.glob(os.path.join(results_dir, glob.escape(name), "*.json")))


def collect(run_dir: str, test_sets: list[str] | None = None, main_test_set: str = MAIN,
            systems: list[str] | None = None, curve: list[str] | None = None,
            compare: list[tuple[str, str]] | None = None) -> dict:
    """Read ``RUN/results`` into ``{"test_set", "systems", "pruning_curve", "findings", "extra_test_sets",
    "findings_by_test_set", "warnings"}``.

    ``systems`` and ``findings`` are the main test set's (``main_test_set`` names it);
    ``extra_test_sets`` maps each of ``test_sets`` to ``{"systems": ..., "findings": ...}``, read from
    ``RUN/results/NAME/``; ``findings_by_test_set`` maps every test set, the main one first, to its findings.
    Where a system's results record its outputs, the outputs are rescored for intervals and p-values
    (``fairseq_seqkd.evaluate.significance``), and the findings judged against that noise.
    With ``systems``, exactly ``RUN/results/NAME.json`` for each (and ``RUN/results/TESTSET/NAME.json``,
    ``RUN/results/curve/POINT.json`` for each of ``test_sets`` and ``curve``; None: none) is read, a
    missing one an error, any other file ignored. Without, every file is read: every folder of results
    but curve a test set, and every curve point unless ``curve`` names them.
    ``compare``: pairs (A, B) of systems; ``comparisons`` maps every test set to BLEU(A) - BLEU(B), greedy
    and beam, with its 95% interval and paired-bootstrap p (``compared``), where both were scored there.
    """
    results_dir = os.path.join(run_dir, "results")
    full, seeds = split_seeds(_systems(results_dir, systems))
    if systems is not None:  # the further seeds' trainings are scored on the main test set only
        systems = [name for name in systems if seed_of(name)[1] is None]
    if systems is not None and curve is None:
        curve = []
    points = _curve(results_dir, curve)
    if test_sets is None:
        test_sets = [] if systems is not None else extra_test_set_names(run_dir)
    compare = list(compare or [])
    unknown = sorted({name for pair in compare for name in pair if name not in full})
    if unknown:
        raise UserError(f"--compare: {', '.join(unknown)} not among the systems of {results_dir} "
                        f"({', '.join(full)})")
    findings, compared = _judged(results_dir, full, compare)
    extra = {}
    by_pair = {main_test_set: compared}
    for name in test_sets:
        folder = os.path.join(results_dir, name)
        extra[name] = {"systems": _systems(folder, systems, name)}
        extra[name]["findings"], by_pair[name] = _judged(folder, extra[name]["systems"], compare)
    by_test_set = {main_test_set: findings} | {name: e["findings"] for name, e in extra.items()}
    return {"test_set": main_test_set, "systems": full, "pruning_curve": points, "findings": findings,
            "extra_test_sets": extra, "findings_by_test_set": by_test_set, "warnings": far_below_baseline(full),
            "seeds": seeds, "comparisons": by_pair}


def split_seeds(systems: dict) -> tuple[dict, dict]:
    """(the main systems, the training noise): each system trained with further seeds (NAME.seedS) as
    ``{"systems": [NAME, NAME.seedS, ...], "bleu_greedy": [...], "bleu_beam": [...], "mean_greedy",
    "sd_greedy", "mean_beam", "sd_beam"}`` (sd: the sample standard deviation over the seeds)."""
    main = {n: r for n, r in systems.items() if seed_of(n)[1] is None}
    noise = {}
    for name in main:
        runs = [name] + sorted((n for n in systems if seed_of(n)[0] == name and seed_of(n)[1] is not None),
                               key=lambda n: seed_of(n)[1])
        if len(runs) < 2:
            continue
        entry: dict = {"systems": runs}
        for decoding in ("greedy", "beam"):
            values = [systems[n].get(f"bleu_{decoding}") for n in runs]
            entry[f"bleu_{decoding}"] = values
            if None not in values:
                entry[f"mean_{decoding}"] = round(statistics.mean(values), 2)
                entry[f"sd_{decoding}"] = round(statistics.stdev(values), 2)
        noise[name] = entry
    return main, noise


def seeds_table(seeds: dict) -> str:
    """The training noise: each seeded system's BLEU over its seeds, mean ± standard deviation, and its mean's
    difference from the baseline student's mean."""
    if not seeds:
        return ""
    lines = ["| System | Seeds | BLEU K=1 | BLEU K=5 | Δ K=1 (means) | Δ K=5 (means) | K=1 each | K=5 each |",
             "|---|---|---|---|---|---|---|---|"]
    base = seeds.get("baseline", {})
    for name, e in seeds.items():
        cells = [LABELS.get(name, name), str(len(e["systems"]))]
        for decoding in ("greedy", "beam"):
            mean = e.get(f"mean_{decoding}")
            cells.append("–" if mean is None else f"{mean:.1f} ± {e[f'sd_{decoding}']:.2f}")
        for decoding in ("greedy", "beam"):
            mine, theirs = e.get(f"mean_{decoding}"), base.get(f"mean_{decoding}")
            cells.append("" if name == "baseline" or mine is None or theirs is None else f"{mine - theirs:+.1f}")
        for decoding in ("greedy", "beam"):
            cells.append(" / ".join(_fmt(v) for v in e[f"bleu_{decoding}"]))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("\nEach system trained once per seed of `student_seeds` (the teacher: `teacher_seeds`; the first the "
                 "main table's), everything else the same, scored on the main test set; ± is the standard "
                 "deviation over the seeds (n - 1), the "
                 "spread a difference between two single trainings must clear.")
    return "\n".join(lines) + "\n"


def _judged(results_dir: str, systems: dict, compare: list[tuple[str, str]] = ()) -> tuple[list[dict], list[dict]]:
    """The findings on one test set, judged against the noise of its rescored outputs (adds theirs to ``systems``),
    and ``compared``'s rows of the pairs of ``compare`` both of which were scored on it."""
    asked = [(a, d, b, d) for a, b in compare for d in DECODINGS]
    noise = test_set_noise(results_dir, systems, [*comparisons(systems), *asked])
    return check_findings(systems, noise), compared(noise, compare)


def compared(noise: dict, compare: list[tuple[str, str]]) -> list[dict]:
    """``{"a", "b", "greedy", "beam"}`` for each pair (A, B) of ``compare`` in ``noise`` (``test_set_noise``'s),
    each decoding's ``{"diff", "interval", "p"}`` of BLEU(A) - BLEU(B) (None where one was not scored)."""
    rows = []
    for a, b in compare:
        cells = {d: noise.get((a, d, b, d)) for d in DECODINGS}
        if any(cells.values()):
            rows.append({"a": a, "b": b, **cells})
    return rows


def comparisons_table(by_test_set: dict[str, list[dict]]) -> str:
    """The asked comparisons (``report_compare``), a row per pair and test set."""
    rows = [(name, r) for name, found in by_test_set.items() for r in found]
    if not rows:
        return ""

    def cell(c: dict | None) -> str:
        if not c:
            return "–"
        low, high = c["interval"]
        return f"{c['diff']:+.1f} [{low:+.1f}, {high:+.1f}], p {c['p']:.3f}"

    lines = ["| A | B | test set | BLEU(A) - BLEU(B), K=1 | K=5 |", "|---|---|---|---|---|"]
    lines += [f"| {_label(r['a'])} | {_label(r['b'])} | {name} | {cell(r['greedy'])} | {cell(r['beam'])} |"
              for name, r in rows]
    lines.append(f"\nEach cell: the difference, its 95% interval (the two systems scored on the same {RESAMPLES} "
                 f"resamples, seed {SEED}) and the paired-bootstrap p-value of A against B (sacrebleu's): an "
                 "interval that holds 0 is a difference within the noise of the test set.")
    return "\n".join(lines) + "\n"


def _load_listed(path: str, what: str, option: str) -> dict:
    """``_load`` for a file the run's configuration asks for: missing, it names the stage to rerun."""
    if not os.path.exists(path):
        raise UserError(f"{path}: missing, the evaluation of {what} has not run; rerun the pipeline to "
                        f"produce it (or leave it out of {option})")
    return _load(path)


def _load(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e}); delete it and rerun the stage that wrote it") from e


def _fmt(v, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, int) and v >= 10_000:
        return f"{v / 1e6:.2f}M" if v >= 1_000_000 else f"{v / 1e3:.1f}k"
    return str(v)


def _label(name: str) -> str:
    base, seed = seed_of(name)
    if base.startswith("seq_kd.") and base not in LABELS:  # a Seq-KD variant of the recipes (seqkd_variants)
        label = f"Seq-KD ({base.removeprefix('seq_kd.')})"
    else:
        label = LABELS.get(base, base)
    return label if seed is None else f"{label} (seed {seed})"


def _delta(systems: dict, name: str, key: str) -> str:
    """``name``'s ``key`` minus that of the model of its size trained on the references alone (the teacher
    for the teacher's rows, the baseline student for the others); '' for those two themselves."""
    ref = "teacher" if name in TEACHER_SIZE else "baseline"
    mine, theirs = systems[name].get(key), (systems.get(ref) or {}).get(key)
    if name == ref or mine is None or theirs is None:
        return ""
    return f"{mine - theirs:+.1f}"


def _percent(v) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f}%" if v >= 0.001 else f"{100 * v:.2g}%"  # an untrained model's: 0.0021%


def markdown_table(systems: dict, paper: str | None = None) -> str:
    """The paper's Table 1 layout for one test set: BLEU K=1/K=5 and their differences from the model of the
    same size, perplexity, p(t = y-hat), parameters, speed."""
    ref = PAPER.get(paper or "", {})
    head = ["System", "BLEU K=1", "Δ K=1", "BLEU K=5", "Δ K=5", "PPL", "p(t=ŷ)", "Params", "Non-zero", "words/s K=1",
            "words/s K=5"]
    if ref:
        head += ["Paper K=1", "Paper K=5"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in systems.items():
        row = [_label(name), _fmt(r["bleu_greedy"]), _delta(systems, name, "bleu_greedy"), _fmt(r["bleu_beam"]),
               _delta(systems, name, "bleu_beam"), _fmt(r["ppl"], 2), _percent(r["output_prob_greedy"]),
               _fmt(r["params"]), _fmt(r["nonzero_params"]), _fmt(r["words_per_s_greedy"], 0),
               _fmt(r["words_per_s_beam"], 0)]
        if ref:
            p = ref.get(name, {})
            row += [_fmt(p.get("bleu_greedy")), _fmt(p.get("bleu_beam"))]
        lines.append("| " + " | ".join(row) + " |")
    sig = next((r.get("bleu_signature") for r in systems.values() if r.get("bleu_signature")), None)
    if sig:
        lines.append(f"\nBLEU: sacrebleu, signature `{sig}`; K=1 is greedy, K=5 is beam 5. Δ: the difference from "
                     "the model of the same size trained on the references alone (the teacher for the teacher's "
                     "rows, the baseline student for the students'). p(t=ŷ): the mean probability under the model "
                     "of its greedy output (fairseq-generate's scores), how peaked the model is.")
    return "\n".join(lines) + "\n"


def _with_ci(r: dict, key: str) -> str:
    if r.get(key) is None:
        return "–"
    low, high = r.get(f"{key}_ci") or (None, None)
    return _fmt(r[key]) + ("" if low is None else f" ± {(high - low) / 2:.1f}")


def _p(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def noise_table(systems: dict) -> str:
    """BLEU and chrF, greedy and beam, each ± half its 95% interval and its p-value against the baseline."""
    if not any(r.get("bleu_greedy_ci") or r.get("bleu_beam_ci") for r in systems.values()):
        return ""
    head = ["System", "BLEU K=1", "p", "BLEU K=5", "p", "chrF K=1", "p", "chrF K=5", "p"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in systems.items():
        row = [_label(name)]
        for metric, p in (("bleu", "p"), ("chrf", "p_chrf")):
            for decoding in ("greedy", "beam"):
                row += [_with_ci(r, f"{metric}_{decoding}"), _p(r.get(f"{p}_{decoding}"))]
        lines.append("| " + " | ".join(row) + " |")
    sigs = {k: next((r[k] for r in systems.values() if r.get(k)), None)
            for k in ("significance_signature", "chrf_signature")}
    paired = any(r.get("p_greedy") is not None or r.get("p_beam") is not None for r in systems.values())
    based = "the baseline student (the teacher's too)" if paired else "none (no baseline)"
    lines.append(f"\n± is half the 95% confidence interval, and p the p-value against {based}, of sacrebleu's "
                 f"paired bootstrap resampling ({RESAMPLES:,} resamples, seed {SEED}; the interval is centred on the "
                 f"resamples' mean, exact in report.json). p counts (plus one) the resamples whose difference "
                 f"lies strictly above the real one, so a system scoring as the baseline in every resample gets "
                 f"p = {1 / (RESAMPLES + 1):.3f}: read p beside the difference. BLEU "
                 f"`{sigs['significance_signature']}`, chrF `{sigs['chrf_signature']}`.")
    return "\n".join(lines) + "\n"


def plot(report: dict, out_dir: str) -> list[str]:
    """BLEU against words/s, BLEU against parameters, and the pruning curve, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = report["systems"]
    written = []

    colors = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(systems)}

    def scatter(xkey: str, xlabel: str, fname: str, logx: bool) -> None:
        # one colour per system, circle = greedy (K=1), square = beam 5 (K=5); a legend, not labels
        fig, ax = plt.subplots(figsize=(8, 4.6))
        for name, r in systems.items():
            for decoding, marker in (("greedy", "o"), ("beam", "s")):
                x = r.get(xkey.format(decoding=decoding))
                y = r.get(f"bleu_{decoding}")
                if x is None or y is None:
                    continue
                label = f"{LABELS.get(name, name)} ({'K=1' if decoding == 'greedy' else 'K=5'})"
                ax.scatter([x], [y], marker=marker, s=45, color=colors[name], label=label)
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("BLEU")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        fig.tight_layout()
        path = os.path.join(out_dir, fname)
        _save(fig, path)
        plt.close(fig)
        written.append(path)

    scatter("words_per_s_{decoding}", "source words per second", "bleu_vs_speed.png", True)
    scatter("nonzero_params", "non-zero parameters", "bleu_vs_params.png", True)
    curve = report.get("pruning_curve") or []
    if curve:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for key, label in (("bleu_greedy", "pruned, no retraining (K=1)"),):
            pts = [(float(c["prune_ratio"]) * 100, c[key]) for c in curve if c.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
        pruned = systems.get("pruned")
        if pruned and pruned.get("bleu_greedy") is not None and pruned.get("params"):
            ratio = 100 * (1 - pruned["nonzero_params"] / pruned["params"])
            ax.scatter([ratio], [pruned["bleu_greedy"]], marker="*", s=120, color="k", label="retrained (K=1)")
        ax.set_xlabel("weights pruned (%)")
        ax.set_ylabel("BLEU")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, "pruning_curve.png")
        _save(fig, path)
        plt.close(fig)
        written.append(path)
    return written


def _save(fig, path: str) -> None:
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def tables_markdown(report: dict, paper: str | None = None) -> str:
    """One table per test set, the main one first; the paper's figures only beside the main one."""
    main = f"## Test set: {report['test_set']}\n\n" + markdown_table(report["systems"], paper)
    if report.get("warnings"):
        main += "\n" + "\n\n".join(f"**Warning**: {w}" for w in report["warnings"]) + "\n"
    noise = noise_table(report["systems"])
    parts = [main + ("\n" + noise if noise else "")]
    for name, extra in report["extra_test_sets"].items():
        noise = noise_table(extra["systems"])
        parts.append(f"## Test set: {name}\n\n" + markdown_table(extra["systems"])
                     + "\nScored as the main test set; PPL on the main test set only.\n"
                     + ("\n" + noise if noise else ""))
    return "\n".join(parts)


def write_report(run_dir: str, paper: str | None = None, plots: bool = True, test_sets: list[str] | None = None,
                 main_test_set: str = MAIN, systems: list[str] | None = None,
                 curve: list[str] | None = None, compare: list[tuple[str, str]] | None = None) -> dict[str, str]:
    """Write RUN/report.md, RUN/report.json and the PNG plots; return their paths (and the tables).

    ``test_sets``, ``systems``, ``curve`` and ``compare`` select the results read, as in ``collect``."""
    report = collect(run_dir, test_sets, main_test_set, systems, curve, compare)
    for warning in report["warnings"]:
        logger.warning(warning)
    tables = tables_markdown(report, paper)
    pngs = plot(report, run_dir) if plots else []
    report["provenance"] = collect_provenance(run_dir)
    md = (f"# Results\n\n{tables}\n## The paper's findings in this run (test set: {report['test_set']})\n\n"
          + findings_markdown(report["findings"])
          + "\nOn every test set (the difference behind each verdict, its 95% interval and p-value; see "
          "`fairseq_seqkd/evaluate/findings.py` for what held, within noise and did not hold mean):\n\n"
          + findings_table(report["findings_by_test_set"]))
    pairs = comparisons_table(report["comparisons"])
    if pairs:
        md += f"\n## Comparisons\n\n{pairs}"
    seeds = seeds_table(report["seeds"])
    if seeds:
        md += f"\n## Training noise: students trained with several seeds ({report['test_set']})\n\n{seeds}"
    if pngs:
        md += "\n" + "\n".join(f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in pngs) + "\n"
    md += ("\n## Provenance\n\nWhat made this run, one item a line, for comparing a rerun line by line (the "
           "same under `provenance` in report.json): the code, the versions, each recipe invocation (a resumed "
           "run has several), each checkpoint's sha256 and each job's wall seconds (`times/*.tsv`).\n\n"
           "```text\n" + "\n".join(provenance_lines(report["provenance"])) + "\n```\n")
    paths = {"markdown": os.path.join(run_dir, "report.md"), "json": os.path.join(run_dir, "report.json")}
    atomic_write_text(paths["markdown"], md)
    atomic_write_text(paths["json"], json.dumps(report, indent=2) + "\n")
    for p in pngs:
        paths[os.path.basename(p)] = p
    return paths | {"table": tables}
