"""Evaluation refuses a partial test set; the report writes Table 1 per test set, JSON, plots and
the run's provenance."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from conftest import BIN, plugin_dir
from sacrebleu.metrics import BLEU

from fairseq_seqkd.errors import UserError
from fairseq_seqkd.evaluate.provenance import collect_provenance, provenance_lines
from fairseq_seqkd.evaluate.report import KEYS, collect, write_report
from fairseq_seqkd.evaluate.scoring import evaluate_generation, score_system, update_system_result


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
    assert "| Seq-KD | 29.0 |  | 29.2 |  |" in table and "18.9" in table  # beside the paper's Seq-KD; no baseline, no Δ
    for png in ("bleu_vs_speed.png", "bleu_vs_params.png", "pruning_curve.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", paths


def test_the_teacher_ensemble_is_a_row_of_the_teachers_size(tmp_path):
    res = tmp_path / "results"
    for name, bleu in (("teacher", 30.0), ("teacher_ensemble", 31.2), ("baseline", 25.0)):
        update_system_result(str(res), name, {"bleu_greedy": bleu, "bleu_beam": bleu + 1})
    write_report(str(tmp_path))
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["systems"]) == ["teacher", "teacher_ensemble", "baseline"]
    row = next(line for line in (tmp_path / "report.md").read_text().splitlines() if "Teacher ensemble" in line)
    assert "31.2" in row and "+1.2" in row, row  # its delta is from the single teacher, not from the baseline


def _results(folder, bleu: float) -> None:
    """Three systems' results in ``folder``, greedy BLEU from ``bleu`` up."""
    for i, name in enumerate(("teacher", "baseline", "seq_kd")):
        update_system_result(str(folder), name, {"bleu_greedy": bleu + i, "bleu_beam": bleu + i + 0.5,
                                                 "params": 1000, "nonzero_params": 1000})


def test_report_has_one_table_per_test_set_and_judges_the_main_one(tmp_path):
    res = tmp_path / "results"
    _results(res, 10.0)
    _results(res / "news-b", 40.0)
    _results(res / "news_a", 70.0)
    update_system_result(str(res / "curve"), "r80", {"prune_ratio": 0.8, "bleu_greedy": 5.0})
    assert list(collect(str(tmp_path))["extra_test_sets"]) == ["news-b", "news_a"]  # default: every folder, sorted
    write_report(str(tmp_path), plots=False, test_sets=["news_a", "news-b"], main_test_set="test (ref.de.sgm)")
    md = (tmp_path / "report.md").read_text()
    heads = [line for line in md.splitlines() if line.startswith("## Test set: ")]
    assert heads == ["## Test set: test (ref.de.sgm)", "## Test set: news_a", "## Test set: news-b"]
    tables = md.split("## Test set: ")[1:]
    row = "| Seq-KD | {} | +1.0 | {} | +1.0 |"
    assert row.format(12.0, 12.5) in tables[0] and row.format(72.0, 72.5) in tables[1]
    assert "| Seq-KD | 42.0 | +1.0 | 42.5 | +1.0 |" in tables[2] and "curve" not in md.split("## The paper")[0]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["test_set"] == "test (ref.de.sgm)" and list(report["extra_test_sets"]) == ["news_a", "news-b"]
    assert report["extra_test_sets"]["news-b"]["systems"]["seq_kd"]["bleu_greedy"] == 42.0
    # the findings are the main test set's: Seq-KD +1.0 over the baseline there (+1.0 elsewhere too, so
    # the text tells them apart)
    assert "Seq-KD 12.0 vs baseline 11.0" in md and "(test set: test (ref.de.sgm))" in md
    with pytest.raises(UserError, match="news_c: no results"):
        collect(str(tmp_path), ["news_c"])


def _tsv(path, seconds: str) -> None:
    path.write_text(f"s\th:m:s\tmax_rss\n{seconds}\t0:00:01\t12.5\n")


