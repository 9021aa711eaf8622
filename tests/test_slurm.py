"""The pipeline on a real SLURM cluster: the one-node cluster of scripts/slurm_local.sh (started by `make test`
as root), Snakemake's SLURM executor plugin, the profile recipes/profiles/slurm-local.

One SMOKE run from an empty folder, every job but the local ones a SLURM job, its report the same as a local
run's; then, on copies of it: a training stopped at its time limit's warning and resumed by the retry, then
cancelled by hand; a training of 2 ranks started by srun. Without a cluster (not root, no sbatch) the tests
skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from recipe_runs import ROOT, finish, planned, run_recipe, start_recipe

PROFILE = str(ROOT / "recipes/profiles/slurm-local")
RECIPE = "multi30k_en_de.sh"
LOCAL_RULES = {"all", "raw_data"}  # localrules: run by Snakemake itself, not submitted
# make test's minutes: one "+ Seq-Inter" row (the baseline's) instead of four; every kind of job stays
TRIM = ("--config", "seq_inter_from=[baseline]")


def _cluster_problem() -> str | None:
    if shutil.which("sbatch") is None:
        return "no SLURM (sbatch not found): as root, bash scripts/slurm_local.sh start"
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if proc.returncode != 0 or not re.search(r"idle|mixed|allocated", proc.stdout):
        return f"the SLURM cluster is not up (sinfo: {proc.stdout.strip() or proc.stderr.strip()})"
    return None


PROBLEM = _cluster_problem()
pytestmark = [pytest.mark.recipes, pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")]


def slurm_jobs(run: Path) -> dict[str, list[str]]:
    """rule -> the SLURM job ids it ran as, from the plugin's per-job logs (kept: slurm-keep-successful-logs)."""
    out: dict[str, list[str]] = {}
    for log in sorted((run / ".snakemake/slurm_logs").glob("rule_*/**/*.log"), key=lambda p: int(p.stem)):
        rule = log.relative_to(run / ".snakemake/slurm_logs").parts[0][len("rule_"):]
        out.setdefault(rule, []).append(log.stem)
    return out


def sacct_states(ids: list[str]) -> dict[str, str]:
    """SLURM's accounting record of each job: its final state (COMPLETED, FAILED, TIMEOUT, CANCELLED ...)."""
    proc = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(ids)],
                          capture_output=True, text=True, check=True)
    return {job: state.split()[0] for job, state in (line.split("|") for line in proc.stdout.splitlines())}


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory) -> dict:
    run = tmp_path_factory.mktemp("slurm") / "m30k"
    plan = planned(run_recipe(RECIPE, run, "-n", *TRIM))
    t0 = time.monotonic()
    proc = run_recipe(RECIPE, run, "--profile", PROFILE, *TRIM)
    return {"run": run, "proc": proc, "plan": plan, "seconds": time.monotonic() - t0}


def copy_run(slurm_run: dict, dest: Path) -> Path:
    shutil.copytree(slurm_run["run"], dest, symlinks=True)
    shutil.rmtree(dest / ".snakemake/slurm_logs")  # this copy's own jobs only
    return dest


def test_every_job_is_a_slurm_job_and_completes(slurm_run):
    run, plan = slurm_run["run"], slurm_run["plan"]
    submitted = slurm_jobs(run)
    assert set(submitted) == set(plan) - LOCAL_RULES, (sorted(submitted), plan)
    for rule, ids in submitted.items():
        assert len(ids) == plan[rule], (rule, ids, plan[rule])
    ids = [job for jobs in submitted.values() for job in jobs]
    states = sacct_states(ids)
    assert states == dict.fromkeys(ids, "COMPLETED"), states
    assert json.loads((run / "report.json").read_text())["systems"]["seq_kd"]["bleu_greedy"] is not None
    print(f"SLURM SMOKE run: {len(ids)} SLURM jobs, {slurm_run['seconds']:.0f} s")


def test_the_report_is_a_local_runs(slurm_run, tmp_path):
    """The baseline and what follows it trained again by a local run: the same figures, to the digit."""
    run = copy_run(slurm_run, tmp_path / "local")
    shutil.rmtree(run / "baseline")
    proc = run_recipe(RECIPE, run, "-j", "2", *TRIM)
    assert "train_baseline" in re.findall(r"\| (train_\w+) \| fairseq-train \| running", proc.stderr)
    slurm = json.loads((slurm_run["run"] / "report.json").read_text())["systems"]
    local = json.loads((run / "report.json").read_text())["systems"]
    assert set(slurm) == set(local)
    for name in ("baseline", "seq_inter"):
        for key in ("bleu_greedy", "bleu_beam", "ppl", "chrf_greedy"):
            assert local[name][key] == slurm[name][key], (name, key, local[name][key], slurm[name][key])


