"""Nothing lost, nothing stale: what a rerun of the pipeline does to the user's files and to finished work.

The Multi30k recipe in SMOKE=1 mode on a raw folder of the user's (RAW_DIR, outside the run folder), run
up to the teacher and the baseline once (the module's fixture); each test works on a copy of that run
folder, or on a raw folder of its own. docs/recipes.md, "What a rerun does", is the policy tested here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import process_commands
from recipe_runs import ROOT, finish, planned, ran, run_recipe, start_recipe

pytestmark = pytest.mark.recipes

RECIPE = "multi30k_en_de.sh"
TARGETS = ["teacher/train.done", "baseline/train.done"]


def smoke_raw(folder: Path) -> Path:
    """The SMOKE corpus under Multi30k's file names, as a user's raw folder."""
    subprocess.run(["bash", str(ROOT / "recipes" / "data" / "multi30k_en_de.sh"), "smoke", str(folder)],
                   check=True, capture_output=True, env={**os.environ, "PATH": f"{Path(sys.executable).parent}"
                                                                        f"{os.pathsep}{os.environ['PATH']}"})
    shutil.rmtree(folder / "toy")
    return folder


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: its sha256 and modification time (ns)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(folder))] = (hashlib.sha256(path.read_bytes()).hexdigest(),
                                                  path.stat().st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory) -> dict[str, Path]:
    """A run folder with the data prepared and the teacher and baseline trained, from a user's raw folder."""
    root = tmp_path_factory.mktemp("rerun")
    raw = smoke_raw(root / "raw")
    run = root / "run"
    run_recipe(RECIPE, run, "-j", "2", *TARGETS, RAW_DIR=str(raw))
    return {"run": run, "raw": raw}


@pytest.fixture
def run_copy(partial_run, tmp_path) -> Path:
    """A copy of the partial run (its saved environment names the fixture's raw folder, which stays)."""
    dest = tmp_path / "run"
    shutil.copytree(partial_run["run"], dest, symlinks=True)
    return dest


def test_a_user_raw_folder_with_a_file_missing_keeps_its_files(tmp_path):
    raw = smoke_raw(tmp_path / "raw")
    (raw / "val.de").unlink()
    before = snapshot(raw)
    failed = run_recipe(RECIPE, tmp_path / "run", "--until", "prepare", check=False, RAW_DIR=str(raw))
    assert failed.returncode != 0
    assert "lacks 1 of the 6 raw files" in failed.stderr and f"{raw}/val.de" in failed.stderr, failed.stderr[-2000:]
    assert snapshot(raw) == before
    # the same folder reached through a link in the run folder is still the user's
    run = tmp_path / "linked"
    run.mkdir()
    (run / "raw").symlink_to(raw)
    failed = run_recipe(RECIPE, run, "--until", "prepare", check=False)
    assert failed.returncode != 0 and "lacks 1 of the 6 raw files" in failed.stderr, failed.stderr[-2000:]
    assert snapshot(raw) == before


def test_a_failed_download_deletes_no_raw_file_that_was_there(tmp_path):
    # the pipeline's own raw folder (RUN/raw), one file missing, the download failing (no network here)
    run = tmp_path / "run"
    smoke_raw(run / "raw")
    (run / "raw" / "val.de").unlink()
    before = snapshot(run / "raw")
    offline = tmp_path / "bin"
    offline.mkdir()
    for tool in ("curl", "wget"):
        (offline / tool).write_text("#!/bin/sh\necho 'offline' >&2\nexit 6\n")
        (offline / tool).chmod(0o755)
    layer = tmp_path / "download.yaml"
    layer.write_text("smoke: false\n")  # the data script downloads, as a full recipe's does
    failed = run_recipe(RECIPE, run, "--until", "prepare", check=False, path_first=offline, CONFIGFILE=str(layer))
    assert failed.returncode != 0 and "could not download" in failed.stderr, failed.stderr[-2000:]
    after = snapshot(run / "raw")
    assert {k: v for k, v in after.items() if not k.startswith("downloads")} == before


