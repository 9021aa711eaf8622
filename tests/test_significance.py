"""Intervals and p-values are sacrebleu's paired bootstrap, as its command line prints them; the
findings' three verdicts follow the rules of findings.py's docstring."""

from __future__ import annotations

import json
import random
import re
import subprocess

import pytest
from conftest import BIN

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.evaluate.findings import (
    FAILED,
    HELD,
    POINT_ONLY,
    WITHIN_NOISE,
    Claim,
    check_findings,
    claim_verdict,
    comparisons,
)
from fairseq_seqkd.evaluate.report import collect, write_report
from fairseq_seqkd.evaluate.scoring import score_system
from fairseq_seqkd.evaluate.significance import pair_noise

WORDS = [f"w{i}" for i in range(300)]


def _corpus(n: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(4, 15))) for _ in range(n)]


def _noisy(refs: list[str], keep: float, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(w if rng.random() < keep else rng.choice(WORDS) for w in r.split()) for r in refs]


def _gen_output(path, hyps: list[str]) -> None:
    """A fairseq-generate output: blocks out of id order, as fairseq prints them."""
    order = list(range(len(hyps)))
    random.Random(1).shuffle(order)
    lines = []
    for i in order:
        lines += [f"S-{i}\tsource {i}", f"H-{i}\t-0.5\t{hyps[i]}", f"D-{i}\t-0.5\t{hyps[i]}", f"P-{i}\t-0.1"]
    lines.append(f"Translated {len(hyps)} sentences (100 tokens) in 0.5s (10 sentences/s, 100 tokens/s)")
    path.write_text("\n".join(lines) + "\n")


def _evaluated(run, folder: str, systems: dict[str, tuple[list[str], list[str]]], refs: list[str]) -> None:
    """Each system's greedy and beam outputs under RUN/eval/FOLDER, scored into RUN/results/FOLDER."""
    (run / "eval" / folder).mkdir(parents=True, exist_ok=True)
    ref = run / "eval" / folder / "ref.txt"
    ref.write_text("\n".join(refs) + "\n")
    for name, (greedy, beam) in systems.items():
        outputs = []
        for decoding, hyps in (("greedy", greedy), ("beam", beam)):
            path = run / "eval" / folder / f"{name}.{decoding}.txt"
            _gen_output(path, hyps)
            outputs.append((str(path), decoding, None))
        score_system(str(run / "results" / folder), name, outputs, str(ref))


def _cli(ref, *systems) -> tuple[list[dict], dict[str, str]]:
    """``sacrebleu REF -i A B --paired-bs -m bleu chrf`` (4 decimals): per system, per metric, score,
    mean, half-interval and p; and the signatures."""
    proc = subprocess.run([str(BIN / "sacrebleu"), str(ref), "-i", *map(str, systems), "--paired-bs", "-m", "bleu",
                           "chrf", "-f", "text", "-w", "4", "--no-color"], capture_output=True, text=True, check=True)
    rows, cells = [], re.compile(r"([\d.]+) \(([\d.]+) ± ([\d.]+)\)")
    for line in proc.stdout.splitlines():
        found = cells.findall(line)
        if found:
            rows.append({m: tuple(map(float, f)) for m, f in zip(("bleu", "chrf"), found, strict=True)})
        elif "p = " in line:
            rows[-1] |= {f"p_{m}": float(p) for m, p in zip(("bleu", "chrf"), re.findall(r"p = ([\d.]+)", line),
                                                              strict=True)}
    sigs = dict(re.findall(r"^ - (BLEU|chrF2)\s+(\S+)$", proc.stdout, re.M))
    return rows, sigs


