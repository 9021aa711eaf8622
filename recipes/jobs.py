"""How a job of the pipeline (recipes/Snakefile) runs its commands.

Every command is a list of arguments (never a word-split string) run without a shell; its output
goes to an append-only log (a resumed job keeps the log of the attempt before it), and a command
that fails raises :class:`JobFailed` with the log's last lines, so Snakemake fails the job, deletes
its declared outputs and prints why. A command's captured output is written under a temporary
name and renamed only when the command succeeded: nothing that looks finished is left behind.

Training is the one job that must survive its own failure: its declared output is a completion
file written at its end (``train.done``), never the checkpoint folder, so a killed training
resumes from ``checkpoint_last.pt`` (a torn one falls back to the newest whole interval
checkpoint). A training whose options or inputs (by content) changed starts afresh; the earlier
one is kept under ``superseded/`` and comes back when they change back. One writer per folder
(a lock its commands inherit), and every command dies with the process that started it.

Imported by the Snakefile and the tests; of the plugin it imports only modules that import no
fairseq (a job process starts in a second), and only asks torch whether a GPU is there when the
configuration says ``device: auto``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import IO

# a file's or a folder's content as the pipeline's fingerprints see it: the package's one policy
from fairseq_seqkd import layout
from fairseq_seqkd.io_utils import atomic_copy, atomic_write_json, atomic_write_text, content_fingerprint

write_json = atomic_write_json  # the Snakefile's name for it

TAIL_LINES = 25
# In a job's command, the plugin folder (fairseq's --user-dir): replaced by its path when the command
# runs, so that a command, which Snakemake records to rerun a job whose options changed, does not
# change with the place of the checkout.
PLUGIN = "<fairseq_seqkd>"
PLUGIN_DIR = str(Path(__file__).resolve().parent.parent / "fairseq_seqkd")


class JobFailed(RuntimeError):
    """A command of a job failed; the message holds its exit status and the end of its log."""


def args(options: Sequence | None) -> list[str]:
    """A configuration's option list (YAML numbers included) as command-line arguments."""
    if options is None:
        return []
    if isinstance(options, (str, bytes)) or not isinstance(options, Sequence):
        raise ValueError(f"expected a list of command-line arguments, got {options!r}: write options as a "
                         f"YAML list, e.g. [--max-epoch, 10]")
    return [_arg(o) for o in options]


def _arg(value) -> str:
    if isinstance(value, bool):
        raise ValueError(f"option value {value!r}: write flags as --flag and values as strings or numbers")
    return str(value)


@cache
def gpu_available() -> bool:
    """Whether torch sees a CUDA device here (the job's machine, not the one that planned the run)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def uses_gpu(device: str) -> bool:
    """Resolve the configuration's ``device`` (auto, cpu or gpu) on this machine."""
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device: {device!r}; use auto, cpu or gpu")
    return device == "gpu" or (device == "auto" and gpu_available())


DEVICE_JOBS = {"train": "fp16_args", "generate": "generate_fp16_args", "cache": "cache_fp16_args", "evaluate": None}


