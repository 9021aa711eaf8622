"""What made a run, for comparing a rerun line by line: commands, code, versions, checkpoints, times.

Read from the run folder at report time:

- ``RUN/provenance/invocation-*.txt``: one file per recipe invocation, written by
  ``recipes/common.sh`` (``key value`` lines: start, host, cwd, command, commit,
  uncommitted_changes, ``env NAME=VALUE``, and at its end: end, exit). A resumed run has several.
- ``RUN/*/train.done``: the checkpoint each training passed on; ``RUN/export/``: the exported
  student and the CTranslate2 model. Each is hashed (sha256) here.
- ``RUN/times/*.tsv``: Snakemake's benchmark file of each job (its ``s`` column: wall seconds).

Only the standard library and the package's own helpers: the report imports no fairseq.
"""

from __future__ import annotations

import glob
import importlib.metadata
import json
import os
import platform
import subprocess
from datetime import UTC, datetime

from fairseq_seqkd.io_utils import file_sha256, read_lines

INVOCATIONS = "provenance"  # RUN/provenance/invocation-*.txt
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # UTC, as recipes/common.sh writes it (date -u +%Y-%m-%dT%H:%M:%SZ)
# the versions that decide a run's numbers; a name with alternatives is the first installed
PACKAGES = {"ctranslate2": ["ctranslate2"], "fairseq": ["fairseq", "fairseq-fixed"],
            "fairseq-seqkd": ["fairseq-seqkd"], "sacrebleu": ["sacrebleu"], "sentencepiece": ["sentencepiece"],
            "snakemake": ["snakemake"], "torch": ["torch"]}
OWN_JOB = "report"  # the report's own benchmark file is written after it: never the current run's


def versions() -> dict[str, str]:
    """Python's and the run's packages' versions, by name (sorted); 'not installed' where absent."""
    found = {"python": platform.python_version()}
    for name, dists in PACKAGES.items():
        found[name] = "not installed"
        for dist in dists:
            try:
                version = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
            found[name] = version if dist == name else f"{version} ({dist})"
            break
    return dict(sorted(found.items()))


def git_state(path: str) -> dict | None:
    """The commit of the git checkout holding ``path`` and whether tracked files differ from it (None: no git)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", path, *args], capture_output=True, text=True, check=True,
                              timeout=60).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "uncommitted_changes": dirty}


def _time(value: str | None) -> datetime | None:
    try:
        return datetime.strptime(value or "", TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def read_invocation(path: str, now: datetime) -> dict:
    """One invocation file as a dict; an invocation without an end (the one writing the report) ends ``now``."""
    inv: dict = {"file": os.path.basename(path), "env": {}}
    for line in read_lines(path):
        key, _, value = line.partition(" ")
        if key == "env":
            name, _, val = value.partition("=")
            inv["env"][name] = val
        elif key:
            inv[key] = value
    start, end = _time(inv.get("start")), _time(inv.get("end"))
    if start is not None and end is None:
        inv["end"] = None  # still running when the report was written
    stop = end or now
    inv["seconds"] = round((stop - start).total_seconds(), 1) if start is not None else None
    return inv


def invocations(run_dir: str, now: datetime) -> list[dict]:
    """Every recipe invocation recorded in the run folder, oldest first."""
    files = sorted(glob.glob(os.path.join(run_dir, INVOCATIONS, "invocation-*.txt")))
    return [read_invocation(path, now) for path in files]


def checkpoints(run_dir: str) -> dict[str, str]:
    """sha256 of every checkpoint the run passed on, by path in the run folder (sorted).

    Each training's (``NAME/train.done`` names it; a folder moved aside, ``NAME.previous``, is not
    the run's), the exported student and each exported CTranslate2 model's ``model.bin``.
    """
    paths = []
    for done in glob.glob(os.path.join(run_dir, "*", "train.done")):
        if os.path.basename(os.path.dirname(done)).endswith(".previous"):
            continue
        with open(done, encoding="utf-8") as f:
            paths.append(json.load(f)["checkpoint"])
    paths += [os.path.relpath(p, run_dir) for p in glob.glob(os.path.join(run_dir, "export", "*.pt"))]
    paths += [os.path.relpath(p, run_dir) for p in glob.glob(os.path.join(run_dir, "export", "*", "model.bin"))]
    found = {}
    for rel in sorted(set(paths)):
        full = os.path.join(run_dir, rel)
        found[rel] = file_sha256(full) if os.path.exists(full) else "missing"
    return found


def job_seconds(run_dir: str) -> dict[str, float | None]:
    """Each job's wall seconds, from its Snakemake benchmark file ``times/JOB.tsv`` (column ``s``)."""
    found: dict[str, float | None] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "times", "*.tsv"))):
        job = os.path.basename(path)[:-len(".tsv")]
        if job == OWN_JOB:
            continue
        lines = read_lines(path)
        try:
            header, row = lines[0].split("\t"), lines[1].split("\t")
            found[job] = round(float(row[header.index("s")]), 1)
        except (IndexError, ValueError):
            found[job] = None  # a job killed while Snakemake wrote it
    return found


def collect_provenance(run_dir: str, now: datetime | None = None) -> dict:
    """Everything a rerun is compared against: see the module docstring."""
    now = now or datetime.now(UTC).replace(microsecond=0)
    runs = invocations(run_dir, now)
    jobs = job_seconds(run_dir)
    return {
        "report_written": now.strftime(TIME_FORMAT),
        "code": git_state(os.path.dirname(os.path.abspath(__file__))),
        "versions": versions(),
        "invocations": runs,
        "run_seconds": round(sum(r["seconds"] or 0 for r in runs), 1),
        "checkpoints_sha256": checkpoints(run_dir),
        "job_seconds": jobs,
        "jobs_seconds_total": round(sum(s or 0 for s in jobs.values()), 1),
    }


def provenance_lines(prov: dict) -> list[str]:
    """The provenance as stable lines, one item a line, sorted within each kind (invocations in order)."""
    code = prov.get("code")
    lines = [f"code {code['commit']} uncommitted_changes {'yes' if code['uncommitted_changes'] else 'no'}"
             if code else "code unknown (not a git checkout)"]
    lines += [f"version {name} {version}" for name, version in sorted(prov["versions"].items())]
    for i, inv in enumerate(prov["invocations"], 1):
        end = inv.get("end") or f"running (report written {prov['report_written']})"
        lines.append(f"invocation {i} start {inv.get('start')} end {end} seconds {inv.get('seconds')} "
                     f"exit {inv.get('exit', 'running')}")
        lines.append(f"invocation {i} command {inv.get('command')}")
        lines.append(f"invocation {i} host {inv.get('host')} cwd {inv.get('cwd')}")
        lines.append(f"invocation {i} commit {inv.get('commit')} uncommitted_changes "
                     f"{inv.get('uncommitted_changes')}")
        lines += [f"invocation {i} env {name}={value}" for name, value in sorted(inv["env"].items())]
    lines.append(f"run seconds {prov['run_seconds']} invocations {len(prov['invocations'])}")
    lines += [f"sha256 {path} {digest}" for path, digest in sorted(prov["checkpoints_sha256"].items())]
    lines += [f"job_seconds {job} {s}" for job, s in sorted(prov["job_seconds"].items())]
    lines.append(f"jobs seconds_total {prov['jobs_seconds_total']} jobs {len(prov['job_seconds'])}")
    return lines