def test_report_intervals_and_p_values_are_sacrebleus_command_lines(tmp_path):
    refs = _corpus()
    base, seq_kd = _noisy(refs, 0.5, 2), _noisy(refs, 0.6, 3)
    _evaluated(tmp_path, "", {"baseline": (base, _noisy(refs, 0.55, 4)),
                              "seq_kd": (seq_kd, _noisy(refs, 0.62, 5))}, refs)
    report = collect(str(tmp_path), systems=["baseline", "seq_kd"])
    for name, hyps in (("baseline", base), ("seq_kd", seq_kd)):
        (tmp_path / f"{name}.plain").write_text("\n".join(hyps) + "\n")
    rows, sigs = _cli(tmp_path / "eval" / "ref.txt", tmp_path / "baseline.plain", tmp_path / "seq_kd.plain")
    for name, cli in zip(("baseline", "seq_kd"), rows, strict=True):
        mine = report["systems"][name]
        for metric, point in (("bleu", mine["bleu_greedy"]), ("chrf", mine["chrf_greedy"])):
            score, mean, half = cli[metric]
            low, high = mine[f"{metric}_greedy_ci"]
            assert point == pytest.approx(score, abs=0.005)
            assert (low + high) / 2 == pytest.approx(mean, abs=1.5e-4)
            assert (high - low) / 2 == pytest.approx(half, abs=1.5e-4)
        p = {"bleu": mine["p_greedy"], "chrf": mine["p_chrf_greedy"]}
        if name == "baseline":
            assert p == {"bleu": None, "chrf": None} and "p_bleu" not in cli
        else:
            assert p == {"bleu": cli["p_bleu"], "chrf": cli["p_chrf"]}
    assert report["systems"]["seq_kd"]["significance_signature"] == sigs["BLEU"]
    assert report["systems"]["seq_kd"]["chrf_signature"] == sigs["chrF2"]
    assert "seed:12345" in sigs["BLEU"] and "bs:1000" in sigs["BLEU"]
    # the finding's pair: the p-value the command line gives seq_kd against the baseline, and an interval
    # on the difference around it
    [gain] = [f for f in report["findings"] if f["id"] == "seq_kd_gain"][0]["noise"]
    assert gain["p"] == cli["p_bleu"] and gain["interval"][0] < gain["diff"] < gain["interval"][1]


def test_a_system_against_itself_has_no_noise():
    refs = _corpus()
    hyps = _noisy(refs, 0.5, 2)
    noise = pair_noise(hyps, hyps, refs)
    assert noise["diff"] == 0 and noise["interval"] == [0, 0]
    # sacrebleu counts resampled differences strictly above the real one (0): none, so p = 1 / 1001
    assert noise["p"] == round(1 / 1001, 4)


def test_report_has_noise_tables_and_findings_on_every_test_set(tmp_path):
    refs, news = _corpus(), _corpus(seed=9)
    for folder, r in (("", refs), ("news", news)):
        _evaluated(tmp_path, folder, {
            "teacher": (_noisy(r, 0.9, 1), _noisy(r, 0.92, 2)),
            "baseline": (_noisy(r, 0.4, 3), _noisy(r, 0.45, 4)),
            "seq_kd": (_noisy(r, 0.8, 5), _noisy(r, 0.8, 6)),
        }, r)
    write_report(str(tmp_path), plots=False, systems=["teacher", "baseline", "seq_kd"], test_sets=["news"])
    report = json.loads((tmp_path / "report.json").read_text())
    for systems in (report["systems"], report["extra_test_sets"]["news"]["systems"]):
        for key in ("bleu_greedy_ci", "bleu_beam_ci", "chrf_greedy", "chrf_beam", "chrf_greedy_ci", "chrf_beam_ci",
                    "p_greedy", "p_beam", "chrf_signature"):
            assert systems["seq_kd"][key] is not None, key
        assert systems["teacher"]["p_greedy"] < 0.05 and systems["baseline"]["p_greedy"] is None
    assert list(report["findings_by_test_set"]) == ["test", "news"]
    gain = {f["id"]: f for f in report["findings_by_test_set"]["news"]}["seq_kd_gain"]
    assert gain["verdict"] == HELD and gain["noise"][0]["p"] < 0.05
    md = (tmp_path / "report.md").read_text()
    assert md.count("| System | BLEU K=1 | p | BLEU K=5 | p | chrF K=1 | p | chrF K=5 | p |") == 2
    assert "| Finding | test | news |" in md and "| 1. seq_kd_gain | held (+" in md
    assert "against the baseline student (the teacher's too)" in md and "seed 12345" in md

    # an output rewritten after it was scored: the report refuses it rather than judge another text
    _gen_output(tmp_path / "eval" / "news" / "seq_kd.greedy.txt", _noisy(news, 0.3, 7))
    with pytest.raises(UserError, match="changed after it was scored; rerun the evaluation of seq_kd"):
        collect(str(tmp_path), systems=["teacher", "baseline", "seq_kd"], test_sets=["news"])


