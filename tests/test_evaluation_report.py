"""Evaluation refuses a partial test set; the report writes Table 1, JSON and plots."""

from __future__ import annotations

import json

import pytest
from sacrebleu.metrics import BLEU

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.evaluation import evaluate_generation, update_system_result
from fairseq_seqkd.report import KEYS, write_report


def _gen_output(path, hyps: dict[int, str], seconds: float = 0.5):
    lines = []
    for i, h in hyps.items():
        lines += [f"S-{i}\tsource words {i}", f"H-{i}\t-0.5\t{h}", f"D-{i}\t-0.5\t{h}", f"P-{i}\t-0.1 -0.2"]
    lines.append(f"2026-01-01 | INFO | fairseq_cli.generate | Translated {len(hyps)} sentences "
                 f"(100 tokens) in {seconds}s (10 sentences/s, 100 tokens/s)")
    path.write_text("\n".join(lines) + "\n")


def test_bleu_matches_sacrebleu_and_counts_words(tmp_path):
    refs = ["the cat sat on the mat", "a dog runs", "hello world again"]
    hyps = {2: "hello world", 0: "the cat sat on a mat", 1: "a dog runs"}  # out of order, as fairseq prints
    (tmp_path / "ref").write_text("\n".join(refs) + "\n")
    _gen_output(tmp_path / "gen", hyps)
    res = evaluate_generation(str(tmp_path / "gen"), str(tmp_path / "ref"))
    expected = BLEU().corpus_score([hyps[i] for i in range(3)], [refs]).score
    assert res["bleu"] == round(expected, 2)
    assert res["sentences"] == 3
    assert res["words_per_s"] == pytest.approx(9 / 0.5)  # 'source words i' x 3


def test_missing_sentences_are_an_error_not_a_score(tmp_path):
    (tmp_path / "ref").write_text("\n".join(f"s {i}" for i in range(12)) + "\n")
    _gen_output(tmp_path / "gen", {i: f"s {i}" for i in range(8)})  # fairseq dropped the last 4
    with pytest.raises(UserError) as e:
        evaluate_generation(str(tmp_path / "gen"), str(tmp_path / "ref"))
    msg = str(e.value)
    assert "8 hypotheses for a test set of 12" in msg and "8, 9, 10, 11" in msg
    assert "--required-batch-size-multiple 1" in msg and str(tmp_path / "gen") in msg


def test_report_writes_table_json_and_plots(tmp_path):
    res = tmp_path / "results"
    update_system_result(str(res), "teacher", {"bleu_greedy": 30.0, "bleu_beam": 31.5, "ppl": 3.2,
                                               "params": 2_000_000, "nonzero_params": 2_000_000,
                                               "words_per_s_greedy": 900.0, "words_per_s_beam": 300.0})
    update_system_result(str(res), "seq_kd", {"bleu_greedy": 29.0, "bleu_beam": 29.2, "params": 500_000,
                                              "nonzero_params": 500_000, "words_per_s_greedy": 4000.0,
                                              "words_per_s_beam": 1500.0})
    update_system_result(str(res), "pruned",
                         {"bleu_beam": 28.9, "params": 500_000, "nonzero_params": 100_000})
    update_system_result(str(res / "curve"), "r80", {"prune_ratio": 0.8, "bleu_greedy": 20.0})
    update_system_result(str(res / "curve"), "r50", {"prune_ratio": 0.5, "bleu_greedy": 28.0})
    paths = write_report(str(tmp_path), paper="wmt14_en_de")
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["systems"]) == ["teacher", "seq_kd", "pruned"]  # the paper's order
    assert set(KEYS) <= set(report["systems"]["pruned"]) and report["systems"]["pruned"]["ppl"] is None
    assert [c["prune_ratio"] for c in report["pruning_curve"]] == [0.5, 0.8]
    table = (tmp_path / "report.md").read_text()
    assert "| Seq-KD | 29.0 | 29.2 |" in table and "18.9" in table  # beside the paper's Seq-KD
    for png in ("bleu_vs_speed.png", "bleu_vs_params.png", "pruning_curve.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", paths
