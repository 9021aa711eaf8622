"""The paper's seven findings, judged from a run's figures with the thresholds of issue 7."""

from __future__ import annotations

from fairseq_seqkd.evaluate.findings import check_findings, findings_markdown


def _sys(greedy, beam, nonzero=1000, wps_greedy=None, wps_beam=None):
    return {"bleu_greedy": greedy, "bleu_beam": beam, "params": 1000, "nonzero_params": nonzero,
            "words_per_s_greedy": wps_greedy, "words_per_s_beam": wps_beam}


def test_findings_held_failed_and_unmeasured():
    systems = {
        "teacher": _sys(35.0, 36.0, wps_beam=100.0),
        "baseline": _sys(30.0, 31.0, wps_greedy=500.0),
        "word_kd": _sys(29.5, 31.0),  # below the baseline: finding 3 fails
        "seq_kd": _sys(32.0, 32.3, wps_greedy=1200.0),  # +2.0 greedy, gap 0.3; 12x the teacher's beam
        "seq_inter": _sys(32.5, 33.0),
        "seq_kd_seq_inter_word_kd": _sys(32.2, 32.6),  # 0.3 and 0.4 behind Seq-Inter: close enough
    }
    by_id = {f["id"]: f for f in check_findings(systems)}
    assert [by_id[k]["held"] for k in ("seq_kd_gain", "greedy_close_to_beam", "word_kd_helps",
                                       "combined_best", "student_faster", "pruning_cheap", "seq_inter_gain")] == \
        [True, True, False, True, True, None, True]
    assert "+2.0" in by_id["seq_kd_gain"]["measured"] and "12.0x" in by_id["student_faster"]["measured"]
    assert "best other student seq_inter 33.0" in by_id["combined_best"]["measured"]

    systems["pruned"] = _sys(31.0, 32.2, nonzero=200)  # -0.4 beam at 20% non-zero: held
    assert {f["id"]: f["held"] for f in check_findings(systems)}["pruning_cheap"] is True
    systems["pruned"] = _sys(31.0, 32.2, nonzero=201)  # keeps more than 20%: not the paper's claim
    findings = check_findings(systems)
    assert {f["id"]: f["held"] for f in findings}["pruning_cheap"] is False
    md = findings_markdown(findings)
    assert md.count("\n") == 7 and "**did not hold**" in md and "**held**" in md
