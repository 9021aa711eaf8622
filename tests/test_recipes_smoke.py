"""The pipeline (recipes/Snakefile) through the recipes in SMOKE=1 mode: real jobs on a tiny corpus.

The WMT14 recipe runs every job once, from the raw files in the official layout (three training
corpora, an SGML test set) to the report, with the teacher's work in 2 shards and two extra test
sets (a CONFIGFILE layer, which every later run of that folder repeats). The other tests
work on copies of that finished run folder: a rerun that does nothing, a dry run's plan, a changed
student size, the SLURM profile's resources, a failure injected into each kind of job, a training
killed mid-run. Select these alone with ``pytest -m recipes`` (with test_recipes_iwslt.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import BIN, run_cli
from recipe_runs import ROOT, finish, planned, ran, run_recipe, start_recipe

pytestmark = pytest.mark.recipes

# The systems of the paper's Table 1 that every full run reports.
SYSTEMS = ["teacher", "teacher_seq_inter", "baseline", "word_kd", "seq_kd", "seq_inter", "word_kd_seq_inter",
           "seq_kd_seq_inter", "seq_kd_word_kd", "seq_kd_seq_inter_word_kd", "pruned"]
SHARDS = ["num_shards=2"]
EXTRA_SIZES = {"news_a": 20, "news-b": 12}  # the extra test sets: plain text, and WMT SGML


@pytest.fixture(scope="module")
def extra_test_sets(tmp_path_factory) -> dict[str, str]:
    """Two extra test sets (other sentences of the toy language) and the CONFIGFILE layer naming them."""
    from fairseq_seqkd.data.toy_corpus import write_corpus

    d = tmp_path_factory.mktemp("extra")
    write_corpus(str(d), {"train": 1, "valid": EXTRA_SIZES["news_a"], "test": EXTRA_SIZES["news-b"]}, seed=7)
    for lang in ("en", "de"):
        lines = (d / f"test.{lang}").read_text().splitlines()
        segs = [f'<seg id="{i}">{line}</seg>' for i, line in enumerate(lines, 1)]
        (d / f"news-b.{lang}.sgm").write_text('<srcset setid="b" srclang="any">\n<doc docid="b1">\n'
                                              + "\n".join(segs) + "\n</doc>\n</srcset>\n")
    layer = d / "extra.yaml"
    layer.write_text(f"extra_test_sets: [[news_a, {d}/valid.en, {d}/valid.de], "
                     f"[news-b, {d}/news-b.en.sgm, {d}/news-b.de.sgm]]\n")
    return {"CONFIGFILE": str(layer)}


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory, extra_test_sets) -> dict[str, Path]:
    """The WMT14 recipe: every job, the teacher's work in 2 shards, 2 jobs at once, two extra test sets."""
    run = tmp_path_factory.mktemp("smoke") / "wmt"
    run_recipe("wmt14_en_de.sh", run, "-j", "2", "--config", *SHARDS, **extra_test_sets)
    return {"wmt14_en_de.sh": run, "env": extra_test_sets}


@pytest.fixture
def wmt_copy(smoke_runs, tmp_path) -> Path:
    """A copy of the finished WMT14 run folder (timestamps and Snakemake's records kept)."""
    dest = tmp_path / "wmt"
    shutil.copytree(smoke_runs["wmt14_en_de.sh"], dest, symlinks=True)
    return dest


def check_systems(systems: dict, test_sentences: int) -> None:
    """Every Table 1 system (and the CTranslate2 export) scored greedy and beam on the whole test set."""
    missing = [s for s in [*SYSTEMS, "pruned_ct2_int8"] if s not in systems]
    assert not missing, f"report.json lacks {missing}; it has {list(systems)}"
    for name, r in systems.items():
        for key in ("bleu_greedy", "bleu_beam", "ppl", "params", "nonzero_params",
                    "words_per_s_greedy", "words_per_s_beam"):
            assert key in r, (name, key)
        assert isinstance(r["bleu_greedy"], float) and isinstance(r["bleu_beam"], float), (name, r)
        assert r["sentences"] == test_sentences, (name, r["sentences"])
    assert "tok:13a" in systems["teacher"]["bleu_signature"]


def check_report(run_dir: Path, test_sentences: int) -> dict:
    """report.json: the main test set's systems, each scored greedy and beam on the whole test set."""
    report = json.loads((run_dir / "report.json").read_text())
    check_systems(report["systems"], test_sentences)
    assert (run_dir / "report.md").exists()
    return report