def test_claim_verdicts():
    gain = Claim("gain", "seq_kd", "greedy", "baseline", "greedy", 1.0)
    assert claim_verdict(gain, 2.0, {"p": 0.001, "interval": [1.2, 2.8]}) == HELD
    assert claim_verdict(gain, 2.0, {"p": 0.001, "interval": [0.6, 3.4]}) == WITHIN_NOISE  # crosses 1.0
    assert claim_verdict(gain, 1.5, {"p": 0.08, "interval": [1.1, 1.9]}) == WITHIN_NOISE  # not significant
    assert claim_verdict(gain, 0.9, {"p": 0.001, "interval": [0.5, 1.3]}) == FAILED
    assert claim_verdict(gain, 1.5, None) == POINT_ONLY
    gap = Claim("at_most", "seq_kd", "beam", "seq_kd", "greedy", 0.5)
    assert claim_verdict(gap, 0.2, {"p": 0.3, "interval": [-0.1, 0.5]}) == HELD
    assert claim_verdict(gap, 0.2, {"p": 0.3, "interval": [-0.3, 0.7]}) == WITHIN_NOISE
    assert claim_verdict(gap, 0.6, {"p": 0.001, "interval": [0.4, 0.8]}) == FAILED


def _sys(greedy, beam, nonzero=1000):
    return {"bleu_greedy": greedy, "bleu_beam": beam, "params": 1000, "nonzero_params": nonzero}


def test_findings_verdicts_on_constructed_results():
    systems = {"baseline": _sys(30.0, 31.0), "word_kd": _sys(30.3, 31.0), "seq_kd": _sys(32.0, 32.3),
               "seq_kd_seq_inter_word_kd": _sys(32.2, 32.6), "pruned": _sys(31.9, 32.4, nonzero=150)}
    pairs = comparisons(systems)
    assert ("seq_kd", "greedy", "baseline", "greedy") in pairs and ("seq_kd", "beam", "seq_kd", "greedy") in pairs
    assert ("seq_kd_seq_inter_word_kd", "beam", "pruned", "beam") in pairs
    noise = {
        ("seq_kd", "greedy", "baseline", "greedy"): {"p": 0.001, "interval": [1.3, 2.7]},  # held
        ("seq_kd", "beam", "seq_kd", "greedy"): {"p": 0.2, "interval": [-0.2, 0.8]},  # gap may exceed 0.5
        ("word_kd", "greedy", "baseline", "greedy"): {"p": 0.3, "interval": [-0.4, 1.0]},  # gain not significant
        ("seq_kd_seq_inter_word_kd", "beam", "pruned", "beam"): {"p": 0.4, "interval": [-0.1, 0.5]},  # held
    }
    by_id = {f["id"]: f for f in check_findings(systems, noise)}
    assert by_id["seq_kd_gain"]["verdict"] == HELD and "[+1.30, +2.70] p=0.001" in by_id["seq_kd_gain"]["measured"]
    assert by_id["greedy_close_to_beam"]["verdict"] == WITHIN_NOISE
    assert by_id["word_kd_helps"]["verdict"] == WITHIN_NOISE
    assert by_id["pruning_cheap"]["verdict"] == HELD
    # combined best: its pairs (best other student - combined) were not measured: point values only
    assert by_id["combined_best"]["verdict"] == POINT_ONLY and by_id["combined_best"]["held"] is True
    assert by_id["student_faster"]["verdict"] == "not measured"
    systems["pruned"]["nonzero_params"] = 300  # keeps 30%: fails whatever the BLEU's noise
    assert {f["id"]: f for f in check_findings(systems, noise)}["pruning_cheap"]["verdict"] == FAILED
    systems["word_kd"]["bleu_greedy"] = 29.9  # below the baseline: did not hold, even within noise
    assert {f["id"]: f for f in check_findings(systems, noise)}["word_kd_helps"]["verdict"] == FAILED