def running_job(proc: subprocess.Popen, rule: str, log: Path, started: str = "| train | epoch",
                other_than: tuple[str, ...] = ()) -> str:
    """The SLURM job id of ``rule``'s job (not one of ``other_than``) once it runs and the part of its log
    written since the call shows ``started`` (the first epoch's end: training is under way); a test's one
    job at a time."""
    before = log.stat().st_size if log.exists() else 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        running = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i %k"], capture_output=True,
                                 text=True).stdout  # %k: the comment the plugin sets, rule_NAME_...
        job = next((line.split()[0] for line in running.splitlines()
                    if f"rule_{rule}" in line and line.split()[0] not in other_than), None)
        if job is not None and log.exists() and started.encode() in log.read_bytes()[before:]:
            return job
        time.sleep(1)
    raise AssertionError(f"{rule} never ran as a SLURM job (recipe exit: {proc.poll()})")


def test_the_time_limit_warning_saves_the_retry_resumes_and_a_cancelled_job_fails_the_run(slurm_run, tmp_path):
    """SLURM's warning before the time limit (--signal=URG@S: SIGURG to every process of the job's steps),
    sent here by scancel -s URG at a known moment: the training saves, stops and fails; the retry resubmits
    it and it resumes from that update. That retry cancelled by hand (scancel): the run fails (no retry
    left), nothing of the job looks finished, and a rerun completes."""
    run = copy_run(slurm_run, tmp_path / "warning")
    log = run / "logs/train_baseline.log"
    long = (*TRIM, "student_steps=[--max-update, 600, --max-epoch, 100000]")
    proc = start_recipe(RECIPE, run, "--profile", PROFILE, "--retries", "1", "--until", "train_baseline", *long)
    first = running_job(proc, "train_baseline", log)
    subprocess.run(["scancel", "-s", "URG", first], check=True)
    retry = running_job(proc, "train_baseline", log, "Loaded checkpoint", other_than=(first,))  # resumed
    subprocess.run(["scancel", retry], check=True)
    failed = finish(RECIPE, proc, check=False)
    assert failed.returncode != 0, failed.stderr[-3000:]
    assert sacct_states([first, retry]) == {first: "FAILED", retry: "CANCELLED"}
    assert slurm_jobs(run)["train_baseline"] == [first, retry]
    text = log.read_text()
    saved = int(re.search(r"got SIGURG .* saving a checkpoint at update (\d+)", text).group(1))
    assert 0 < saved < 600
    # the retry: fairseq's "Loaded checkpoint ... (epoch E @ N updates)"
    assert f"@ {saved} updates)" in text.split("got SIGURG")[1]
    assert not (run / "baseline/train.done").exists()  # nothing of the cancelled job looks finished

    run_recipe(RECIPE, run, "--profile", PROFILE, "--until", "train_baseline", *long)
    assert json.loads((run / "baseline/train.done").read_text())["checkpoint"].endswith("checkpoint_last.pt")
    assert sacct_states(slurm_jobs(run)["train_baseline"][2:]) == {slurm_jobs(run)["train_baseline"][2]: "COMPLETED"}


def test_a_training_of_2_ranks_started_by_srun(slurm_run, tmp_path):
    """train_ranks: 2 with train_launcher [srun]: the baseline's training is one SLURM job of 2 tasks, whose
    srun step starts fairseq's 2 ranks (gloo: no CUDA here); its checkpoint is of the kind one process writes.
    A new training (the world size is part of it): the one-process training is kept aside, not lost."""
    run = copy_run(slurm_run, tmp_path / "ranks")
    run_recipe(RECIPE, run, "--profile", PROFILE, "--until", "train_baseline", *TRIM, "train_ranks=2",
               "train_launcher=[srun]")
    [job] = slurm_jobs(run)["train_baseline"]
    steps = subprocess.run(["sacct", "-n", "-P", "-o", "JobID,NTasks,State", "-j", job], capture_output=True,
                           text=True, check=True).stdout.split()
    assert f"{job}.0|2|COMPLETED" in steps, steps  # the srun step: 2 tasks
    assert "distributed init (rank 1)" in (run / "logs/train_baseline.log").read_text()
    ranks, one = (torch_load(d / "baseline/checkpoint_last.pt") for d in (run, slurm_run["run"]))
    assert ranks["cfg"]["distributed_training"]["distributed_world_size"] == 2
    assert {k: v.shape for k, v in ranks["model"].items()} == {k: v.shape for k, v in one["model"].items()}
    assert list((run / "superseded").glob("baseline.*/checkpoint_last.pt")), "the one-process baseline is gone"


def torch_load(path: Path) -> dict:
    from fairseq_seqkd.checkpoints.storage import load_checkpoint

    return load_checkpoint(str(path))