def test_wmt14_en_de_smoke(smoke_runs):
    run = smoke_runs["wmt14_en_de.sh"]
    manifest = json.loads((run / "prepared" / "prepare.json").read_text())
    # three training corpora concatenated, the SGML test set read segment by segment
    assert manifest["splits"]["train"]["read"] == 600 and manifest["splits"]["test"]["kept"] == 30
    assert (run / "prepared" / "test.raw.de").read_text().count("\n") == 30
    report = check_report(run, 30)
    pruned = report["systems"]["pruned"]
    assert pruned["nonzero_params"] < pruned["params"]
    # every system on each extra test set too, greedy and beam, every line; one table each, main first
    assert list(report["extra_test_sets"]) == list(EXTRA_SIZES)
    for name, size in EXTRA_SIZES.items():
        check_systems(report["extra_test_sets"][name]["systems"], size)
        assert report["extra_test_sets"][name]["systems"]["teacher"]["ppl"] is None  # main test set only
    md = (run / "report.md").read_text()
    assert [line for line in md.splitlines() if line.startswith("## Test set: ")] == [
        "## Test set: test (newstest2014-deen-ref.de.sgm)", "## Test set: news_a", "## Test set: news-b"]
    # the references are the files as given (SGML read segment by segment), never cleaned
    assert (run / "testsets" / "news-b" / "prepared" / "test.raw.de").read_text().count("\n") == 12
    # the provenance section: code, versions, the invocation, every checkpoint's sha256, every job's time
    prov = md.split("## Provenance")[1]
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert f"code {head} uncommitted_changes " in prov
    for package in ("python", "torch", "fairseq", "sacrebleu", "ctranslate2", "sentencepiece", "snakemake"):
        assert re.search(rf"^version {package} \d", prov, re.M), package
    assert re.search(r"^invocation 1 command bash \S*wmt14_en_de.sh -j 2 --config num_shards=2$", prov, re.M)
    assert f"invocation 1 env CONFIGFILE={smoke_runs['env']['CONFIGFILE']}" in prov
    hashed = dict(line.split()[1:] for line in prov.splitlines() if line.startswith("sha256 "))
    expected = ["teacher/checkpoint_best.pt", *[f"{s}/checkpoint_last.pt" for s in SYSTEMS[1:]], "export/student.pt",
                "export/ct2-int8/model.bin"]
    assert sorted(hashed) == sorted(expected) and all(len(h) == 64 for h in hashed.values()), hashed
    times = dict(line.split()[1:] for line in prov.splitlines() if line.startswith("job_seconds "))
    for job in ("train_teacher", "evaluate.seq_kd", "evaluate_test_set.news-b.seq_kd", "evaluate_ct2_test_set.news_a"):
        assert float(times[job]) > 0, (job, times)
    assert report["provenance"]["checkpoints_sha256"] == hashed
    # the teacher's work in 2 shard jobs each, merged in order: every training sentence once
    for corpus in ("seqkd", "seqinter"):
        assert sorted(p.name for p in (run / f"{corpus}-gen").glob("shard*.txt")) == ["shard0000.txt", "shard0001.txt"]
        assert json.loads((run / f"data-bin-{corpus}" / "train.extract.json").read_text())["sentences"] == 600
    for cache in ("cache", "cache-seqkd", "cache-seqinter"):
        header = json.loads((run / cache / "train.header.json").read_text())
        assert header["num_shards"] == 2 and header["num_sentences"] == 600, header
    # pruned gradually (the smoke prune_args' 2-update ramp): 70% first, then the final 80%
    text = (run / "logs" / "train_pruned.log").read_text()
    assert "(scheme class-blind, ratio 0.7)" in text and "(scheme class-blind, ratio 0.8)" in text
    assert text.index("ratio 0.7)") < text.index("ratio 0.8)") < text.index("sparsity per class")
    # fine-tunes start from the student's last checkpoint at the fixed finetune_args rate (not a
    # restarted warm-up); the pruned retraining's prune_args come after and win
    for log, start, lr in (("seq_inter", "baseline", 0.001), ("combined", "seq_kd_word_kd", 0.001),
                           ("pruned", "seq_kd_seq_inter_word_kd", 0.002), ("teacher_seq_inter", "teacher", 0.001),
                           ("word_kd_seq_inter", "word_kd", 0.001), ("seq_kd_seq_inter", "seq_kd", 0.001)):
        text = (run / "logs" / f"train_{log}.log").read_text()
        best = "best" if start == "teacher" else "last"
        assert f"loading pretrained model from {start}/checkpoint_{best}.pt" in text, log
        assert "'lr_scheduler': {'_name': 'fixed', " in text and f"'lr': [{lr}]}}" in text, log
    # the students of the teacher's translations learn by plain likelihood (distill_args); the
    # baseline keeps the recipe's label smoothing
    for log, eps in (("baseline", 0.1), ("seq_kd", 0.0), ("seq_inter", 0.0), ("seq_kd_word_kd", 0.0),
                     ("combined", 0.0), ("pruned", 0.0), ("teacher_seq_inter", 0.0), ("word_kd_seq_inter", 0.0),
                     ("seq_kd_seq_inter", 0.0)):
        text = (run / "logs" / f"train_{log}.log").read_text()
        assert f"'label_smoothing': {eps}" in text and text.count("'label_smoothing': ") == 1, log
    # a "+ Seq-Inter" fine-tune keeps its start's criterion: Word-KD against the Seq-Inter targets' cache
    text = (run / "logs" / "train_word_kd_seq_inter.log").read_text()
    assert "'teacher_cache': 'cache-seqinter'" in text and "'criterion': {'_name': 'word_kd'" in text
    # p(t=y-hat): the mean over sentences of the greedy output's probability, from fairseq-generate's own
    # per-token scores (base 2), whose sum is the sentence score it prints times the length (length penalty 1)
    scores, probs = {}, []
    for line in (run / "eval" / "seq_kd.greedy.txt").read_text().splitlines():
        tag, _, rest = line.partition("\t")
        if tag.startswith("H-"):
            scores[tag[2:]] = float(rest.split("\t")[0])
        elif tag.startswith("P-"):
            positional = [float(x) for x in rest.split()]
            assert abs(sum(positional) - scores[tag[2:]] * len(positional)) < 1e-3 * len(positional), line
            probs.append(2 ** sum(positional))
    assert len(probs) == 30 and abs(report["systems"]["seq_kd"]["output_prob_greedy"] - sum(probs) / 30) < 1e-9
    assert all(0 < report["systems"][s]["output_prob_greedy"] <= 1 for s in SYSTEMS)
    assert report["systems"]["pruned_ct2_int8"]["output_prob_greedy"] is None  # CTranslate2 prints no scores
    # a training records the checkpoint it passes on; the teacher's is its best, a student's its last
    done = json.loads((run / "teacher" / "train.done").read_text())
    assert done["checkpoint"] == "teacher/checkpoint_best.pt" and done["seconds"] > 0
    assert json.loads((run / "seq_kd" / "train.done").read_text())["checkpoint"] == "seq_kd/checkpoint_last.pt"
    # every job's wall time, for the report and for comparing runs
    assert (run / "times" / "train_teacher.tsv").read_text().startswith("s\t")


