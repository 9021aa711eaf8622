"""recipes/jobs.py, the way a pipeline job runs, without a pipeline: fingerprints, work folders, locks."""

from __future__ import annotations

import os
import sys
import time
import zipfile
from pathlib import Path

import pytest

from fairseq_seqkd import io_utils

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import jobs  # noqa: E402


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # jobs run in the run folder


def test_content_fingerprint_follows_bytes_not_paths_or_times(tmp_path):
    a = tmp_path / "a" / "train.en"
    a.parent.mkdir()
    a.write_text("one\ntwo\n")
    b = tmp_path / "b" / "train.en"
    b.parent.mkdir()
    b.write_text("one\ntwo\n")
    os.utime(b, (1e9, 1e9))
    assert jobs.content_fingerprint(a) == jobs.content_fingerprint(b)
    assert jobs.content_fingerprint(a.parent) == jobs.content_fingerprint(b.parent)
    assert jobs.fingerprint(["prepare", str(a)], [a]) == jobs.fingerprint(["prepare", str(b)], [b])
    b.write_text("one\ntwo!\n")
    assert jobs.content_fingerprint(a) != jobs.content_fingerprint(b)
    with pytest.raises(ValueError, match="no such file"):
        jobs.content_fingerprint(tmp_path / "missing")


def test_content_fingerprint_of_a_large_file_reads_its_ends(tmp_path, monkeypatch):
    # the pipeline's fingerprint is the package's (fairseq_seqkd.io_utils): one policy, its sizes there
    monkeypatch.setattr(io_utils, "FINGERPRINT_WHOLE_BYTES", 10)
    monkeypatch.setattr(io_utils, "FINGERPRINT_EDGE_BYTES", 4)
    path = tmp_path / "big"
    path.write_bytes(b"0123456789abcdefghij")
    first = jobs.content_fingerprint(path)
    path.write_bytes(b"0123XXXXXXXXXXXXghij")  # the middle of a large file is not read
    assert jobs.content_fingerprint(path) == first
    path.write_bytes(b"0123456789abcdefghiX")
    assert jobs.content_fingerprint(path) != first


def test_a_training_folder_is_kept_and_brought_back(tmp_path):
    data = tmp_path / "data"
    data.write_text("x")
    log = tmp_path / "log"
    jobs.own_folder("baseline", ["train", "--lr", "1"], [data], log, keep=True)
    Path("baseline/checkpoint_last.pt").write_text("first")
    jobs.own_folder("baseline", ["train", "--lr", "2"], [data], log, keep=True)
    assert not Path("baseline/checkpoint_last.pt").exists()
    Path("baseline/checkpoint_last.pt").write_text("second")
    jobs.own_folder("baseline", ["train", "--lr", "1"], [data], log, keep=True)  # back to the first settings
    assert Path("baseline/checkpoint_last.pt").read_text() == "first"
    (kept,) = Path("superseded").iterdir()
    assert (kept / "checkpoint_last.pt").read_text() == "second"
    # settings that failed before writing anything (fairseq-train refused an option), then the first ones
    # again: the failed attempt's folder (its fingerprint alone) does not stand in the way of bringing it back
    jobs.own_folder("baseline", ["train", "--lr", "bad"], [data], log, keep=True)
    assert sorted(p.name for p in Path("baseline").iterdir()) == ["fingerprint"]
    jobs.own_folder("baseline", ["train", "--lr", "1"], [data], log, keep=True)
    assert Path("baseline/checkpoint_last.pt").read_text() == "first"
    # without keep (a folder its command remakes): the other content is deleted
    jobs.own_folder("prepared", ["prepare", "a"], [data], log)
    Path("prepared/x").write_text("old")
    jobs.own_folder("prepared", ["prepare", "b"], [data], log)
    assert sorted(p.name for p in Path("prepared").iterdir()) == ["fingerprint"]