def test_provenance_of_a_fake_run(tmp_path):
    run = tmp_path
    (run / "provenance").mkdir()
    common = "host vm\ncwd /work\ncommit abc123\nuncommitted_changes no\nenv SMOKE=1\nenv RUN=/r\n"
    (run / "provenance" / "invocation-20261201T100000Z-7.txt").write_text(
        "start 2026-12-01T10:00:00Z\n" + common + "command bash recipes/x.sh -j 2\n"
        "end 2026-12-01T10:10:00Z\nexit 1\n")
    (run / "provenance" / "invocation-20261201T110000Z-8.txt").write_text(  # the one writing the report
        "start 2026-12-01T11:00:00Z\n" + common + "command bash recipes/x.sh -j 2 --config 'a=[1, 2]'\n")
    blobs = {"teacher/checkpoint_best.pt": b"teacher", "seq_kd/checkpoint_last.pt": b"student",
             "export/student.pt": b"exported", "export/ct2-int8/model.bin": b"ct2"}
    for rel, blob in blobs.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(blob)
    for name, ckpt in (("teacher", "teacher/checkpoint_best.pt"), ("seq_kd", "seq_kd/checkpoint_last.pt"),
                       ("teacher.previous", "teacher/checkpoint_best.pt")):
        (run / name).mkdir(exist_ok=True)
        (run / name / "train.done").write_text(json.dumps({"checkpoint": ckpt}))
    (run / "times").mkdir()
    _tsv(run / "times" / "train_teacher.tsv", "40.25")
    _tsv(run / "times" / "evaluate.seq_kd.tsv", "3.5")
    _tsv(run / "times" / "report.tsv", "9.0")  # the report's own: never the current run's
    now = datetime(2026, 12, 1, 11, 5, tzinfo=UTC)
    prov = collect_provenance(str(run), now)
    assert prov["checkpoints_sha256"] == {rel: hashlib.sha256(blob).hexdigest() for rel, blob in sorted(blobs.items())}
    assert prov["job_seconds"] == {"evaluate.seq_kd": 3.5, "train_teacher": 40.2}
    assert prov["jobs_seconds_total"] == 43.7
    first, second = prov["invocations"]
    assert first["seconds"] == 600.0 and first["exit"] == "1" and first["env"] == {"SMOKE": "1", "RUN": "/r"}
    assert second["end"] is None and second["seconds"] == 300.0 and prov["run_seconds"] == 900.0
    assert second["command"] == "bash recipes/x.sh -j 2 --config 'a=[1, 2]'"
    assert {"python", "torch", "fairseq", "sacrebleu", "ctranslate2", "sentencepiece", "snakemake"} <= set(
        prov["versions"])
    lines = provenance_lines(prov)
    assert lines == provenance_lines(collect_provenance(str(run), now))  # stable: the same run, the same lines
    assert lines[0].startswith("code ") and lines[1].startswith("version ctranslate2 ")
    assert "invocation 1 start 2026-12-01T10:00:00Z end 2026-12-01T10:10:00Z seconds 600.0 exit 1" in lines
    assert "invocation 2 start 2026-12-01T11:00:00Z end running (report written 2026-12-01T11:05:00Z) " \
           "seconds 300.0 exit running" in lines
    assert lines.index("invocation 1 env RUN=/r") < lines.index("invocation 1 env SMOKE=1")
    assert "run seconds 900.0 invocations 2" in lines
    sha = [line.split()[1] for line in lines if line.startswith("sha256 ")]
    assert sha == sorted(blobs)
    assert [line for line in lines if line.startswith("job")] == [
        "job_seconds evaluate.seq_kd 3.5", "job_seconds train_teacher 40.2", "jobs seconds_total 43.7 jobs 2"]