def test_rerun_runs_nothing(wmt_copy, smoke_runs):
    env = smoke_runs["env"]
    mtime = (wmt_copy / "teacher" / "checkpoint_best.pt").stat().st_mtime
    plan = run_recipe("wmt14_en_de.sh", wmt_copy, "-n", "--config", *SHARDS, **env)
    assert "Nothing to be done" in plan.stdout + plan.stderr, plan.stdout[-2000:]
    t0 = time.monotonic()
    again = run_recipe("wmt14_en_de.sh", wmt_copy, "--config", *SHARDS, **env)
    assert ran(again) == [], again.stderr[-3000:]
    # a quiet terminal: no library logging in Snakemake's process (importing the plugin there would
    # register it with fairseq, whose logging setup then doubles every line as INFO:snakemake...)
    assert not re.search(r"^(INFO|DEBUG):", again.stderr, re.M), again.stderr[-3000:]
    assert time.monotonic() - t0 < 60
    assert (wmt_copy / "teacher" / "checkpoint_best.pt").stat().st_mtime == mtime
    # the report is printed at the end, its tables without the provenance section
    assert "| Teacher |" in again.stdout and "## Test set: news-b" in again.stdout and "Provenance" not in again.stdout
    # every invocation is recorded, the dry run not: the first run's and this one, which ended well
    invocations = sorted((wmt_copy / "provenance").glob("invocation-*.txt"))
    assert len(invocations) == 2 and invocations[-1].read_text().endswith("exit 0\n")


def test_the_report_reads_only_what_the_configuration_makes(wmt_copy, smoke_runs):
    # results of an earlier configuration stay in results/ (a system and a curve point turned off) but
    # are not read: the report has what this configuration asks for
    assert (wmt_copy / "results" / "pruned_ct2_int8.json").exists()
    shutil.copy(wmt_copy / "results" / "curve" / "r0.8.json", wmt_copy / "results" / "curve" / "r0.3.json")
    run_recipe("wmt14_en_de.sh", wmt_copy, "report.md", "--forcerun", "report", "--allowed-rules", "report",
               "--config", *SHARDS, "export_ct2=false", **smoke_runs["env"])
    report = json.loads((wmt_copy / "report.json").read_text())
    assert "pruned_ct2_int8" not in report["systems"] and "pruned" in report["systems"], list(report["systems"])
    for extra in report["extra_test_sets"].values():
        assert "pruned_ct2_int8" not in extra["systems"]
    assert len(report["pruning_curve"]) == 1, report["pruning_curve"]
    assert "| Pruned, CTranslate2 int8 |" not in (wmt_copy / "report.md").read_text()


