"""The report reads the systems, test sets and curve points the run's configuration lists, nothing
else, and warns about a trained system far below the baseline."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.evaluate.findings import far_below_baseline
from fairseq_seqkd.evaluate.report import collect, write_report
from fairseq_seqkd.evaluate.scoring import update_system_result

LISTED = ["teacher", "baseline", "seq_kd"]


def _system(folder, name: str, greedy: float) -> None:
    update_system_result(str(folder), name, {"bleu_greedy": greedy, "bleu_beam": greedy + 0.5, "params": 1000,
                                             "nonzero_params": 1000})


def _run(run, stray: bool = True) -> None:
    """A run whose configuration lists LISTED, the test set news and the curve points r0.5 and r0.8;
    with ``stray``, the leftovers of an earlier configuration beside them."""
    res = run / "results"
    for folder, base in ((res, 20.0), (res / "news", 30.0)):
        for i, name in enumerate(LISTED):
            _system(folder, name, base + i)
    update_system_result(str(res / "curve"), "r0.5", {"prune_ratio": 0.5, "bleu_greedy": 19.0})
    update_system_result(str(res / "curve"), "r0.8", {"prune_ratio": 0.8, "bleu_greedy": 15.0})
    if stray:
        _system(res, "word_kd", 26.0)  # a system turned off since
        _system(res / "news", "word_kd", 36.0)
        _system(res / "old_set", "teacher", 50.0)  # a test set renamed since
        update_system_result(str(res / "curve"), "r0.9", {"prune_ratio": 0.9, "bleu_greedy": 4.0})


def _lists(curve: bool = True) -> dict:
    return {"systems": LISTED, "test_sets": ["news"], "curve": ["r0.8", "r0.5"] if curve else None}


def _cli_lists() -> list[str]:
    return ["--systems", *LISTED, "--test-sets", "news", "--curve", "r0.8", "r0.5"]


def _check_no_stray(run) -> None:
    report = json.loads((run / "report.json").read_text())
    md = (run / "report.md").read_text()
    assert list(report["systems"]) == LISTED and list(report["extra_test_sets"]) == ["news"]
    assert list(report["extra_test_sets"]["news"]["systems"]) == LISTED
    assert [c["prune_ratio"] for c in report["pruning_curve"]] == [0.5, 0.8]
    word_kd = {f["id"]: f for f in report["findings"]}["word_kd_helps"]
    assert word_kd["held"] is None and word_kd["measured"] == "not measured in this run"
    assert "Word-KD" not in md.split("## The paper")[0] and "Word-KD 26.0" not in md and "old_set" not in md


def test_stray_results_are_left_out(tmp_path):
    _run(tmp_path)
    write_report(str(tmp_path), plots=False, **_lists())
    _check_no_stray(tmp_path)
    # with --systems, no curve point and no extra test set unless listed
    report = collect(str(tmp_path), systems=LISTED)
    assert report["pruning_curve"] == [] and report["extra_test_sets"] == {}
    # without the lists, a folder looked at by hand: everything, as before
    report = collect(str(tmp_path))
    assert "word_kd" in report["systems"] and list(report["extra_test_sets"]) == ["news", "old_set"]
    assert len(report["pruning_curve"]) == 3


def test_report_command_reads_only_the_lists(tmp_path):
    _run(tmp_path)
    proc = run_cli("fairseq-seqkd", "report", tmp_path, "--no-plots", *_cli_lists())
    assert "| Seq-KD | 22.0 | +1.0 | 22.5 | +1.0 |" in proc.stdout and "Word-KD" not in proc.stdout
    _check_no_stray(tmp_path)


def test_lists_matching_the_results_change_nothing(tmp_path):
    _run(tmp_path, stray=False)
    reports = []
    for lists in ({}, _lists()):
        write_report(str(tmp_path), plots=False, **lists)
        report = json.loads((tmp_path / "report.json").read_text())
        report.pop("provenance")  # its time of writing
        reports.append((report, (tmp_path / "report.md").read_text().split("## Provenance")[0]))
    assert reports[0] == reports[1]


@pytest.mark.parametrize("where, lists", [
    ("results/seq_inter.json", {"systems": [*LISTED, "seq_inter"]}),
    ("results/news/word_kd.json", {"systems": [*LISTED, "word_kd"], "test_sets": ["news"]}),  # main set's only
    ("results/curve/r0.7.json", {"systems": LISTED, "curve": ["r0.5", "r0.7"]}),
])
def test_a_listed_result_missing_is_an_error(tmp_path, where, lists):
    _run(tmp_path, stray=False)
    _system(tmp_path / "results", "word_kd", 26.0)
    with pytest.raises(UserError) as e:
        collect(str(tmp_path), **lists)
    assert where in str(e.value) and "has not run" in str(e.value) and "rerun the pipeline" in str(e.value)


def test_report_command_names_the_missing_result(tmp_path):
    _run(tmp_path, stray=False)
    proc = run_cli("fairseq-seqkd", "report", tmp_path, "--no-plots", "--systems", *LISTED, "seq_inter",
                   check=False)
    assert proc.returncode == 2 and "results/seq_inter.json" in proc.stderr, proc.stderr[-2000:]
    assert "the evaluation of seq_inter has not run" in proc.stderr and not (tmp_path / "report.md").exists()


def test_far_below_baseline_rule():
    def systems(base: float | None, **greedy: float) -> dict:
        out = {name: {"bleu_greedy": v} for name, v in greedy.items()}
        return out | ({"baseline": {"bleu_greedy": base}} if base is not None else {})

    assert far_below_baseline(systems(20.0, teacher=25.0, seq_kd=10.0, word_kd=22.0)) == []  # exactly half: fine
    [warning] = far_below_baseline(systems(20.0, seq_kd=9.9, pruned_ct2_int8=1.0, other=0.0))  # trained ones only
    assert warning.startswith("seq_kd scores 9.9 greedy BLEU, the baseline student 20.0")
    assert warning.endswith("look at logs/train_seq_kd.log")
    [warning] = far_below_baseline(systems(20.0, seq_kd_seq_inter_word_kd=2.0))
    assert warning.endswith("logs/train_combined.log")  # the Snakefile's rule train_combined
    assert far_below_baseline(systems(1.0, seq_kd=0.3)) == []  # a baseline of 1 BLEU: too little to halve
    assert len(far_below_baseline(systems(0.8, seq_kd=0.0, teacher=0.0))) == 2  # 0 where the baseline is not
    assert far_below_baseline(systems(0.0, seq_kd=0.0)) == [] and far_below_baseline(systems(None, seq_kd=0.0)) == []


def test_report_warns_about_a_system_far_below_the_baseline(tmp_path):
    _run(tmp_path, stray=False)
    proc = run_cli("fairseq-seqkd", "report", tmp_path, "--no-plots", *_cli_lists())
    assert "**Warning**" not in (tmp_path / "report.md").read_text() and "WARNING" not in proc.stderr
    assert json.loads((tmp_path / "report.json").read_text())["warnings"] == []

    _system(tmp_path / "results", "seq_kd", 3.0)  # baseline 21.0
    proc = run_cli("fairseq-seqkd", "report", tmp_path, "--no-plots", *_cli_lists())
    md = (tmp_path / "report.md").read_text()
    [line] = [line for line in md.splitlines() if "Warning" in line]
    assert line.startswith("**Warning**: seq_kd scores 3.0 greedy BLEU, the baseline student 21.0")
    assert "diverged or stopped early" in line and "logs/train_seq_kd.log" in line
    table, rest = md.split("## Test set: news")
    assert line in table and "| Seq-KD | 3.0 |" in table  # under the main test set's table
    assert json.loads((tmp_path / "report.json").read_text())["warnings"] == [line.removeprefix("**Warning**: ")]
    assert "WARNING" in proc.stderr and "seq_kd scores 3.0 greedy BLEU" in proc.stderr