def device_options(config: dict, job: str, threads: int = 1, gpu: bool | None = None) -> list[str]:
    """The options a ``job`` (train, generate, cache, evaluate) adds to its model command where it runs, on
    this machine: not part of what it makes, so a job moved between machines resumes.

    Without a GPU: ``--cpu`` (and a training's ranks gloo and legacy DDP). On a GPU: the job's half precision
    (``fp16_args``, ``generate_fp16_args``, ``cache_fp16_args``; the evaluations run in fp32), and for a
    training and the cache build data-loading workers, half the job's threads (at least 1), unless its own
    options set ``--num-workers`` (fairseq's default of 1 starves a GPU that 8 threads could feed).
    """
    if job not in DEVICE_JOBS:
        raise ValueError(f"device options of a {job!r} job: one of {', '.join(DEVICE_JOBS)}")
    gpu = uses_gpu(config["device"]) if gpu is None else gpu
    out = ["--cpu"] if not gpu else args(config[DEVICE_JOBS[job]]) if DEVICE_JOBS[job] else []
    if job == "train":
        out += rank_device_args(config, gpu)
    given = args(config["train_args"]) + args(config["extra_train_args"]) if job == "train" else \
        args(config["cache_args"]) if job == "cache" else []
    if gpu and job in ("train", "cache") and "--num-workers" not in given:
        out += ["--num-workers", str(max(1, int(threads) // 2))]
    return out


def _env(threads: int) -> dict[str, str]:
    threads_s = str(max(1, int(threads)))
    return {**os.environ, "OMP_NUM_THREADS": threads_s, "MKL_NUM_THREADS": threads_s}


def tail(path: str | os.PathLike, lines: int = TAIL_LINES) -> str:
    """The last lines of a text file ('' when it is missing)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except FileNotFoundError:
        return ""


def run(cmd: Sequence, log: str | os.PathLike, threads: int = 1, stdout: str | os.PathLike | None = None,
        stderr: str | os.PathLike | None = None, hold: IO[str] | None = None, gpus: int = 0) -> None:
    """Run ``cmd``: its output is appended to ``log``, or its stdout goes into the file ``stdout``.

    ``stdout`` appears only once the command succeeded (written as ``stdout.tmp``, then renamed).
    ``stderr``: a file of its own (rewritten), ``"stdout"`` (into the same file), or the log. A
    failure raises :class:`JobFailed` naming the command, its exit status and the end of its output.
    ``hold``: a :func:`folder_lock` the command inherits and holds while it lives. ``gpus``: the GPUs
    the command gets, its own for as long as it runs (:func:`gpu_slots`). The command dies with the
    process that started it (Snakemake killed: no orphan goes on writing).
    """
    cmd = [PLUGIN_DIR if a == PLUGIN else a for a in args(cmd)]
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    _note(log, shlex.join(cmd))
    label = f"{log.stem} | {' '.join(cmd[:2]) if cmd[0] == 'fairseq-seqkd' else cmd[0]}"
    _say(f"{label} | running (log: {log})")
    tmp = Path(f"{stdout}.tmp") if stdout is not None else None
    err_path = log if stderr is None else (tmp if stderr == "stdout" else Path(stderr))
    for path in (tmp, err_path):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        gpu_env = stack.enter_context(gpu_slots(gpus, log))
        t0 = time.monotonic()
        err = stack.enter_context(open(err_path, "a" if err_path == log else "w", encoding="utf-8"))
        out = err if tmp is None or err_path == tmp else stack.enter_context(open(tmp, "w", encoding="utf-8"))
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**_env(threads), **gpu_env},
                                    pass_fds=(hold.fileno(),) if hold is not None else (),
                                    preexec_fn=_die_with(os.getpid()))
        except FileNotFoundError as e:
            err.write(f"{e}\n")
            rc = 127
        else:
            if hold is not None:
                _hold(hold, proc.pid, cmd)
            rc = proc.wait()
    if rc != 0:
        where = tail(err_path)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        _say(f"{label} | FAILED (exit {rc})")
        raise JobFailed(f"{cmd[0]} exited {rc} after {time.monotonic() - t0:.0f} s; the last lines of "
                        f"{err_path if err_path != tmp else 'its output'} (all attempts: {log}):\n{where}")
    if tmp is not None:
        os.replace(tmp, stdout)
    _say(f"{label} | done in {time.monotonic() - t0:.0f} s")


# ---- the machine's GPUs, one job each ----

GPU_LOCKS = "FAIRSEQ_SEQKD_GPU_LOCKS"  # the folder of the GPUs' locks (default: one per user in the temp folder)


def machine_gpus() -> list[str]:
    """The GPUs the jobs of a local run share: ``CUDA_VISIBLE_DEVICES`` when set (the user's choice), else
    every device torch sees."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g.strip() for g in visible.split(",") if g.strip()]
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_lock_dir() -> Path:
    """Where the GPUs' locks are: one folder for the machine (every run on it shares its GPUs)."""
    default = Path(tempfile.gettempdir()) / f"fairseq-seqkd-gpus-{os.getuid()}"
    return Path(os.environ.get(GPU_LOCKS) or default)


@contextlib.contextmanager
def gpu_slots(count: int, log: str | os.PathLike, gpus: Sequence[str] | None = None,
              poll: float = 2.0) -> Iterator[dict[str, str]]:
    """Hold ``count`` of the machine's GPUs while the block runs; yield the environment of the job's
    commands: ``CUDA_VISIBLE_DEVICES`` of those GPUs (a training of N ranks gets N, fairseq sees only them).

    Each GPU is an ``flock`` on ``GPU/ID.lock`` (:func:`gpu_lock_dir`), so no two jobs, of this run or of
    another run on the machine, share one; a job waits (a line in its log) until enough are free (with
    ``--resources gpu=N`` Snakemake starts no more jobs than there are GPUs, and none waits). Nothing is
    held, and the environment is left as it is, for ``count`` 0, on a machine without GPUs, and inside a
    SLURM job (SLURM gave the job its GPUs and set CUDA_VISIBLE_DEVICES).
    """
    if count <= 0 or "SLURM_JOB_ID" in os.environ:
        yield {}
        return
    gpus = machine_gpus() if gpus is None else list(gpus)
    if not gpus:
        yield {}
        return
    if count > len(gpus):
        raise JobFailed(f"a job of {count} GPUs on a machine that lets it use {len(gpus)} "
                        f"(CUDA_VISIBLE_DEVICES={','.join(gpus)}): set train_ranks to at most {len(gpus)}")
    folder = gpu_lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    held: list[tuple[str, IO[str]]] = []
    waited = False
    try:
        while True:
            # one job scans at a time: each takes its GPUs in one go (two jobs of 2 on 4 GPUs get 0,1 and
            # 2,3, never 0,2 and 1,3), and two jobs cannot keep taking one each and letting go forever
            with open(folder / "scan.lock", "a+", encoding="utf-8") as scan:
                fcntl.flock(scan.fileno(), fcntl.LOCK_EX)
                for gpu in gpus:
                    if len(held) == count:
                        break
                    f = open(folder / f"{gpu}.lock", "a+", encoding="utf-8")
                    try:
                        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        f.close()
                        continue
                    _hold(f, os.getpid(), [f"GPU {gpu}", str(log)])
                    held.append((gpu, f))
                if len(held) < count:
                    for _, f in held:  # all or none: two jobs each holding half of what both need would wait forever
                        f.close()
                    held = []
            if held:
                break
            if not waited:
                _note(log, f"waiting for {count} free GPU(s) of {','.join(gpus)} (locks in {folder})")
                waited = True
            time.sleep(poll)
        ids = ",".join(gpu for gpu, _ in held)
        _note(log, f"on GPU {ids} (CUDA_VISIBLE_DEVICES={ids})")
        yield {"CUDA_VISIBLE_DEVICES": ids}
    finally:
        for _, f in held:
            f.close()


def job_gpus(config: dict, kind: str) -> int:
    """The GPUs of a job of ``kind``: a training one per rank (``train_ranks``), a gpu job one (fairseq-generate
    and the cache builder use one), a cpu job none; none at all with ``device: cpu`` or ``slurm_gpus: 0``."""
    if str(config["slurm_gpus"] or 0) not in ("0", "1"):
        raise ValueError(f"slurm_gpus: {config['slurm_gpus']!r}; 1 (a gpu job one GPU, a training one per rank: "
                         f"set train_ranks for more) or 0 (no GPUs)")
    if config["device"] == "cpu" or kind == "cpu" or not int(config["slurm_gpus"] or 0):
        return 0
    return training_ranks(config) if kind in ("teacher", "train") else 1


_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with(parent: int):
    """A ``preexec_fn`` that has the kernel send SIGTERM to the command when its parent dies (Linux)."""
    if _LIBC is None:
        return None

    def die_with_parent() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the call above
            os._exit(143)

    return die_with_parent


def _say(text: str) -> None:
    """One line on the terminal (Snakemake's own job display is kept quiet by the recipes)."""
    print(f"{datetime.now():%Y-%m-%d %H:%M:%S} | {text}", file=sys.stderr, flush=True)


FINGERPRINT = "fingerprint"  # a work folder's record of what made it
DONE_RECORD = "train.json"  # a finished training's record inside its folder (train.done is Snakemake's)
SUPERSEDED = "superseded"  # trainings made with other settings, by name and fingerprint


def contents(paths: Sequence) -> list[str]:
    """The content fingerprints of ``paths``, in their order: a rule's parameter, so that Snakemake reruns a
    job whose input files changed even when their modification times say otherwise."""
    return [content_fingerprint(p) for p in paths]


def fingerprint(cmd: Sequence, inputs: Sequence) -> str:
    """What makes a work folder's content the same: its command and the content of its inputs.

    An input's path inside the command is replaced by its place in ``inputs``, so the same files reached
    by another path (a moved raw folder) give the same fingerprint, and a file touched or copied with a new
    modification time but the same bytes changes nothing.
    """
    place = {str(p): f"<input {i}>" for i, p in enumerate(map(str, inputs))}
    command = [place.get(a, a) for a in args(cmd)]
    blob = json.dumps({"cmd": command, "inputs": contents(inputs)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _stamp(folder: Path) -> str | None:
    marker = folder / FINGERPRINT
    return marker.read_text().strip() if marker.exists() else None


def superseded_path(folder: str | os.PathLike, stamp: str) -> Path:
    """Where a training made with other settings is kept: ``superseded/NAME.FINGERPRINT12`` beside it."""
    folder = Path(folder)
    return folder.parent / SUPERSEDED / f"{folder.name}.{stamp[:12]}"


def own_folder(folder: str | os.PathLike, cmd: Sequence, inputs: Sequence, log: str | os.PathLike,
               keep: bool = False) -> None:
    """Make ``folder`` the work folder of this command and these inputs, keeping what it can resume from.

    ``folder/fingerprint`` records what the folder's content was made with (:func:`fingerprint`). The
    same fingerprint: the command may resume from what is there (a killed training from
    checkpoint_last.pt). Another fingerprint, or none: with ``keep`` (a training) the old content moves to
    ``superseded/NAME.FINGERPRINT12`` and a folder kept there with this fingerprint comes back (settings
    changed, then changed back, reuse the finished training); without ``keep`` (intermediate files the
    command remakes) the old content is deleted.
    """
    folder = Path(folder)
    stamp = fingerprint(cmd, inputs)
    if folder.exists() and any(p.name != FINGERPRINT for p in folder.iterdir()):
        old = _stamp(folder)
        if old == stamp:
            _note(log, f"{folder}: the same command and inputs as the attempt before: resuming")
        elif keep:
            label = old or f"unknown-{datetime.now():%Y%m%dT%H%M%S}"
            aside = superseded_path(folder, label)
            aside.parent.mkdir(parents=True, exist_ok=True)
            if aside.exists():
                aside = aside.with_name(f"{aside.name}-{datetime.now():%Y%m%dT%H%M%S%f}")
            folder.rename(aside)
            _note(log, f"{folder}: made with other options or inputs; kept as {aside}")
            _say(f"{folder}: made with other settings; kept as {aside} (it comes back if they do)")
        else:
            shutil.rmtree(folder)
            _note(log, f"{folder}: made with other options or inputs; removed, starting afresh")
    if folder.is_dir() and not any(p.name != FINGERPRINT for p in folder.iterdir()):
        shutil.rmtree(folder)  # an attempt that failed before writing anything: nothing to keep or resume
    if keep and not folder.exists():
        earlier = superseded_path(folder, stamp)
        if earlier.is_dir() and _stamp(earlier) == stamp:
            earlier.rename(folder)
            _note(log, f"{folder}: restored from {earlier}, made with these options and inputs: resuming")
            _say(f"{folder}: restored from {earlier} (made with these settings)")
    folder.mkdir(parents=True, exist_ok=True)
    if _stamp(folder) != stamp:
        atomic_write_text(folder / FINGERPRINT, stamp + "\n")


# ---- one writer per folder ----

LOCKS = ".locks"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: Sequence = ()) -> Iterator[IO[str]]:
    """Hold the lock of ``folder`` (``.locks/FOLDER.lock`` in the run folder) while the block runs.

    The lock is an ``flock`` on that file, which records the holder's pid, host, start and command. A
    second writer (an orphan of a killed run after ``--unlock``, another run on the same folder) fails at
    once with a JobFailed naming the holder. The commands a job starts inherit the descriptor
    (:func:`run` ``hold=``), so the lock stays held for as long as any of them is alive.
    """
    path = Path(LOCKS) / (str(folder).strip("/").replace("/", "%") + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "an unknown process"
            raise JobFailed(f"{folder} is being written by another process ({holder}; lock {path}): a second "
                            f"writer would corrupt it. Wait for that process to end, or stop it, then rerun.") from None
        _hold(f, os.getpid(), what)
        yield f
    finally:
        f.close()  # closing the last descriptor releases the lock


def _hold(f: IO[str], pid: int, what: Sequence) -> None:
    f.seek(0)
    f.truncate()
    f.write(f"pid {pid} on host {socket.gethostname()} since {datetime.now():%Y-%m-%d %H:%M:%S}"
            f"{': ' + ' '.join(map(str, what[:2])) if what else ''}\n")
    f.flush()


# ---- resuming a training ----

def whole_checkpoint(path: str | os.PathLike) -> bool:
    """Whether a torch checkpoint is whole: a zip archive whose directory is there and names its pickle.

    A copy cut short (a kill, a time limit, a full disk) lacks the zip's directory at its end."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("data.pkl") for name in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _interval_update(path: Path) -> int:
    m = re.fullmatch(r"checkpoint_\d+_(\d+)\.pt", path.name)
    return int(m.group(1)) if m else -1


def check_resume(save_dir: str | os.PathLike, log: str | os.PathLike) -> None:
    """Make sure fairseq-train can resume ``save_dir``: a torn ``checkpoint_last.pt`` is replaced by the
    newest whole interval checkpoint (``checkpoint_E_U.pt``) and kept as ``checkpoint_last.pt.torn``; with
    no whole one to fall back to, a JobFailed says what to delete."""
    save_dir = Path(save_dir)
    last = save_dir / "checkpoint_last.pt"
    if not last.exists() or whole_checkpoint(last):
        return
    candidates = sorted(save_dir.glob("checkpoint_*_*.pt"), key=_interval_update, reverse=True)
    fallback = next((c for c in candidates if _interval_update(c) >= 0 and whole_checkpoint(c)), None)
    if fallback is None:
        raise JobFailed(f"{last} is torn (not a whole checkpoint: a copy cut short by a kill, a time limit or a "
                        f"full disk), and {save_dir} holds no whole interval checkpoint (checkpoint_E_U.pt) to "
                        f"resume from. Delete it to start this training afresh: rm {last}")
    os.replace(last, f"{last}.torn")
    atomic_copy(fallback, last)
    _note(log, f"{last} was torn (kept as {last}.torn): resuming from {fallback}, the newest whole checkpoint")
    _say(f"{last} was torn: resuming from {fallback}")


def run_chunks(cmds: Sequence[Sequence], output: str | os.PathLike, log: str | os.PathLike, inputs: Sequence,
               threads: int = 1, device: Sequence = (), gpus: int = 0) -> None:
    """Run commands that each print one chunk of ``output``, then join the chunks into ``output``.

    Chunk ``c`` is written to ``OUTPUT.chunks/chunkC.txt`` (through a ``.tmp`` and a rename, its
    stderr beside it) and a finished chunk is not run again: a killed job resumes from its last
    finished chunk. The folder is owned by :func:`own_folder` (other commands or inputs: its chunks
    are deleted) and locked by :func:`folder_lock`. ``output`` appears, whole, only when every chunk
    is there; a failed join leaves no ``OUTPUT.tmp``.
    """
    folder = Path(f"{output}.chunks")
    with folder_lock(folder, cmds[0]) as lock:
        own_folder(folder, [list(args(c)) for c in cmds], inputs, log)
        files = [folder / f"chunk{c:04d}.txt" for c in range(len(cmds))]
        for c, (cmd, path) in enumerate(zip(cmds, files)):
            if path.exists():
                _note(log, f"{path}: chunk {c + 1} of {len(cmds)} finished before: not run again")
                continue
            run([*args(cmd), *device], log, threads, stdout=path, stderr=f"{path}.log", hold=lock, gpus=gpus)
        tmp = Path(f"{output}.tmp")
        try:
            with open(tmp, "wb") as out:
                for path in files:
                    with open(path, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 20)
            os.replace(tmp, output)
        finally:
            tmp.unlink(missing_ok=True)
        for path in files:  # the joined output holds them; a rerun of this job would start afresh anyway
            path.unlink()


def train(cmd: Sequence, save_dir: str | os.PathLike, checkpoint: str, done: str | os.PathLike,
          log: str | os.PathLike, inputs: Sequence, threads: int = 1, device: Sequence = (),
          launcher: Sequence = (), gpus: int = 0) -> None:
    """Run a fairseq-train command into ``save_dir``, resuming it if it is the same training.

    The fingerprint is ``cmd``, ``inputs`` and the precision options among ``device`` (fp16, amp: each
    its own kind of optimizer, which fairseq cannot resume across); the rest of ``device`` (--cpu) is
    added to the command and ``launcher`` (srun, torchrun) put before it only when it runs, so a training
    moved from one machine to another of the same precision resumes. The folder is locked
    (one writer), a training of other settings is kept aside and one of these settings brought back
    (:func:`own_folder`), a torn checkpoint_last.pt falls back (:func:`check_resume`). ``done`` is
    written at the end, and a copy inside the folder (train.json): the checkpoint passed on, the
    seconds this attempt took and the command; a folder brought back finished is not trained again.
    """
    with folder_lock(save_dir, cmd) as lock:
        # the precision is part of what the training is: fairseq resumes a checkpoint only with the same kind
        # of optimizer (an fp16 run's FP16Optimizer, an fp32 run's plain one)
        own_folder(save_dir, [*args(cmd), *precision_args(device)], inputs, log, keep=True)
        record = Path(save_dir) / DONE_RECORD
        ckpt = Path(save_dir) / checkpoint
        if record.exists() and ckpt.exists() and whole_checkpoint(ckpt):
            _note(log, f"{save_dir}: finished before with these options and inputs ({record}): not trained again")
            info = json.loads(record.read_text(encoding="utf-8"))
        else:
            check_resume(save_dir, log)
            full = [*args(launcher), *args(cmd), *args(device)]
            t0 = time.monotonic()
            stopped = Path(layout.stopped_on_signal(save_dir))
            stopped.unlink(missing_ok=True)
            run(full, log, threads, hold=lock, gpus=gpus)
            if stopped.exists():  # saved on a cluster's warning before its time limit: not finished
                updates = json.loads(stopped.read_text(encoding="utf-8"))["num_updates"]
                stopped.unlink()
                raise JobFailed(f"{save_dir}: stopped on the warning signal before the job's time limit, its "
                                f"checkpoint saved at update {updates}; run it again (a cluster's retry does) "
                                f"and it resumes from there")
            if not ckpt.exists():
                raise JobFailed(f"fairseq-train finished without writing {ckpt}; see {log}")
            info = {"checkpoint": str(ckpt), "seconds": round(time.monotonic() - t0, 1), "command": full}
            atomic_write_json(record, info)
        atomic_write_json(done, info)


PRECISION_OPTIONS = ("--fp16", "--memory-efficient-fp16", "--amp", "--bf16", "--memory-efficient-bf16")


def precision_args(device: Sequence) -> list[str]:
    """The options of ``device`` that decide a training's precision, and with it its fairseq optimizer
    (FP16Optimizer, MemoryEfficientFP16Optimizer, AMPOptimizer or the plain one); none for fp32."""
    return [a for a in args(device) if a in PRECISION_OPTIONS]


def _note(log: str | os.PathLike, text: str) -> None:
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"==== {datetime.now():%Y-%m-%d %H:%M:%S} | {text}\n")


def checkpoint_of(done: str | os.PathLike) -> str:
    """The checkpoint a finished training passes on (a JobFailed when it is gone)."""
    with open(done, encoding="utf-8") as f:
        info = json.load(f)
    ckpt = info["checkpoint"]
    if not os.path.exists(ckpt):
        raise JobFailed(f"{ckpt} (recorded in {done}) is missing; rerun its training with --forcerun")
    return ckpt


# ---- the configuration ----

def load_yaml(path: str | os.PathLike) -> dict:
    """A YAML mapping (the configuration layers)."""
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def coerce_flags(config: dict, defaults: dict) -> None:
    """Settings whose default is true or false, given as text (Snakemake's ``--config export_ct2=false``
    passes the string 'false', which Python reads as true): made booleans; other text is a ValueError."""
    for key, default in defaults.items():
        value = config.get(key)
        if isinstance(default, bool) and isinstance(value, str):
            word = value.strip().lower()
            if word not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError(f"{key}: {value!r} is not true or false")
            config[key] = word in ("true", "yes", "1")


def check_config(config: dict, known: set[str]) -> None:
    """Refuse unknown keys (a misspelt setting must not be silently ignored) and missing languages."""
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}: every setting is listed, with its meaning, in "
                         "recipes/config/defaults.yaml")
    for key in ("src", "tgt"):
        if not config.get(key):
            raise ValueError(f"setting {key} is missing: the recipe's configuration must give the language codes")
    if config["corpus"] not in ("prepare", "toy"):
        raise ValueError(f"corpus: {config['corpus']!r}; use prepare (raw files) or toy (the embedded corpus)")
    if config["corpus"] == "prepare":
        for split in ("train", "valid", "test"):
            raw_pairs(config, split)
    test_sets(config)
    if config["teacher_engine"] not in ("fairseq", "ct2"):
        raise ValueError(f"teacher_engine: {config['teacher_engine']!r}; use fairseq (fairseq-generate) or ct2 "
                         "(CTranslate2)")
    if config["teacher_ct2"] and config["teacher_engine"] != "ct2":
        raise ValueError("teacher_ct2 is a CTranslate2 teacher: set teacher_engine: ct2 as well (TEACHER_ENGINE=ct2)")
    if config["teacher_ct2"] and config["teacher_dir"]:
        raise ValueError("teacher_dir and teacher_ct2 are two teachers: give one (a fairseq teacher folder's own "
                         "CTranslate2 export is teacher_dir with teacher_engine: ct2)")
    if config["teacher_ct2"] and not os.path.isfile(os.path.join(absolute(config["teacher_ct2"]), "model.bin")):
        raise ValueError(f"teacher_ct2: {absolute(config['teacher_ct2'])} is not a CTranslate2 model folder (no "
                         "model.bin): convert the model with CTranslate2's converter first (docs/any-teacher.md)")
    if config["teacher_dir"] and config["corpus"] != "prepare":
        raise ValueError("teacher_dir needs raw text (corpus: prepare): the toy corpus is already tokenized")


# an extra test set's name is a folder name (results/NAME/, eval/NAME/); these are taken
RESERVED_TEST_SET_NAMES = ("train", "valid", "test", "curve", "export-check")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def test_sets(config: dict) -> dict[str, tuple[str, str]]:
    """The extra test sets: name -> (source, reference) files, under ``raw_dir`` unless absolute.

    A name is letters, digits, ``_`` and ``-``, unique, and none of the names the run folder
    already uses; a bad entry is a ValueError naming it and the fix.
    """
    entries = config.get("extra_test_sets") or []
    if not isinstance(entries, list):
        raise ValueError(f"extra_test_sets must be a list of [name, source, reference], e.g. "
                         f"[[news2015, news2015.en, news2015.de]]; it is {entries!r}")
    sets: dict[str, tuple[str, str]] = {}
    for entry in entries:
        if not isinstance(entry, (list, tuple)) or len(entry) != 3 or not all(entry):
            raise ValueError(f"extra_test_sets: {entry!r} is not [name, source file, reference file], e.g. "
                             "[news2015, news2015.en, news2015.de]")
        name, src, ref = (str(x) for x in entry)
        if not _SAFE_NAME.match(name):
            raise ValueError(f"extra_test_sets: the name {name!r} may hold only letters, digits, '_' and '-' "
                             "(it names the folders results/NAME and eval/NAME): rename it")
        if name in RESERVED_TEST_SET_NAMES:
            raise ValueError(f"extra_test_sets: the name {name!r} is taken ({', '.join(RESERVED_TEST_SET_NAMES)} "
                             "are the run's own splits and folders): rename it")
        if name in sets:
            raise ValueError(f"extra_test_sets: the name {name!r} is given twice; each test set needs its own name")
        sets[name] = (os.path.join(config["raw_dir"], src), os.path.join(config["raw_dir"], ref))
    return sets


def length_bounds(generate_args: Sequence | None) -> list[str]:
    """fairseq-generate's --max-len-a/--max-len-b among ``generate_args`` (ct2-translate takes the same)."""
    options, out = args(generate_args), []
    for i, option in enumerate(options[:-1]):
        if option in ("--max-len-a", "--max-len-b"):
            out += [option, options[i + 1]]
    return out


def teacher_folder(folder: str, src: str, tgt: str, teacher_args: Sequence | None,
                   student_arch: Sequence | None) -> dict:
    """Check a fairseq teacher folder when the run is planned, in this process and without fairseq: its
    checkpoint, language pair, dictionaries' names and subword model, before any job starts (the
    ``teacher_data`` job, ``fairseq-seqkd teacher-data``, then checks the dictionaries against the embeddings).

    Returns ``teacher`` (the checkpoint, absolute), ``encoder_args`` (the fairseq-generate options that
    print detokenized text), ``joined``, ``embedding_rows``. A bad folder is a ValueError with the check's
    message. Students that share all embeddings need the teacher's joined dictionary.
    """
    # imported here: torch (for the checkpoint) costs a second that runs without a teacher folder need not pay
    from fairseq_seqkd.commands import teacher_data
    from fairseq_seqkd.commands._options import config_from
    from fairseq_seqkd.errors import UserError
    from fairseq_seqkd.teacher.folder import TeacherFolderConfig, plan_teacher_folder

    folder = absolute(folder)
    # teacher_args are options of the teacher-data command: parsed as it parses them
    parser = argparse.ArgumentParser(prog="fairseq-seqkd teacher-data", add_help=False)
    teacher_data.add_args(parser)
    try:
        options = parser.parse_args(["--teacher-dir", folder, "--src", src, "--tgt", tgt, *args(teacher_args)])
    except SystemExit as e:  # argparse has printed what it refused
        raise ValueError(f"teacher_args: {args(teacher_args)} are not options of fairseq-seqkd teacher-data "
                         "(fairseq-seqkd teacher-data --help lists them)") from e
    try:
        info = plan_teacher_folder(folder, src, tgt, config_from(options, TeacherFolderConfig))
    except UserError as e:
        raise ValueError(f"teacher_dir: {folder} cannot be this run's teacher:\n{e}") from e
    if not info["joined"] and "--share-all-embeddings" in args(student_arch):
        raise ValueError(f"teacher_dir: {folder} has two dictionaries (dict.{src}.txt and dict.{tgt}.txt differ), "
                         "so its students cannot share all embeddings: remove --share-all-embeddings from "
                         "student_arch (or use --share-decoder-input-output-embed)")
    return info


def absolute(path: str) -> str:
    """``path`` from the run folder (the working directory of every job), made absolute."""
    return os.path.abspath(path)


def raw_pairs(config: dict, split: str) -> list[tuple[str, str]]:
    """The (source, target) raw files of a split, under ``raw_dir`` unless absolute."""
    pairs = config.get(f"{split}_files") or []
    if not pairs or any(not isinstance(p, (list, tuple)) or len(p) != 2 for p in pairs):
        raise ValueError(f"{split}_files must list [source, target] file pairs, e.g. "
                         f"[[train.en, train.de]]; it is {pairs!r}")
    return [(os.path.join(config["raw_dir"], str(s)), os.path.join(config["raw_dir"], str(t))) for s, t in pairs]


def inside(path: str, folder: str) -> bool:
    """Whether ``path`` lies under ``folder``, symbolic links followed (a link to a user's folder is not
    the run folder's)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def check_raw_files(files: Sequence[str], raw_dir: str, data_script: str | None) -> None:
    """The user's raw files (``raw_dir`` outside the run folder) must all be there: the pipeline reads them
    and never writes, downloads into or deletes anything there. A ValueError names the missing ones."""
    missing = [f for f in files if not os.path.isfile(f)]
    if not missing:
        return
    get = (f"download them yourself with 'bash recipes/data/{data_script}.sh download {absolute(raw_dir)}', or "
           "unset RAW_DIR so the pipeline downloads the data into RUN/raw" if data_script else
           "copy them there")
    raise ValueError(f"raw_dir {absolute(raw_dir)} (RAW_DIR) is your folder, read and never written by the "
                     f"pipeline, and it lacks {len(missing)} of the {len(files)} raw files: "
                     f"{', '.join(missing)}. Put them there ({get}; the file names are in docs/recipes.md).")


def student_seeds(config: dict) -> list[int]:
    """The students' training seeds: the first is train_args' own (``--seed`` there, else fairseq's 1), the
    systems of the main table; each further one trains the seeded students again (a plan-time error else)."""
    return training_seeds(config, "student_seeds")


def teacher_seeds(config: dict) -> list[int]:
    """The teachers' seeds (``teacher_seeds``): the first is train_args' own, the teacher of the table; with
    more, each further one trains teacher.seedS, and the teachers' ensemble does the teacher's work."""
    return training_seeds(config, "teacher_seeds")


def training_seeds(config: dict, key: str) -> list[int]:
    """The seeds of setting ``key``: distinct whole numbers, the first train_args' own seed."""
    seeds = config[key]
    seeds = [seeds] if isinstance(seeds, (int, str)) else list(seeds or [])
    # --config student_seeds=[1,2,3] gives strings
    whole = all(str(s).strip().isdecimal() and not isinstance(s, bool) for s in seeds)
    if not seeds or not whole or len({int(s) for s in seeds}) < len(seeds):
        raise ValueError(f"{key}: {config[key]!r}; give distinct whole numbers, e.g. [1, 2, 3]")
    seeds = [int(s) for s in seeds]
    options = args(config["train_args"]) + args(config["extra_train_args"])
    own = 1  # fairseq's default
    for option, value in zip(options, options[1:]):
        if option == "--seed":
            own = int(value)
    if seeds[0] != own:
        raise ValueError(f"{key}: {seeds!r} starts with {seeds[0]}, but the trainings' own seed (train_args) "
                         f"is {own}: the first seed is the main table's; write [{own}, ...]")
    return seeds


def seeded_students(config: dict, students: Sequence[str]) -> list[str]:
    """The students trained with every seed of student_seeds (setting seeded_students; null: every student
    but the pruned one, which retrains another); a name this run does not train is an error."""
    chosen = config["seeded_students"]
    if chosen is None:
        return [s for s in students if s != "pruned"]
    unknown = [s for s in chosen if s not in students]
    if unknown:
        raise ValueError(f"seeded_students: {', '.join(map(str, unknown))} not trained in this run (its students: "
                         f"{', '.join(students)})")
    return [s for s in students if s in chosen]


SLURM_KINDS = ("teacher", "train", "gpu", "cpu")


VARIANT_TEACHERS = ("all", "first")


def seqkd_variants(config: dict, ensemble: bool) -> dict[str, dict]:
    """The further Seq-KD students of ``seqkd_variants``: NAME -> ``{"teachers": "all"|"first", "extract_args":
    [...]}``, each trained as the Seq-KD student on a corpus of its own (data-bin-seqkd.NAME), chosen by
    ``fairseq-seqkd extract --teacher ... EXTRACT_ARGS`` from the K-best list of the teachers' beam (all:
    teacher_seeds' ensemble, first: the table's teacher alone; the same without an ensemble)."""
    given = config["seqkd_variants"] or {}
    if not isinstance(given, dict):
        raise ValueError(f"seqkd_variants: {given!r}; give NAME: {{teachers: all|first, extract_args: [...]}}, e.g. "
                         "mbr: {teachers: first, extract_args: [--select, mbr]}")
    variants = {}
    for name, spec in given.items():
        spec = spec or {}
        if not re.fullmatch(r"[a-z0-9_]+", str(name)) or str(name).startswith("seed"):
            raise ValueError(f"seqkd_variants: the name {name!r}; use lower-case letters, digits and _ "
                             "(not starting with 'seed'): the student is seq_kd.NAME")
        if not isinstance(spec, dict) or set(spec) - {"teachers", "extract_args"}:
            raise ValueError(f"seqkd_variants: {name}: {spec!r}; its keys are teachers (all or first) and "
                             "extract_args (a list of `fairseq-seqkd extract` options)")
        teachers = spec.get("teachers") or "all"
        if teachers not in VARIANT_TEACHERS:
            raise ValueError(f"seqkd_variants: {name}: teachers {teachers!r}; all (teacher_seeds' ensemble) or "
                             "first (the table's teacher alone)")
        variants[str(name)] = {"teachers": teachers if ensemble else "first",
                               "extract_args": args(spec.get("extract_args"))}
    if variants and config["teacher_engine"] == "ct2":
        raise ValueError("seqkd_variants: the K-best lists they choose from are fairseq-generate's; "
                         "set teacher_engine: fairseq")
    return variants


def kept_trainings(config: dict, rows: dict[str, dict], always: Sequence[str]) -> dict[str, dict]:
    """The trainings of ``rows`` that ``students`` keeps (null: all), with ``always`` (the teacher, the
    Seq-KD variants); a kept training that fine-tunes one left out is an error that names it."""
    wanted = config["students"]
    if wanted is None:
        return rows
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    unknown = [name for name in wanted if name not in rows]
    if unknown:
        raise ValueError(f"students: {', '.join(map(str, unknown))} not among this run's trainings "
                         f"({', '.join(name for name in rows if name not in always)})")
    kept = {name: row for name, row in rows.items() if name in wanted or name in always}
    for name, row in kept.items():
        if row["start"] is not None and row["start"] not in kept:
            raise ValueError(f"students: {name} fine-tunes {row['start']}, which is left out; add {row['start']}")
    return kept


def compare_pairs(config: dict, systems: Sequence[str]) -> list[str]:
    """``report_compare``'s pairs as the report's ``--compare A:B`` arguments; a system this run does not
    score is an error that lists those it does."""
    pairs = config["report_compare"] or []
    out = []
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"report_compare: {pair!r}; each item is a pair [A, B] of systems")
        unknown = [str(name) for name in pair if name not in systems]
        if unknown:
            raise ValueError(f"report_compare: {', '.join(unknown)} not scored in this run (its systems: "
                             f"{', '.join(systems)})")
        out.append(f"{pair[0]}:{pair[1]}")
    return out


def slurm_resources(config: dict, kind: str) -> dict:
    """The Snakemake resources of a job of ``kind`` (teacher, train, gpu, cpu) as the SLURM executor plugin
    reads them, from the slurm_* settings: memory, time limit, partition, account, GPUs, and for a training
    the warning signal before its limit (fairseq_seqkd.tasks.stop_signal)."""
    table = config["slurm_jobs"] or {}
    if set(table) != set(SLURM_KINDS):
        raise ValueError(f"slurm_jobs: {sorted(table)}; give each of {', '.join(SLURM_KINDS)} its mem_mb and runtime")
    row = table[kind] or {}
    if set(row) != {"mem_mb", "runtime"} or not all(str(v).isdecimal() and int(v) > 0 for v in row.values()):
        raise ValueError(f"slurm_jobs.{kind}: {row!r}; give whole numbers, e.g. {{mem_mb: 32000, runtime: 720}} "
                         "(MB, minutes)")
    resources = {"mem_mb": int(row["mem_mb"]), "runtime": int(row["runtime"])}
    gpus = job_gpus(config, kind)
    ranks = training_ranks(config)
    if kind in ("teacher", "train") and ranks > 1 and srun_launched(config):
        # one job of N tasks; the plugin's MPI job: no `srun -n1` around the job, the launcher's srun starts
        # the N ranks (one GPU each)
        resources.update(mpi="srun", tasks=ranks)
        if gpus:
            resources["tasks_per_gpu"] = 1
    partition = (config["slurm_gpu_partition"] if gpus else None) or config["slurm_partition"]
    if partition:
        resources["slurm_partition"] = str(partition)
    if config["slurm_account"]:
        resources["slurm_account"] = str(config["slurm_account"])
    if gpus:
        resources["gpu"] = gpus
        if config["slurm_gpu_model"]:
            resources["gpu_model"] = str(config["slurm_gpu_model"])
    if kind in ("teacher", "train"):
        warning = int(config["slurm_time_warning"])
        if not 0 < warning < 60 * resources["runtime"]:
            raise ValueError(f"slurm_time_warning: {warning} s; give a number of seconds below slurm_jobs.{kind}'s "
                             f"runtime ({resources['runtime']} minutes)")
        resources["slurm_extra"] = f"--signal=URG@{warning}"
    return resources


def training_ranks(config: dict) -> int:
    """The ranks of every training (``train_ranks``; 1 when unset: fairseq's default applies)."""
    ranks = config["train_ranks"]
    if ranks is None:
        return 1
    if not str(ranks).isdecimal() or int(ranks) < 1:
        raise ValueError(f"train_ranks: {ranks!r}; give a whole number of ranks, e.g. 8, or null")
    return int(ranks)


def srun_launched(config: dict) -> bool:
    """Whether the trainings are started by SLURM's ``srun`` (``train_launcher: [srun, ...]``)."""
    launcher = args(config["train_launcher"])
    return bool(launcher) and os.path.basename(launcher[0]) == "srun"


def train_launcher(config: dict) -> list[str]:
    """The command before ``fairseq-train``: ``train_launcher``, and for ``srun`` with N ranks its task count
    (a SLURM job's step would otherwise start one task) and ``--kill-on-bad-exit`` (a rank that dies ends
    the others, which would wait for it in a collective until the time limit)."""
    launcher = args(config["train_launcher"])
    ranks = training_ranks(config)
    if srun_launched(config) and ranks > 1:
        given = {a.split("=")[0] for a in launcher[1:]}
        if not given & {"-n", "--ntasks"}:
            launcher += ["--ntasks", str(ranks)]
        if "--kill-on-bad-exit" not in given and "-K" not in given:
            launcher += ["--kill-on-bad-exit=1"]
    return launcher


def world_size_args(config: dict) -> list[str]:
    """``--distributed-world-size N`` of ``train_ranks`` (none when unset: fairseq's default, every GPU)."""
    return [] if config["train_ranks"] is None else ["--distributed-world-size", str(training_ranks(config))]


def rank_device_args(config: dict, gpu: bool) -> list[str]:
    """What ranks without a GPU need: gloo and fairseq's legacy DDP (NCCL and the c10d wrapper need CUDA)."""
    if training_ranks(config) > 1 and not gpu:
        return ["--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp"]
    return []


def ratio_name(ratio) -> str:
    """A pruning ratio as it appears in file names (0.8 -> '0.8')."""
    return f"{float(ratio):g}"


def clear_stale_cache(directory: str, split: str, num_shards: int, log: str | os.PathLike) -> None:
    """Remove what a cache shard job must not leave: the split's header (the merge job's output,
    stale once a shard changes) and shards of another shard count."""
    if not os.path.isdir(directory):
        return
    ours = re.compile(rf"^{re.escape(split)}\.shard\d+-of-{num_shards:04d}\.bin(\.tmp)?$")
    stale = [name for name in os.listdir(directory) if name == f"{split}.header.json"
             or (name.startswith(f"{split}.shard") and not ours.match(name))]
    for name in sorted(stale):
        os.unlink(os.path.join(directory, name))
        _note(log, f"removed {os.path.join(directory, name)}: the cache's shards are being rebuilt")