def test_dry_run_shows_the_plan(tmp_path):
    plan = run_recipe("wmt14_en_de.sh", tmp_path / "fresh", "-n", "--config", *SHARDS)
    jobs = planned(plan)
    assert jobs["train_teacher"] == 1 and jobs["generate_shard"] == 4 and jobs["cache_shard"] == 6, jobs
    assert jobs["evaluate"] == len(SYSTEMS) and jobs["prune_point"] == 1, jobs
    assert re.search(r"rule train_teacher:.*?reason: Missing output files: teacher/train.done", plan.stdout, re.S)
    assert not (tmp_path / "fresh" / "data-bin").exists()


def test_student_seeds_measure_the_training_noise(wmt_copy, smoke_runs):
    """student_seeds on a finished run: only the further seeds' trainings and their scores run; each is its
    own folder trained with --seed S, a fine-tune from its start's training of the same seed; the report
    gives each system's mean and standard deviation and keeps Table 1 the first seed's."""
    before = json.loads((wmt_copy / "report.json").read_text())["systems"]
    seeds = ["student_seeds=[1,2]", "seeded_students=[baseline,seq_inter]"]
    proc = run_recipe("wmt14_en_de.sh", wmt_copy, "-j", "2", "--config", *SHARDS, *seeds, **smoke_runs["env"])
    expected = ["evaluate.baseline.seed2", "evaluate.seq_inter.seed2", "report", "train_baseline_seed2",
                "train_seq_inter_seed2"]
    assert sorted(ran(proc)) == expected, proc.stderr[-3000:]
    baseline = json.loads((wmt_copy / "baseline.seed2" / "train.json").read_text())["command"]
    seeds = [baseline[i + 1] for i, arg in enumerate(baseline) if arg == "--seed"]
    assert seeds[-1] == "2", baseline  # after train_args' own --seed 1: the last wins
    seq_inter = json.loads((wmt_copy / "seq_inter.seed2" / "train.json").read_text())["command"]
    assert seq_inter[seq_inter.index("--finetune-from-model") + 1] == "baseline.seed2/checkpoint_last.pt"
    report = json.loads((wmt_copy / "report.json").read_text())
    assert report["systems"] == before  # Table 1: the first seed's trainings, as they were
    noise = report["seeds"]
    assert list(noise) == ["baseline", "seq_inter"] and noise["baseline"]["systems"] == ["baseline", "baseline.seed2"]
    assert noise["baseline"]["bleu_greedy"][0] == before["baseline"]["bleu_greedy"]
    assert "## Training noise" in (wmt_copy / "report.md").read_text()


def test_changed_student_size_reruns_the_students_only(wmt_copy, smoke_runs):
    student = ("student_arch=[--arch, transformer, --share-all-embeddings, --encoder-layers, 1, --decoder-layers, 1,"
               " --encoder-embed-dim, 24, --decoder-embed-dim, 24, --encoder-ffn-embed-dim, 32,"
               " --decoder-ffn-embed-dim, 32, --encoder-attention-heads, 2, --decoder-attention-heads, 2]")
    plan = run_recipe("wmt14_en_de.sh", wmt_copy, "-n", "--config", *SHARDS, student, **smoke_runs["env"])
    jobs = planned(plan)
    for rule in ("train_baseline", "train_word_kd", "train_seq_kd", "train_seq_inter", "train_seq_kd_word_kd",
                 "train_combined", "train_pruned", "prune_point", "export", "check_export", "evaluate_ct2", "report"):
        assert jobs.get(rule) == 1, (rule, jobs)
    assert jobs["evaluate"] == len(SYSTEMS) - 2, jobs  # every student, not the teacher nor its Seq-Inter fine-tune
    assert "train_teacher_seq_inter" not in jobs, jobs
    for rule in ("prepare", "binarize", "train_teacher", "generate_shard", "extract", "cache_shard", "cache_merge"):
        assert rule not in jobs, (rule, jobs)
    assert "Params have changed since last execution" in plan.stdout