def test_report_command_prints_no_debug_lines(tmp_path):
    # importing fairseq sets the root logger to DEBUG (fairseq/models/wav2vec/wav2vec2_classification.py);
    # matplotlib then wrote ~2,000 font lines into the report's output where fairseq came first: with
    # python -m, the package is imported before the command line, and it must import no fairseq then
    _results(tmp_path / "results", 10.0)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for cmd in ([str(BIN / "fairseq-seqkd"), "report", str(tmp_path)],
                [sys.executable, "-m", "fairseq_seqkd.cli", "report", str(tmp_path)]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "DEBUG" not in proc.stderr and "DEBUG" not in proc.stdout, proc.stderr[:2000]
        assert (tmp_path / "bleu_vs_speed.png").exists()  # matplotlib did run


# ---- evaluate-checkpoint: fairseq-generate, fairseq-validate and the scoring in one process ----

def _generate_args(data_bin, ckpt, beam: int) -> list[str]:
    """fairseq-generate's arguments as the Snakefile builds them (generate_cmd), program name left out."""
    return [str(data_bin), "--user-dir", plugin_dir(), "--task", "translation", "--source-lang", "en",
            "--target-lang", "de", "--path", str(ckpt),
            "--gen-subset", "test", "--beam", str(beam), "--nbest", "1", "--batch-size", "16",
            "--required-batch-size-multiple", "1", "--distributed-world-size", "1", "--num-workers", "0", "--cpu"]


def test_evaluate_checkpoint_writes_what_the_separate_commands_write(toy_teacher, toy_data_bin, toy_corpus, tmp_path):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    beam = _generate_args(toy_data_bin, toy_teacher, 5)
    # today's way, for beam 5: fairseq-generate's own process, then the scoring
    with open(tmp_path / "old.beam.txt", "w") as out, open(tmp_path / "old.beam.txt.log", "w") as err:
        subprocess.run([str(BIN / "fairseq-generate"), *beam], stdout=out, stderr=err, env=env, check=True)
    score = ["--ref", str(toy_corpus / "test.de"), "--src", str(toy_corpus / "test.en"), "--name", "teacher",
             "--checkpoint", str(toy_teacher)]
    old_beam = str(tmp_path / "old.beam.txt")
    score_system(str(tmp_path / "old"), "teacher", [(old_beam, "beam", old_beam + ".log")],
                 str(toy_corpus / "test.de"), str(toy_corpus / "test.en"), checkpoint=str(toy_teacher))  # evaluate's
    validate = [str(toy_data_bin), "--user-dir", plugin_dir(), "--task", "translation", "--path", str(toy_teacher),
                "--valid-subset", "test",
                "--max-tokens", "2000", "--required-batch-size-multiple", "1", "--cpu"]
    new = tmp_path / "eval"
    proc = subprocess.run(
        [str(BIN / "fairseq-seqkd"), "evaluate-checkpoint", "--greedy-output", str(new / "greedy.txt"),
         "--beam-output", str(new / "beam.txt"), "--validate-output", str(new / "validate.txt"), *score,
         "--results-dir", str(tmp_path / "new"), "--set", "prune_ratio=0.5",
         ":::", "greedy", *_generate_args(toy_data_bin, toy_teacher, 1), ":::", "beam", *beam,
         ":::", "validate", *validate], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (new / "beam.txt").read_bytes() == (tmp_path / "old.beam.txt").read_bytes()  # S-/T-/H-/D-/P- lines
    greedy = (new / "greedy.txt").read_text()
    assert greedy.count("\nD-") + greedy.startswith("D-") == 61 and "| INFO |" not in greedy  # no log line in it
    for name in ("greedy", "beam"):
        assert "Translated 61 sentences" in (new / f"{name}.txt.log").read_text()
    assert "valid on 'test' subset" in (new / "validate.txt").read_text()
    assert "greedy: fairseq-generate" in proc.stderr and "validate: done in" in proc.stderr  # the job's log
    old = json.loads((tmp_path / "old" / "teacher.json").read_text())
    res = json.loads((tmp_path / "new" / "teacher.json").read_text())
    for key in ("bleu_beam", "bleu_signature", "sentences", "params", "nonzero_params"):
        assert res[key] == old[key], key
    assert res["ppl"] > 1 and res["prune_ratio"] == 0.5 and res["words_per_s_greedy"] > 0
    assert "bleu_greedy" in res and not list(new.glob("*.tmp"))


def test_the_warm_up_translates_one_batch_and_changes_no_output(toy_teacher, toy_data_bin, toy_corpus, tmp_path):
    """--warm-up yes (auto does it on a GPU): one batch of the greedy run first, thrown away; the timed runs'
    files are those of a run without it."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    score = ["--ref", str(toy_corpus / "test.de"), "--src", str(toy_corpus / "test.en"), "--name", "teacher"]
    outputs = {}
    kd = [a if a != "translation" else "translation_kd" for a in _generate_args(toy_data_bin, toy_teacher, 1)]
    for warm, greedy in (("no", kd), ("yes", kd), ("skipped", _generate_args(toy_data_bin, toy_teacher, 1))):
        out = tmp_path / warm
        proc = subprocess.run(
            [str(BIN / "fairseq-seqkd"), "evaluate-checkpoint", "--greedy-output", str(out / "greedy.txt"), *score,
             "--results-dir", str(out), "--warm-up", "no" if warm == "no" else "yes", ":::", "greedy", *greedy],
            env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs[warm] = ((out / "greedy.txt").read_text(), proc.stderr)
    # the task translation cannot translate one batch alone: no warm-up (it would translate the whole set)
    assert "warm-up: skipped" in outputs["skipped"][1]
    assert outputs["yes"][0] == outputs["no"][0]
    warm = re.search(r"warm-up: (\d+) sentences in", outputs["yes"][1])
    assert warm and 0 < int(warm.group(1)) <= 16 and "warm-up" not in outputs["no"][1]  # one batch (--batch-size 16)
    assert sorted(p.name for p in (tmp_path / "yes").iterdir()) == sorted(p.name for p in (tmp_path / "no").iterdir())


def test_evaluate_checkpoint_failure_leaves_a_log_and_no_output(toy_teacher, toy_data_bin, tmp_path):
    from fairseq_seqkd.evaluate.checkpoint import FairseqRun, FairseqRunFailed, run_fairseq

    ok = FairseqRun("greedy", _generate_args(toy_data_bin, toy_teacher, 1), str(tmp_path / "ok.txt"))
    run_fairseq(ok)  # twice in one process: fairseq's registries and the --user-dir import allow it
    missing = FairseqRun("beam", _generate_args(toy_data_bin, tmp_path / "none.pt", 5), str(tmp_path / "beam.txt"))
    with pytest.raises(FairseqRunFailed) as e:
        run_fairseq(missing)
    assert "none.pt" in str(e.value) and "Traceback" in str(e.value)
    assert not (tmp_path / "beam.txt").exists() and "none.pt" in (tmp_path / "beam.txt.log").read_text()
    bad = FairseqRun("validate", ["--no-such-option"], str(tmp_path / "validate.txt"))
    with pytest.raises(FairseqRunFailed) as e:  # fairseq's parser exits; this process goes on
        run_fairseq(bad)
    assert "--no-such-option" in str(e.value) and not (tmp_path / "validate.txt").exists()
    assert "Translated 61 sentences" in (tmp_path / "ok.txt.log").read_text()
    assert not list(tmp_path.glob("*.tmp"))


def test_evaluate_checkpoint_runs_are_parsed_strictly():
    from fairseq_seqkd.evaluate.checkpoint import parse_runs

    assert parse_runs([":::", "greedy", "data", "--beam", "1", ":::", "validate", "data"]) == [
        ("greedy", ["data", "--beam", "1"]), ("validate", ["data"])]
    for words in (["data"], [":::", "sample", "data"], [":::", "beam", "a", ":::", "beam", "b"], [":::"]):
        with pytest.raises(UserError):
            parse_runs(words)


def test_the_greedy_output_probability_is_the_mean_of_its_sentences(tmp_path):
    """p(t = y-hat) of the paper's Table 1: each 1-best's P- scores (base 2) summed, 2 to that, averaged."""
    out, ref = tmp_path / "gen.txt", tmp_path / "ref.txt"
    _gen_output(out, {0: "a b", 1: "c d"})
    ref.write_text("a b\nc d\n")
    lines = out.read_text().replace("P-1\t-0.1 -0.2", "P-1\t-1.0 -1.0").splitlines()
    out.write_text("\n".join(lines) + "\n")
    assert evaluate_generation(str(out), str(ref))["output_prob"] == pytest.approx((2 ** -0.3 + 0.25) / 2)
    # an output without scores (CTranslate2's) has none; neither has one that lacks a sentence's
    out.write_text("\n".join(line for line in lines if not line.startswith("P-1")) + "\n")
    assert evaluate_generation(str(out), str(ref))["output_prob"] is None


def test_the_training_noise_table(tmp_path):
    """Students trained with further seeds (NAME.seedS): out of Table 1 and the findings, into their own
    table with mean and sample standard deviation; the extra test sets never read them."""
    res = tmp_path / "results"
    for name, greedy in (("baseline", 20.0), ("baseline.seed2", 21.0), ("baseline.seed3", 22.5),
                         ("seq_kd", 24.0), ("seq_kd.seed2", 24.5), ("seq_kd.seed3", 23.5)):
        update_system_result(str(res), name, {"bleu_greedy": greedy, "bleu_beam": greedy + 1})
    update_system_result(str(res / "news"), "baseline", {"bleu_greedy": 1.0, "bleu_beam": 2.0})
    update_system_result(str(res / "news"), "seq_kd", {"bleu_greedy": 1.0, "bleu_beam": 2.0})
    names = ["baseline", "seq_kd", "baseline.seed2", "baseline.seed3", "seq_kd.seed2", "seq_kd.seed3"]
    write_report(str(tmp_path), plots=False, systems=names, test_sets=["news"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["systems"]) == ["baseline", "seq_kd"]
    base = report["seeds"]["baseline"]
    assert base["systems"] == ["baseline", "baseline.seed2", "baseline.seed3"]
    assert base["mean_greedy"] == pytest.approx(21.17, abs=0.01) and base["sd_greedy"] == pytest.approx(1.26, abs=0.01)
    md = (tmp_path / "report.md").read_text()
    assert "| Seq-KD | 3 | 24.0 ± 0.50 | 25.0 ± 0.50 | +2.8 | +2.8 | 24.0 / 24.5 / 23.5 |" in md