def test_whole_checkpoint_and_the_fallback(tmp_path):
    save = Path("teacher")
    save.mkdir()
    for name in ("checkpoint_1_3.pt", "checkpoint_2_6.pt", "checkpoint_last.pt"):
        with zipfile.ZipFile(save / name, "w") as z:
            z.writestr("archive/data.pkl", name)
    assert jobs.whole_checkpoint(save / "checkpoint_last.pt")
    blob = (save / "checkpoint_last.pt").read_bytes()
    (save / "checkpoint_last.pt").write_bytes(blob[: len(blob) // 2])
    assert not jobs.whole_checkpoint(save / "checkpoint_last.pt")
    jobs.check_resume(save, tmp_path / "log")
    assert (save / "checkpoint_last.pt").read_bytes() == (save / "checkpoint_2_6.pt").read_bytes()
    assert (save / "checkpoint_last.pt.torn").read_bytes() == blob[: len(blob) // 2]
    for path in save.glob("checkpoint_*_*.pt"):
        path.unlink()
    (save / "checkpoint_last.pt").write_bytes(b"torn")
    with pytest.raises(jobs.JobFailed, match=r"rm teacher/checkpoint_last.pt"):
        jobs.check_resume(save, tmp_path / "log")


def test_a_folder_has_one_writer(tmp_path):
    with jobs.folder_lock("seq_kd", ["fairseq-train", "x"]):
        with pytest.raises(jobs.JobFailed, match=rf"seq_kd is being written by another process \(pid {os.getpid()} "):
            with jobs.folder_lock("seq_kd"):
                pass
    with jobs.folder_lock("seq_kd"):  # released with its holder
        pass


def test_a_failed_join_leaves_no_temporary_output(tmp_path, monkeypatch):
    cmds = [[sys.executable, "-c", f"print({c})"] for c in range(2)]
    real = jobs.shutil.copyfileobj

    def full_disk(src, dst, length=0):
        real(src, dst, length)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jobs.shutil, "copyfileobj", full_disk)
    with pytest.raises(OSError, match="No space"):
        jobs.run_chunks(cmds, "gen/shard0000.txt", tmp_path / "log", [])
    assert sorted(p.name for p in Path("gen").iterdir()) == ["shard0000.txt.chunks"]
    monkeypatch.setattr(jobs.shutil, "copyfileobj", real)
    jobs.run_chunks(cmds, "gen/shard0000.txt", tmp_path / "log", [])  # resumes: the chunks are there
    assert Path("gen/shard0000.txt").read_text() == "0\n1\n"


def test_true_or_false_settings_given_as_text():
    config = {"export_ct2": "false", "smoke": "True", "num_shards": 2}
    jobs.coerce_flags(config, {"export_ct2": True, "smoke": False, "num_shards": 1})
    assert config == {"export_ct2": False, "smoke": True, "num_shards": 2}
    with pytest.raises(ValueError, match="export_ct2: 'maybe' is not true or false"):
        jobs.coerce_flags({"export_ct2": "maybe"}, {"export_ct2": True})


def _slurm_settings(**changes):
    defaults = jobs.load_yaml(Path(jobs.__file__).parent / "config/defaults.yaml")
    return {**defaults, **changes}


def test_slurm_resources_of_each_kind_of_job():
    config = _slurm_settings(slurm_partition="cpu", slurm_gpu_partition="gpu", slurm_gpu_model="a100")
    train = jobs.slurm_resources(config, "train")
    assert train == {"mem_mb": 64000, "runtime": 2880, "slurm_partition": "gpu", "gpu": 1, "gpu_model": "a100",
                     "slurm_extra": "--signal=URG@300"}
    assert jobs.slurm_resources(config, "cpu") == {"mem_mb": 32000, "runtime": 480, "slurm_partition": "cpu"}
    # a CPU-only run (device: cpu, or slurm_gpus: 0) asks for no GPU, and its GPU kinds go to the cpu partition
    for cpu_only in (_slurm_settings(device="cpu", slurm_partition="cpu", slurm_gpu_partition="gpu"),
                     _slurm_settings(slurm_gpus=0, slurm_partition="cpu", slurm_gpu_partition="gpu")):
        gpu_kind = jobs.slurm_resources(cpu_only, "gpu")
        assert "gpu" not in gpu_kind and gpu_kind["slurm_partition"] == "cpu", gpu_kind
    assert "slurm_partition" not in jobs.slurm_resources(_slurm_settings(), "gpu")  # sbatch's default partition


@pytest.mark.parametrize("changes, message", [
    ({"slurm_jobs": {"train": {"mem_mb": 1, "runtime": 1}}}, "give each of teacher, train, gpu, cpu"),
    ({"slurm_jobs": {k: {"mem_mb": "16G", "runtime": 60} for k in jobs.SLURM_KINDS}}, "whole numbers"),
    ({"slurm_time_warning": 600, "slurm_jobs": {k: {"mem_mb": 1000, "runtime": 5} for k in jobs.SLURM_KINDS}},
     "below slurm_jobs.teacher's runtime"),
])
def test_slurm_settings_that_cannot_work_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        for kind in jobs.SLURM_KINDS:
            jobs.slurm_resources(_slurm_settings(**changes), kind)


def test_sbatch_options_of_each_kind_by_the_executor_plugin():
    """What SLURM sees: the plugin's own sbatch line and GPU request, made from each kind's resources."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):  # Snakemake's job.resources: a mapping read by key and by attribute
        __getattr__ = dict.get

    config = _slurm_settings(slurm_partition="cpu", slurm_gpu_partition="gpu", slurm_gpu_model="a100")
    lines = {}
    for kind, threads in (("train", 8), ("cpu", 8)):
        job = SimpleNamespace(resources=Resources(jobs.slurm_resources(config, kind)), threads=threads)
        params = {"run_uuid": "RUN", "slurm_logfile": "LOG", "comment_str": "rule", "account": "",
                  "partition": f"-p {job.resources.slurm_partition}", "workdir": "DIR"}
        lines[kind] = get_submit_command(job, params) + set_gres_string(job)
    assert "-p gpu -t 2880 --mem 64000 --cpus-per-task=8 --signal=URG@300" in lines["train"], lines["train"]
    assert lines["train"].endswith("--gpus=a100:1"), lines["train"]
    assert "-p cpu -t 480 --mem 32000 --ntasks=1 --cpus-per-task=8 -D DIR" in lines["cpu"], lines["cpu"]
    assert "gpus" not in lines["cpu"] and "signal" not in lines["cpu"]


def test_ranks_launched_by_srun_are_one_job_of_n_tasks():
    """train_ranks: 2 with train_launcher [srun]: each training is one SLURM job of 2 tasks (the plugin's MPI
    job: its step is the launcher's srun, one rank a task, one GPU each); the launcher gets the task count."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.get

    config = _slurm_settings(train_ranks=2, train_launcher=["srun"], slurm_gpus=1)
    train = jobs.slurm_resources(config, "train")
    assert train["mpi"] == "srun" and train["tasks"] == 2 and train["gpu"] == 2 and train["tasks_per_gpu"] == 1
    assert "mpi" not in jobs.slurm_resources(config, "gpu")  # only the trainings have ranks
    job = SimpleNamespace(resources=Resources(train), threads=4)
    params = {"run_uuid": "RUN", "slurm_logfile": "LOG", "comment_str": "rule", "account": "", "partition": "",
              "workdir": "DIR"}
    line = get_submit_command(job, params) + set_gres_string(job)
    assert "--ntasks-per-gpu=1 --ntasks=2 --cpus-per-task=4" in line and line.endswith("--gpus=2"), line
    cpu = jobs.slurm_resources(_slurm_settings(train_ranks=2, train_launcher=["srun"], device="cpu"), "teacher")
    assert cpu["tasks"] == 2 and "gpu" not in cpu and "tasks_per_gpu" not in cpu
    # without srun (fairseq spawns a process per GPU, or torchrun does) a training is an ordinary job
    assert "mpi" not in jobs.slurm_resources(_slurm_settings(train_ranks=2), "train")

    assert jobs.train_launcher(config) == ["srun", "--ntasks", "2", "--kill-on-bad-exit=1"]
    assert jobs.train_launcher({**config, "train_launcher": ["srun", "-n", "2", "-K"]}) == ["srun", "-n", "2", "-K"]
    assert jobs.train_launcher(_slurm_settings(train_launcher=["srun"])) == ["srun"]  # one rank: as given
    assert jobs.world_size_args(config) == ["--distributed-world-size", "2"]
    assert jobs.world_size_args(_slurm_settings()) == []  # fairseq's default: every GPU
    assert jobs.rank_device_args(config, gpu=False) == ["--distributed-backend", "gloo", "--ddp-backend",
                                                        "legacy_ddp"]
    assert jobs.rank_device_args(config, gpu=True) == []
    with pytest.raises(ValueError, match="train_ranks"):
        jobs.training_ranks(_slurm_settings(train_ranks="two"))


# ---- one GPU per job: the machine's GPUs simulated by CUDA_VISIBLE_DEVICES (jobs.machine_gpus) ----

@pytest.fixture
def four_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.setenv(jobs.GPU_LOCKS, str(tmp_path / "gpu-locks"))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    return tmp_path


def test_each_job_holds_its_own_gpus_and_waits_for_free_ones(four_gpus):
    import threading

    log = four_gpus / "job.log"
    with jobs.gpu_slots(1, log) as a, jobs.gpu_slots(2, log) as b:
        assert (a, b) == ({"CUDA_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "1,2"})
        got = {}
        waiting = threading.Thread(target=lambda: got.update(_hold_slots(2, log, seconds=0)))
        waiting.start()  # two GPUs, one free: it waits, holding none (all or none)
        time.sleep(0.5)
        assert waiting.is_alive() and "waiting for 2 free GPU(s)" in log.read_text()
        with jobs.gpu_slots(1, log, poll=0.05) as c:  # the one free GPU is not held by the waiting job
            assert c == {"CUDA_VISIBLE_DEVICES": "3"}
    waiting.join(timeout=10)
    assert got["CUDA_VISIBLE_DEVICES"] in ("0,1", "0,2", "1,2", "0,3", "1,3", "2,3")
    with pytest.raises(jobs.JobFailed, match="a job of 5 GPUs on a machine that lets it use 4"):
        with jobs.gpu_slots(5, log):
            pass


def _hold_slots(count, log, seconds):
    with jobs.gpu_slots(count, log, poll=0.05) as env:
        time.sleep(seconds)
        return env


def test_no_gpu_no_lock_and_slurm_jobs_keep_their_allocation(four_gpus, monkeypatch):
    log = four_gpus / "job.log"
    with jobs.gpu_slots(0, log) as env:
        assert env == {}
    monkeypatch.setenv("SLURM_JOB_ID", "42")  # SLURM set CUDA_VISIBLE_DEVICES for the job: left as it is
    with jobs.gpu_slots(2, log) as env:
        assert env == {}
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with jobs.gpu_slots(1, log) as env:  # no GPU on this machine
        assert env == {}


def test_jobs_side_by_side_see_different_gpus(four_gpus):
    """The commands of two jobs running at once (jobs.run, as the pipeline's rules call it), each given 2 GPUs:
    each sees its own two in CUDA_VISIBLE_DEVICES, and the GPUs are free again after."""
    import threading

    # each command waits (up to 20 s) until both run: two jobs that ran one after the other fail the test
    script = ("import os, sys, time; gpus = os.environ['CUDA_VISIBLE_DEVICES']; print(gpus)\n"
              f"open(os.path.join({str(four_gpus)!r}, gpus + '.started'), 'w').close()\n"
              "t = time.monotonic()\n"
              f"while len([n for n in os.listdir({str(four_gpus)!r}) if n.endswith('.started')]) < 2 "
              "and time.monotonic() - t < 20: time.sleep(0.05)\n")
    outs = [four_gpus / f"job{i}.txt" for i in range(2)]
    threads = [threading.Thread(target=jobs.run, args=([sys.executable, "-c", script], four_gpus / f"job{i}.log"),
                                kwargs={"stdout": out, "gpus": 2}) for i, out in enumerate(outs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    seen = [out.read_text().strip() for out in outs]
    assert sorted(seen) == ["0,1", "2,3"], seen
    assert "on GPU" in (four_gpus / "job0.log").read_text()
    with jobs.gpu_slots(4, four_gpus / "after.log") as env:
        assert env == {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}


def test_each_kind_of_job_asks_for_its_gpus():
    config = _slurm_settings(train_ranks=4)
    assert [jobs.job_gpus(config, k) for k in jobs.SLURM_KINDS] == [4, 4, 1, 0]  # teacher, train, gpu, cpu
    assert jobs.job_gpus(_slurm_settings(), "train") == 1  # train_ranks unset: one GPU
    assert jobs.job_gpus(_slurm_settings(device="cpu", train_ranks=4), "train") == 0
    assert jobs.slurm_resources(config, "train")["gpu"] == 4  # a local run's --resources gpu=N counts these
    with pytest.raises(ValueError, match="slurm_gpus: 4; 1 .* set train_ranks"):
        jobs.job_gpus(_slurm_settings(slurm_gpus=4), "gpu")


def test_what_each_job_adds_on_a_cpu_and_on_a_gpu():
    config = _slurm_settings(train_args=["--max-tokens", 4096], cache_args=[])
    assert jobs.device_options(config, "train", 8, gpu=False) == ["--cpu"]
    assert jobs.device_options(config, "train", 8, gpu=True) == ["--fp16", "--num-workers", "4"]
    assert jobs.device_options(config, "generate", 8, gpu=True) == ["--fp16"]
    assert jobs.device_options(config, "cache", 8, gpu=True) == ["--fp16", "--num-workers", "4"]
    assert jobs.device_options(config, "evaluate", 8, gpu=True) == []  # scored in fp32
    assert jobs.device_options(config, "cache", 1, gpu=True)[-2:] == ["--num-workers", "1"]
    # the user's own --num-workers wins; a CPU training of 2 ranks talks over gloo
    own = {**config, "train_args": ["--num-workers", 0], "train_ranks": 2}
    assert jobs.device_options(own, "train", 8, gpu=True) == ["--fp16"]
    assert jobs.device_options(own, "train", 8, gpu=False) == ["--cpu", "--distributed-backend", "gloo",
                                                               "--ddp-backend", "legacy_ddp"]
    with pytest.raises(ValueError, match="one of train, generate, cache, evaluate"):
        jobs.device_options(config, "export")


def test_seqkd_variants_students_and_comparisons_are_checked_when_planned():
    """seqkd_variants, students and report_compare: what a run makes, or an error naming the setting."""
    config = {"seqkd_variants": {"mbr": {"teachers": "first", "extract_args": ["--select", "mbr"]},
                                 "top": None}, "teacher_engine": "fairseq"}
    assert jobs.seqkd_variants(config, ensemble=True) == {
        "mbr": {"teachers": "first", "extract_args": ["--select", "mbr"]},
        "top": {"teachers": "all", "extract_args": []}}
    # without an ensemble there is one teacher: "all" is the first
    assert jobs.seqkd_variants(config, ensemble=False)["top"]["teachers"] == "first"
    for bad, match in [({"Mbr": {}}, "name"), ({"seed2": {}}, "name"), ({"a": {"teacher": "all"}}, "keys"),
                       ({"a": {"teachers": "best"}}, "teachers"), (["a"], "NAME:")]:
        with pytest.raises(ValueError, match=match):
            jobs.seqkd_variants({"seqkd_variants": bad, "teacher_engine": "fairseq"}, ensemble=False)
    with pytest.raises(ValueError, match="teacher_engine: fairseq"):
        jobs.seqkd_variants({"seqkd_variants": {"a": {}}, "teacher_engine": "ct2"}, ensemble=False)

    rows = {name: {"start": start} for name, start in [("teacher", None), ("baseline", None), ("seq_kd", None),
                                                       ("seq_kd_seq_inter", "seq_kd"), ("seq_kd.mbr", None)]}
    assert list(jobs.kept_trainings({"students": None}, rows, ["teacher"])) == list(rows)
    assert list(jobs.kept_trainings({"students": ["baseline"]}, rows, ["teacher", "seq_kd.mbr"])) == [
        "teacher", "baseline", "seq_kd.mbr"]
    with pytest.raises(ValueError, match="fine-tunes seq_kd, which is left out"):
        jobs.kept_trainings({"students": ["seq_kd_seq_inter"]}, rows, ["teacher"])
    with pytest.raises(ValueError, match="word_kd not among"):
        jobs.kept_trainings({"students": ["word_kd"]}, rows, ["teacher"])

    systems = ["teacher", "baseline", "seq_kd.mbr"]
    assert jobs.compare_pairs({"report_compare": [["seq_kd.mbr", "baseline"]]}, systems) == ["seq_kd.mbr:baseline"]
    with pytest.raises(ValueError, match="word_kd not scored"):
        jobs.compare_pairs({"report_compare": [["word_kd", "baseline"]]}, systems)
    with pytest.raises(ValueError, match="a pair"):
        jobs.compare_pairs({"report_compare": [["baseline"]]}, systems)