def test_slurm_profile_resolves_every_job(tmp_path):
    # --cores: a dry run caps each job's threads at its cores (1 by default), a cluster does not
    plan = run_recipe("wmt14_en_de.sh", tmp_path / "fresh", "-n", "--cores", "16", "--profile",
                      str(ROOT / "recipes/profiles/slurm"), "--config", *SHARDS, "slurm_partition=cpu",
                      "slurm_gpu_partition=gpu", "slurm_gpu_model=a100", "slurm_account=nmt")
    blocks = {m.group(1): m.group(0) for m in re.finditer(r"rule (\w+):\n(?:    .*\n)+", plan.stdout)}
    for rule in ("train_teacher", "train_seq_kd", "generate_shard", "cache_shard", "evaluate"):
        for resource in ("slurm_partition=gpu", "gpu=1", "gpu_model=a100", "slurm_account=nmt"):
            assert resource in blocks[rule], (resource, blocks.get(rule))
        assert re.search(r"threads: [48]\n", blocks[rule]), blocks[rule]
        # a training asks for SIGURG before its time limit (it saves and stops); nothing else does
        assert ("slurm_extra=--signal=URG@300" in blocks[rule]) == rule.startswith("train_"), blocks[rule]
    assert "runtime=4320" in blocks["train_teacher"] and "runtime=2880" in blocks["train_seq_kd"]
    for rule in ("prepare", "extract", "cache_merge", "report"):
        assert "slurm_partition=cpu" in blocks[rule] and "gpu=" not in blocks[rule], blocks[rule]


# A failure injected into each kind of job: the command that fails (when its arguments hold the
# word; always when it is empty), and what makes that job due to run: a changed setting, or an
# input file whose content changed (Snakemake compares small files by checksum: a touch is not a
# change).
FAILURES = {
    "training": ("fairseq-train", "", ["teacher_steps=[--max-epoch, 4]"], None),
    "generation shard": ("fairseq-generate", "train", ["seqkd_beam=4"], None),
    "extract": ("fairseq-seqkd", "extract", [], "seqkd-gen/shard0000.txt"),
    "cache": ("fairseq-seqkd", "cache", ["kd_topk=4"], None),
    "pruning curve": ("fairseq-seqkd", "prune", ["prune_curve=[0.7]"], None),
    "evaluation": ("fairseq-seqkd", "evaluate-checkpoint", ["validate_args=[--max-tokens, 4000]"], None),
    "export": ("fairseq-seqkd", "export", [], "pruned/train.done"),
}


def stand_in(folder: Path, command: str, word: str) -> Path:
    """A ``command`` first on PATH that fails when its arguments hold ``word`` (always when empty)."""
    folder.mkdir(parents=True, exist_ok=True)
    real = shutil.which(command, path=str(BIN))
    script = folder / command
    script.write_text("#!/usr/bin/env bash\n"
                      f"fail() {{ echo 'injected failure' >&2; exit 3; }}\n"
                      f"[ -z '{word}' ] && fail\n"
                      f"for a in \"$@\"; do [ \"$a\" = '{word}' ] && fail; done\n"
                      f"exec {real} \"$@\"\n")
    script.chmod(0o755)
    return folder


def failed_output(proc: subprocess.CompletedProcess) -> str:
    """The main output of the job whose command failed, from its terminal line (``LOG | CMD | FAILED``)."""
    label = re.findall(r"\| (\S+) \| [^|]+ \| FAILED", proc.stderr)
    assert len(label) == 1, proc.stderr[-3000:]
    rule, _, rest = label[0].partition(".")
    if rule.startswith("train_"):
        name = rule[len("train_"):]
        return f"{'seq_kd_seq_inter_word_kd' if name == 'combined' else name}/train.done"
    corpus_or_cache, _, shard = rest.partition(".")
    return {"generate_shard": f"{corpus_or_cache}-gen/shard{shard}.txt",
            "extract": f"data-bin-{rest}/train.extract.json",
            "cache_shard": f"{corpus_or_cache}/train.shard{shard}-of-0002.bin",
            "prune_point": f"results/curve/{rest}.json",
            "evaluate": f"results/{rest}.json",
            "export": "export/student.pt"}[rule]


def _failure_scenario(source: Path, root: Path, kind: str, env: dict) -> dict:
    """On a copy of the finished run: make the job due, inject its failure, run the recipe twice."""
    run = root / "wmt"
    shutil.copytree(source, run, symlinks=True)
    command, word, settings, touch = FAILURES[kind]
    bad = stand_in(root / "bin", command, word)
    if touch:
        with open(run / touch, "a") as f:
            f.write("\n")
    procs = [run_recipe("wmt14_en_de.sh", run, "-j", "1", "--config", *SHARDS, *settings, check=False, path_first=bad,
                        **env) for _ in range(2)]
    return {"run": run, "procs": procs}