def test_asked_comparisons_are_sacrebleus_paired_test_on_every_test_set(tmp_path):
    """report_compare's pairs (report --compare A:B): BLEU(A) - BLEU(B) with the p-value sacrebleu's command line
    gives A against B, on each test set; a system not scored is refused by name."""
    refs, val = _corpus(), _corpus(seed=7)
    _evaluated(tmp_path, "", {"baseline": (_noisy(refs, 0.5, 2), _noisy(refs, 0.55, 4)),
                              "seq_kd.first": (_noisy(refs, 0.6, 3), _noisy(refs, 0.62, 5)),
                              "seq_kd.mbr": (_noisy(refs, 0.7, 6), _noisy(refs, 0.72, 8))}, refs)
    _evaluated(tmp_path, "val", {"baseline": (_noisy(val, 0.5, 2), _noisy(val, 0.5, 4)),
                                 "seq_kd.first": (_noisy(val, 0.6, 3), _noisy(val, 0.6, 5)),
                                 "seq_kd.mbr": (_noisy(val, 0.6, 9), _noisy(val, 0.6, 10))}, val)
    names = ["baseline", "seq_kd.first", "seq_kd.mbr"]
    report = collect(str(tmp_path), test_sets=["val"], systems=names, compare=[("seq_kd.mbr", "seq_kd.first")])
    [row] = report["comparisons"]["test"]
    [on_val] = report["comparisons"]["val"]
    assert on_val["a"] == "seq_kd.mbr" and on_val["greedy"]["diff"] != row["greedy"]["diff"]
    for decoding in ("greedy", "beam"):
        plain = {}
        for name in ("seq_kd.first", "seq_kd.mbr"):
            plain[name] = tmp_path / f"{name}.{decoding}.plain"
            hyps = [line.split("\t")[2] for line in (tmp_path / "eval" / f"{name}.{decoding}.txt").read_text()
                    .splitlines() if line.startswith("H-")]
            order = [int(line.split("\t")[0][2:]) for line in (tmp_path / "eval" / f"{name}.{decoding}.txt")
                     .read_text().splitlines() if line.startswith("H-")]
            plain[name].write_text("\n".join(h for _, h in sorted(zip(order, hyps))) + "\n")
        rows, _ = _cli(tmp_path / "eval" / "ref.txt", plain["seq_kd.first"], plain["seq_kd.mbr"])
        cell = row[decoding]
        assert cell["p"] == rows[1]["p_bleu"]
        assert cell["diff"] == pytest.approx(rows[1]["bleu"][0] - rows[0]["bleu"][0], abs=0.01)
        assert cell["interval"][0] <= cell["diff"] <= cell["interval"][1]
    paths = write_report(str(tmp_path), plots=False, test_sets=["val"], systems=names,
                         compare=[("seq_kd.mbr", "seq_kd.first")])
    md = open(paths["markdown"]).read()
    assert "## Comparisons" in md and "| Seq-KD (mbr) | Seq-KD (first) | test |" in md
    assert "| Seq-KD (mbr) | Seq-KD (first) | val |" in md
    with pytest.raises(UserError, match="seq_kd.nope"):
        collect(str(tmp_path), systems=names, compare=[("seq_kd.nope", "baseline")])