def test_raw_files_decide_by_content_not_by_path_or_clock(partial_run, run_copy, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(partial_run["raw"], raw)  # new modification times, the same bytes
    # the same files in another folder: nothing to do (the environment saved with the run is replaced)
    plan = run_recipe(RECIPE, run_copy, "-n", *TARGETS, RAW_DIR=str(raw))
    assert "Nothing to be done" in plan.stdout + plan.stderr, plan.stdout[-3000:]
    # a raw file replaced by another with an older modification time: prepare reruns
    text = (raw / "train.en").read_text(encoding="utf-8").splitlines()
    (raw / "train.en").write_text("\n".join([text[1], text[0], *text[2:]]) + "\n", encoding="utf-8")
    os.utime(raw / "train.en", (1e9, 1e9))
    plan = run_recipe(RECIPE, run_copy, "-n", *TARGETS, RAW_DIR=str(raw))
    assert planned(plan).get("prepare") == 1, plan.stdout[-3000:]
    assert "Params have changed" in plan.stdout


def test_the_environment_is_saved_with_the_run(partial_run, run_copy):
    # a resumed run without RAW_DIR in its environment is the same run: nothing to do
    plan = run_recipe(RECIPE, run_copy, "-n", *TARGETS)
    assert "Nothing to be done" in plan.stdout + plan.stderr, plan.stdout[-3000:]
    assert f"RAW_DIR={partial_run['raw']}, as saved with the run" in plan.stderr


def test_a_dry_run_changes_no_file(partial_run, run_copy, tmp_path):
    before = snapshot(run_copy)
    other = shutil.copytree(partial_run["raw"], tmp_path / "other-raw")
    for env, config in (({}, []), ({"RAW_DIR": str(other)}, ["student_steps=[--max-epoch, 1]"])):
        plan = run_recipe(RECIPE, run_copy, "-n", *(["--config", *config] if config else []), **env)
        assert "Job stats" in plan.stdout, plan.stdout[-2000:]
        assert snapshot(run_copy) == before
    assert sorted(p.name for p in run_copy.iterdir()) == sorted(p.name for p in partial_run["run"].iterdir())


def test_settings_changed_and_back_reuse_the_finished_training(run_copy):
    ckpt = run_copy / "baseline" / "checkpoint_last.pt"
    first = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    trial = run_recipe(RECIPE, run_copy, "baseline/train.done", "--config", "student_steps=[--max-epoch, 1]")
    assert ran(trial).count("train_baseline") == 1
    kept = list((run_copy / "superseded").glob("baseline.*"))
    assert len(kept) == 1 and hashlib.sha256((kept[0] / "checkpoint_last.pt").read_bytes()).hexdigest() == first
    back = run_recipe(RECIPE, run_copy, "baseline/train.done")
    assert ran(back) == [], back.stderr[-2000:]  # brought back finished: no fairseq-train
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == first
    assert "restored from superseded/baseline." in back.stderr
    assert len(list((run_copy / "superseded").glob("baseline.*"))) == 1  # the trial, kept in its turn


def test_a_torn_checkpoint_last_resumes_from_the_interval_one(run_copy):
    interval = ["extra_train_args=[--save-interval-updates, 3, --keep-interval-updates, 1]"]
    run_recipe(RECIPE, run_copy, "teacher/train.done", "--config", *interval)
    teacher = run_copy / "teacher"
    (saved,) = teacher.glob("checkpoint_*_*.pt")
    updates = int(saved.stem.split("_")[-1])
    last = teacher / "checkpoint_last.pt"
    with open(last, "r+b") as f:  # a copy cut short by a kill
        f.truncate(last.stat().st_size // 2)
    for name in ("train.done", "train.json"):  # as after a kill: the training did not finish
        (teacher / name).unlink()
    resumed = run_recipe(RECIPE, run_copy, "teacher/train.done", "--config", *interval)
    log = (run_copy / "logs" / "train_teacher.log").read_text()
    assert f"resuming from teacher/{saved.name}" in log, resumed.stderr[-2000:]
    loaded = rf"Loaded checkpoint teacher/checkpoint_last.pt \(epoch \d+ @ {updates} updates\)"
    assert re.search(loaded, log), log[-3000:]
    assert (teacher / "train.done").exists() and (teacher / "checkpoint_last.pt.torn").exists()


def test_a_second_writer_is_refused(run_copy):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); import jobs\n"
         "with jobs.folder_lock('baseline', ['fairseq-train', 'elsewhere']):\n"
         "    print('held', flush=True); time.sleep(120)", str(ROOT / "recipes")],
        cwd=run_copy, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = run_recipe(RECIPE, run_copy, "baseline/train.done", "--config", "student_steps=[--max-epoch, 1]",
                             check=False)
        assert refused.returncode != 0
        assert f"baseline is being written by another process (pid {holder.pid} on host" in refused.stderr, \
            refused.stderr[-3000:]
        assert not (run_copy / "superseded").exists()  # nothing moved under the other writer
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_snakemake_leaves_no_writer_behind(run_copy):
    proc = start_recipe(RECIPE, run_copy, "teacher/train.done", "-j", "1", "--config",
                        "teacher_steps=[--max-epoch, 3000]")  # minutes: killed long before it ends
    try:
        deadline = time.monotonic() + 120
        while not any("fairseq-train" in c for c in process_commands(proc.pid).values()):
            assert proc.poll() is None and time.monotonic() < deadline, finish(RECIPE, proc, check=False).stderr[-2000:]
            time.sleep(0.5)
        (snakemake,) = [pid for pid, c in process_commands(proc.pid).items() if "bin/snakemake " in c]
        os.kill(snakemake, signal.SIGKILL)  # the scheduler's process alone, as a node's OOM killer would
        deadline = time.monotonic() + 30
        while any("fairseq-train" in c for c in process_commands(proc.pid).values()):
            assert time.monotonic() < deadline, "fairseq-train outlived the Snakemake that started it"
            time.sleep(0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever is left of the group, an orphan included
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def test_a_training_record_names_its_checkpoint(partial_run):
    done = json.loads((partial_run["run"] / "baseline" / "train.done").read_text())
    assert done == json.loads((partial_run["run"] / "baseline" / "train.json").read_text())
    assert done["checkpoint"] == "baseline/checkpoint_last.pt"