@pytest.fixture(scope="module")
def failures(smoke_runs, tmp_path_factory) -> dict[str, dict]:
    """Every failure scenario, two at a time (each runs one job process at a time)."""
    with ThreadPoolExecutor(2) as pool:
        futures = {kind: pool.submit(_failure_scenario, smoke_runs["wmt14_en_de.sh"], tmp_path_factory.mktemp("fail"),
                                     kind, smoke_runs["env"]) for kind in FAILURES}
        return {kind: future.result() for kind, future in futures.items()}


@pytest.mark.parametrize("kind", list(FAILURES))
def test_a_failed_job_is_never_done(failures, kind):
    run = failures[kind]["run"]
    outputs = []
    for proc in failures[kind]["procs"]:  # the run fails, and the next fails again while the cause is there
        assert proc.returncode != 0, proc.stderr[-3000:]
        assert "injected failure" in proc.stderr and "exited 3" in proc.stderr, proc.stderr[-3000:]
        output = failed_output(proc)
        assert not (run / output).exists() and not Path(f"{run / output}.tmp").exists(), output
        outputs.append(output)
    assert outputs[0].split("/")[0] == outputs[1].split("/")[0], outputs
    if kind == "training":  # the teacher trained with the earlier options is kept aside, not deleted
        (kept,) = (run / "superseded").glob("teacher.*")
        assert (kept / "checkpoint_best.pt").exists()


def test_killed_training_resumes(wmt_copy, smoke_runs):
    steps = "teacher_steps=[--max-epoch, 5]"  # another option: the teacher starts afresh
    log = wmt_copy / "logs" / "train_teacher.log"
    proc = start_recipe("wmt14_en_de.sh", wmt_copy, "teacher/train.done", "-j", "1", "--config", *SHARDS, steps,
                        **smoke_runs["env"])
    deadline = time.monotonic() + 240
    text = ""
    while "kept as" not in text or "(epoch 2 @ " not in text.split("kept as")[-1]:
        assert proc.poll() is None, finish("wmt14_en_de.sh", proc, check=False).stderr[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
        text = log.read_text()
    os.killpg(proc.pid, signal.SIGTERM)  # Ctrl-C or a scheduler's preemption: the whole job
    killed = finish("wmt14_en_de.sh", proc, check=False)
    assert killed.returncode != 0 and not (wmt_copy / "teacher" / "train.done").exists()
    (kept,) = (wmt_copy / "superseded").glob("teacher.*")
    assert (kept / "checkpoint_best.pt").exists()  # the earlier teacher, kept
    resumed = run_recipe("wmt14_en_de.sh", wmt_copy, "teacher/train.done", "-j", "1", "--config", *SHARDS, steps,
                         **smoke_runs["env"])
    text = log.read_text()
    loaded = re.findall(r"Loaded checkpoint teacher/checkpoint_last.pt \(epoch (\d+) @ (\d+) updates\)", text)
    assert loaded and int(loaded[-1][0]) >= 2 and int(loaded[-1][1]) > 0, text[-3000:]
    assert "resuming" in text and "end of epoch 5 " in text, resumed.stderr[-2000:]


def test_killed_generation_shard_resumes_from_its_last_piece(wmt_copy, smoke_runs, tmp_path):
    # every translation shard in 2 pieces (generate_chunks): shard 0 of the Seq-KD corpus is
    # pieces 0 and 1 of 4; piece 1 fails the first time
    bad = tmp_path / "bin"
    bad.mkdir()
    real = shutil.which("fairseq-generate", path=str(BIN))
    (bad / "fairseq-generate").write_text(
        "#!/usr/bin/env bash\n"
        "prev=\nfor a in \"$@\"; do\n"
        "  [ \"$prev\" = --shard-id ] && [ \"$a\" = 1 ] && { echo 'injected failure' >&2; exit 3; }\n"
        "  prev=$a\ndone\n"
        f"exec {real} \"$@\"\n")
    (bad / "fairseq-generate").chmod(0o755)
    target, beam = "data-bin-seqkd/train.extract.json", ["seqkd_beam=4", "generate_chunks=2"]
    failed = run_recipe("wmt14_en_de.sh", wmt_copy, target, "-j", "1", "--config", *SHARDS, *beam, check=False,
                        path_first=bad, **smoke_runs["env"])
    assert failed.returncode != 0 and "injected failure" in failed.stderr, failed.stderr[-3000:]
    pieces = wmt_copy / "seqkd-gen" / "shard0000.txt.chunks"
    assert (pieces / "chunk0000.txt").exists() and not (pieces / "chunk0001.txt").exists()
    assert not (wmt_copy / "seqkd-gen" / "shard0000.txt").exists()
    resumed = run_recipe("wmt14_en_de.sh", wmt_copy, target, "-j", "1", "--config", *SHARDS, *beam, **smoke_runs["env"])
    log = (wmt_copy / "logs" / "generate_shard.seqkd.0000.log").read_text()
    assert "chunk 1 of 2 finished before: not run again" in log.split("starting afresh")[-1], log[-2000:]
    assert ran(resumed).count("generate_shard.seqkd.0000") == 1, resumed.stderr[-3000:]  # piece 1 alone
    report = json.loads((wmt_copy / target).read_text())
    assert report["sentences"] == report["written"] == 600, report
    assert "--beam 4" in log.split("starting afresh")[-1]


def test_generation_translates_everything_on_a_machine_with_two_gpus(smoke_runs, tmp_path):
    # fairseq-generate and fairseq-validate default --distributed-world-size to the number of GPUs
    # (fairseq-generate then translates 1/N of the data): rerun every generation and validation
    # command of the run with torch reporting 2 GPUs (on this CPU), as the pipeline ran it
    run = smoke_runs["wmt14_en_de.sh"]
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import torch\ntorch.cuda.device_count = lambda: 2\n")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(site)}
    probe = subprocess.run([str(BIN / "python"), "-c", "from fairseq.dataclass.configs import "
                            "DistributedTrainingConfig as D; print(D().distributed_world_size)"],
                           env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "2"  # the simulation takes: fairseq's default is now 2
    commands = {}
    for log in sorted((run / "logs").glob("*.log")):
        for line in log.read_text().splitlines():
            text = line.partition(" | ")[2]
            # an evaluation job runs its generations and validation in one process (evaluate-checkpoint),
            # each given after ':::' and its kind with the arguments of the command it stands for
            if text.startswith("fairseq-seqkd evaluate-checkpoint "):
                runs = [part.split(" ", 1) for part in text.split(" ::: ")[1:]]
                texts = [f"fairseq-{'validate' if kind == 'validate' else 'generate'} {rest}" for kind, rest in runs]
            else:
                texts = [text]
            for text in texts:
                cmd = text.split(" ")
                if cmd[0] in ("fairseq-generate", "fairseq-validate"):
                    commands.setdefault((log.stem.split(".")[0], cmd[0], "--seq-inter" in cmd), text)
    kinds = {(rule, cmd) for rule, cmd, _ in commands}
    assert {("generate_shard", "fairseq-generate"), ("evaluate", "fairseq-generate"),
            ("evaluate", "fairseq-validate"), ("prune_point", "fairseq-generate"),
            ("check_export", "fairseq-generate"), ("evaluate_test_set", "fairseq-generate")} <= kinds, kinds
    def rerun(kind_line):
        (rule, _, _), line = kind_line
        cmd = shlex.split(line)
        if rule == "generate_shard":  # one shard: ask for the whole set instead
            i = cmd.index("--num-shards")
            del cmd[i:i + 4]
        return line, subprocess.run(cmd, cwd=run, env=env, capture_output=True, text=True)

    with ThreadPoolExecutor(2) as pool:
        for line, proc in pool.map(rerun, commands.items()):
            assert proc.returncode == 0, (line, proc.stderr[-2000:])
            if line.startswith("fairseq-generate"):
                ids = {int(m) for m in re.findall(r"^H-(\d+)\t", proc.stdout, re.M)}
                data = shlex.split(line)[1]  # data-bin, or testsets/NAME/data-bin
                expected = 600 if "--gen-subset train" in line else EXTRA_SIZES.get(data.split("/")[1], 30) \
                    if data.startswith("testsets/") else 30
                assert ids == set(range(expected)), (line, len(ids))


def test_generation_batches_are_bounded():
    # the full recipes' teacher translations: batches by tokens, outputs bounded by the source
    sys.path.insert(0, str(ROOT / "recipes"))
    import jobs

    for recipe in ("wmt14_en_de", "iwslt15_th_en", "multi30k_en_de"):
        config = {}
        for layer in ("defaults", recipe):
            config.update(jobs.load_yaml(ROOT / "recipes" / "config" / f"{layer}.yaml") or {})
        gen = [str(a) for a in config["generate_args"]]
        options = dict(zip(gen[::2], gen[1::2]))
        # both bounds: --max-tokens alone lets thousands of short sentences into one batch
        assert int(options["--max-tokens"]) <= 4096 and int(options["--batch-size"]) <= 128, (recipe, gen)
        assert float(options["--max-len-a"]) <= 1.5 and int(options["--max-len-b"]) <= 20, (recipe, gen)
        assert config["generate_fp16_args"] == ["--fp16"], recipe


def test_extra_test_sets_are_checked():
    sys.path.insert(0, str(ROOT / "recipes"))
    import jobs

    config = {**jobs.load_yaml(ROOT / "recipes" / "config" / "defaults.yaml"), "src": "en", "tgt": "de",
              "corpus": "toy", "raw_dir": "/data"}
    known = set(config)
    good = [["news2015", "n.en", "n.de"], ["iwslt-tst_2", "/abs/t.en", "/abs/t.de"]]
    jobs.check_config({**config, "extra_test_sets": good}, known)
    assert jobs.test_sets({**config, "extra_test_sets": good}) == {
        "news2015": ("/data/n.en", "/data/n.de"), "iwslt-tst_2": ("/abs/t.en", "/abs/t.de")}
    for sets, message in (([["news 2015", "a", "b"]], "only letters, digits"), ([["a/b", "a", "b"]], "only letters"),
                          ([["test", "a", "b"]], "is taken"), ([["curve", "a", "b"]], "is taken"),
                          ([["x", "a", "b"], ["x", "c", "d"]], "given twice"), ([["x", "a"]], "is not \\[name"),
                          ([["x", "", "b"]], "is not \\[name"), ("x", "must be a list")):
        with pytest.raises(ValueError, match=message):
            jobs.check_config({**config, "extra_test_sets": sets}, known)


def test_teacher_settings_are_checked(tmp_path):
    sys.path.insert(0, str(ROOT / "recipes"))
    import jobs

    config = {**jobs.load_yaml(ROOT / "recipes" / "config" / "defaults.yaml"), "src": "en", "tgt": "de",
              "corpus": "toy"}
    known = set(config)
    for change, message in (({"teacher_engine": "marian"}, "use fairseq .* or ct2"),
                            ({"teacher_ct2": str(tmp_path)}, "set teacher_engine: ct2"),
                            ({"teacher_engine": "ct2", "teacher_ct2": str(tmp_path)}, "no model.bin"),
                            ({"teacher_dir": str(tmp_path)}, "needs raw text")):
        with pytest.raises(ValueError, match=message):
            jobs.check_config({**config, **change}, known)
    # a folder that is no teacher stops the plan, with the data step's own message
    with pytest.raises(ValueError, match=r"cannot be this run's teacher:\n.*no checkpoint"):
        jobs.teacher_folder(str(tmp_path), "en", "de", [], [])
    assert jobs.length_bounds(["--beam", 5, "--max-len-a", 1.2, "--max-len-b", 20]) == \
        ["--max-len-a", "1.2", "--max-len-b", "20"]


def test_foreign_ctranslate2_teacher(smoke_runs, tmp_path):
    """TEACHER_CT2: a CTranslate2 model with a tokenization of its own (here the finished run's teacher,
    converted, reading and writing raw text through its sentencepiece model): it translates the raw
    training source, the text is encoded for the students, Seq-Inter reranks its K-best lists, it is
    scored as a system; Word-KD, which needs its vocabulary, is left out of the plan."""
    done = smoke_runs["wmt14_en_de.sh"]
    foreign = tmp_path / "foreign"
    run_cli("fairseq-seqkd", "export", done / "teacher" / "checkpoint_best.pt", "--data", done / "data-bin",
            "--out", foreign / "teacher.pt", "--ct2", foreign / "ct2", "--quantization", "float32")
    layer = tmp_path / "foreign.yaml"
    layer.write_text(f"teacher_ct2_args: [--spm, '{done / 'prepared' / 'spm.model'}']\n", encoding="utf-8")
    run = tmp_path / "run"
    env = {"RAW_DIR": str(done / "raw"), "CONFIGFILE": str(layer), "TEACHER_CT2": str(foreign / "ct2")}
    plan = planned(run_recipe("wmt14_en_de.sh", run, "-n", **env))
    assert "train_teacher" not in plan and "cache_shard" not in plan and "train_word_kd" not in plan, plan
    assert plan["evaluate_ct2_teacher"] == 1 and plan["train_pruned"] == 1, plan
    run_recipe("wmt14_en_de.sh", run, "-j", "2", "results/teacher.json", "results/seq_kd.json",
               "results/seq_inter.json", **env)
    gen = (run / "seqkd-gen" / "shard0000.txt").read_text(encoding="utf-8").splitlines()
    source = (run / "prepared" / "train.raw.en").read_text(encoding="utf-8").splitlines()
    assert [int(x.split("\t")[0]) for x in gen] == list(range(len(source)))  # raw text in, one line per sentence
    assert not any("▁" in x for x in gen)  # and text out, detokenized
    for corpus in ("seqkd", "seqinter"):
        extract = json.loads((run / f"data-bin-{corpus}" / "train.extract.json").read_text())
        assert extract["written"] == extract["sentences"] == len(source)
    for name in ("teacher", "seq_kd", "seq_inter"):
        result = json.loads((run / "results" / f"{name}.json").read_text())
        assert isinstance(result["bleu_greedy"], float) and result["sentences"] > 0, result
