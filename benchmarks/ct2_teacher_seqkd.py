"""Seq-KD from a fairseq teacher's translations against its int8 CTranslate2 export's, on a finished run.

Issue 17 item 4: students trained from the two teachers' translations of the training set should
score within 0.5 BLEU of each other. Given a finished run folder (``make demo``: ``runs/toy``), this
script, through the project's own commands only:

1. exports the run's teacher to CTranslate2 int8 (``fairseq-seqkd export --ct2 --quantization
   int8``; ``--data`` the run's ``data-bin``, as the checkpoint names its data folder relative to
   the run);
2. translates the training source with ``fairseq-seqkd ct2-translate`` at the beam and length
   bounds of the run's own Seq-KD ``fairseq-generate`` (read from ``logs/generate_shard.seqkd.0000.log``),
   and reruns that ``fairseq-generate`` itself, so both decodes are timed in one run on the same
   thread count (the run's own time was taken beside other jobs);
3. builds both Seq-KD corpora with ``fairseq-seqkd extract`` (word-level text: no subword model);
4. trains the CTranslate2 teacher's student with exactly the run's recorded Seq-KD command
   (``seq_kd/train.done``) on the new corpus and a new ``--save-dir``;
5. scores the run's Seq-KD student and the new one, greedy and beam, on valid and test, with the
   run's evaluation ``fairseq-generate`` commands and ``fairseq-seqkd evaluate``.

``--extra-seeds 2``: both students trained again with seed 2 (the run's is 1), a measure of the
seed noise the gap sits in. Figures measured on a demo run: docs/any-teacher.md (the last section).
``--quick``: the first 2,000 training pairs, both students trained 300 updates from the two
teachers' translations of them and scored on test only: a check that the steps run (about 5
minutes on 2 shared cores), not the comparison (such students score near 0 BLEU).
Every step writes into ``--out`` and is skipped when its output is there (a rerun resumes; a killed
training resumes from its ``checkpoint_last.pt``). Commands and their stderr: ``OUT/logs/``.
Prints progress on stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

PLUGIN = str(Path(__file__).resolve().parents[1] / "fairseq_seqkd")
SPLITS = ("valid", "test")
DECODINGS = ("greedy", "beam")


def log(msg: str) -> None:
    """Progress on stderr."""
    print(f"[ct2_teacher_seqkd] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], logfile: Path, threads: int, stdout: Path | None = None) -> dict:
    """Run ``cmd`` (stderr into ``logfile``, stdout into ``stdout`` atomically); its wall and CPU seconds."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    local = Path(sys.executable).parent / cmd[0]  # the commands of this interpreter's environment
    cmd = [str(local), *cmd[1:]] if os.sep not in cmd[0] and local.exists() else cmd
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    tmp = stdout.with_name(stdout.name + ".tmp") if stdout else None
    if tmp:
        tmp.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "a") as err:
        err.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} | {shlex.join(cmd)}\n")
        err.flush()
        out = open(tmp, "w") if tmp else subprocess.PIPE
        try:
            proc = subprocess.run(cmd, stdout=out, stderr=err, env=env, text=True)
        finally:
            if tmp:
                out.close()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if not tmp and proc.stdout:  # fairseq-train logs on stdout
        with open(logfile, "a") as err:
            err.write(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {shlex.join(cmd)}\nsee {logfile}")
    if tmp:
        os.replace(tmp, stdout)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "stdout": proc.stdout if not tmp else None}


def recorded_commands(run_dir: Path, name: str, program: str) -> list[list[str]]:
    """The ``program`` commands a pipeline job recorded in ``RUN/logs/NAME.log`` (its ``==== date | cmd`` lines)."""
    path = run_dir / "logs" / f"{name}.log"
    if not path.exists():
        raise SystemExit(f"{path} is missing: is {run_dir} a finished run folder (make demo)?")
    cmds = []
    for line in path.read_text().splitlines():
        if line.startswith("==== ") and " | " in line:
            cmd = shlex.split(line.split(" | ", 1)[1])
            if cmd and cmd[0] == program:
                cmds.append(cmd)
    if not cmds:
        raise SystemExit(f"{path} records no {program} command")
    return cmds


def option(cmd: list[str], name: str) -> str:
    """The value of the last ``name`` in ``cmd``."""
    values = [cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a == name]
    if not values:
        raise SystemExit(f"{name} not in {shlex.join(cmd)}")
    return values[-1]


def with_options(cmd: list[str], data: str, **values: str) -> list[str]:
    """``cmd`` with its data folder (first positional) replaced and each ``--opt-name`` set to ``values``."""
    cmd = [cmd[0], data, *cmd[2:]]
    for key, value in values.items():
        name = "--" + key.replace("_", "-")
        found = [i for i, a in enumerate(cmd) if a == name]
        if not found:
            cmd += [name, str(value)]
        for i in found:
            cmd[i + 1] = str(value)
    return cmd


def same_lines(a: Path, b: Path, limit: int | None = None) -> tuple[int, int]:
    """(identical lines, lines of ``a``) over the first ``limit`` lines of two line-aligned files."""
    left = a.read_text().splitlines()[:limit]
    right = b.read_text().splitlines()[:limit]
    if len(left) != len(right):
        raise SystemExit(f"{a} has {len(left)} lines, {b} {len(right)}: not line-aligned")
    return sum(x == y for x, y in zip(left, right)), len(left)


def subset_data(run_dir: Path, out: Path, n: int, src: str, tgt: str, threads: int) -> Path:
    """The first ``n`` training pairs binarized with the run's dictionaries (valid and test whole)."""
    data = out / "data-sub"
    if (data / f"train.{src}-{tgt}.{tgt}.bin").exists():
        return data
    text = out / "sub"
    text.mkdir(parents=True, exist_ok=True)
    for lang in (src, tgt):
        lines = (run_dir / "prepared" / f"train.{lang}").read_text().splitlines(keepends=True)[:n]
        (text / f"train.{lang}").write_text("".join(lines))
    run(["fairseq-preprocess", "--source-lang", src, "--target-lang", tgt, "--trainpref", str(text / "train"),
         "--validpref", str(run_dir / "prepared" / "valid"), "--testpref", str(run_dir / "prepared" / "test"),
         "--srcdict", str(run_dir / "data-bin" / f"dict.{src}.txt"),
         "--tgtdict", str(run_dir / "data-bin" / f"dict.{tgt}.txt"), "--destdir", str(data), "--workers", "1"],
        out / "logs" / "preprocess.log", threads)
    return data


class Steps:
    """Each step's timing, kept in OUT/steps.json so that a rerun which skips a step still reports it."""

    def __init__(self, path: Path):
        self.path = path
        self.done = json.loads(path.read_text()) if path.exists() else {}

    def __call__(self, name: str, output: Path, fn) -> dict:
        if output.exists() and name in self.done:
            log(f"{name}: done before ({output})")
            return self.done[name]
        log(f"{name} ...")
        result = fn()
        result.pop("stdout", None)
        self.done[name] = result
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.done, indent=1))
        os.replace(tmp, self.path)
        log(f"{name}: {result}")
        return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/toy", help="a finished run folder (default runs/toy)")
    p.add_argument("--out", required=True, help="work folder (resumed when it is there)")
    p.add_argument("--quick", action="store_true",
                   help="first --quick-sentences training pairs, --quick-updates updates: a check, not the comparison")
    p.add_argument("--quick-sentences", type=int, default=2000)
    p.add_argument("--quick-updates", type=int, default=300)
    p.add_argument("--threads", type=int, default=1, help="threads of every command (default 1)")
    p.add_argument("--extra-seeds", type=int, nargs="*", default=[],
                   help="also train both students with each of these seeds (seed noise; the run's own is 1)")
    a = p.parse_args()
    run_dir, out = Path(a.run).resolve(), Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs, steps, threads = out / "logs", Steps(out / "steps.json"), a.threads
    t0 = time.perf_counter()

    # what the run did: its Seq-KD generate, its Seq-KD training, its evaluation generates
    gen = recorded_commands(run_dir, "generate_shard.seqkd.0000", "fairseq-generate")[0]
    train = json.loads((run_dir / "seq_kd" / "train.done").read_text())["command"]
    evals = {int(option(c, "--beam")): c for c in recorded_commands(run_dir, "evaluate.seq_kd", "fairseq-generate")}
    src, tgt = option(gen, "--source-lang"), option(gen, "--target-lang")
    beam, len_a, len_b = option(gen, "--beam"), option(gen, "--max-len-a"), option(gen, "--max-len-b")
    if option(gen, "--num-shards") != "1":
        raise SystemExit("the run translated its training set in several shards: not handled here")
    teacher = run_dir / "teacher" / "checkpoint_best.pt"
    if a.quick:
        data = subset_data(run_dir, out, a.quick_sentences, src, tgt, threads)
        source = out / "sub" / f"train.{src}"
    else:
        data, source = run_dir / "data-bin", run_dir / "prepared" / f"train.{src}"

    # 1. the teacher exported to CTranslate2 int8
    ct2 = out / "teacher-ct2-int8"
    steps("export", ct2 / "model.bin", lambda: run(
        ["fairseq-seqkd", "export", str(teacher), "--out", str(out / "teacher-plain.pt"), "--ct2", str(ct2),
         "--quantization", "int8", "--data", str(run_dir / "data-bin")], logs / "export.log", threads))

    # 2. both teachers translate the training source, each timed on the same thread count
    fs_gen = out / "fairseq-gen" / "train.txt"
    fs_cmd = with_options(gen, str(data), user_dir=PLUGIN, path=str(teacher))

    def generate() -> dict:
        r = run(fs_cmd, logs / "fairseq_generate.log", threads, fs_gen)
        # fairseq's own figure: decoding only, model loading excluded
        from fairseq_seqkd.teacher.generate_output import translated_count  # the one parser

        found = [c for c in map(translated_count, (logs / "fairseq_generate.log").read_text().splitlines()) if c]
        r["reported_s"] = found[-1][2] if found else None
        return r

    fs_time = steps("fairseq_generate", fs_gen, generate)
    ct2_out = out / "ct2-gen" / f"train.{tgt}"
    ct2_out.parent.mkdir(parents=True, exist_ok=True)

    def translate() -> dict:
        r = run(["fairseq-seqkd", "ct2-translate", str(ct2), str(source), "--out", str(ct2_out),
                 "--output-format", "text", "--beam", beam, "--max-len-a", len_a, "--max-len-b", len_b,
                 "--batch-size", option(gen, "--batch-size"), "--threads", str(threads)],
                logs / "ct2_translate.log", threads)
        r["reported_s"] = json.loads(r["stdout"].strip().splitlines()[-1])["seconds"]
        return r

    ct2_time = steps("ct2_translate", ct2_out, translate)

    # 3. the two Seq-KD corpora
    fs_data, ct2_data = out / "data-seqkd-fairseq", out / "data-seqkd-ct2"
    steps("extract_fairseq", fs_data / "train.extract.json", lambda: run(
        ["fairseq-seqkd", "extract", str(fs_gen), "--data", str(data), "--source-lang", src, "--target-lang", tgt,
         "--out", str(fs_data)], logs / "extract_fairseq.log", threads))
    steps("extract_ct2", ct2_data / "train.extract.json", lambda: run(
        ["fairseq-seqkd", "extract", "--translations", str(ct2_out), "--data", str(data), "--source-lang", src,
         "--target-lang", tgt, "--out", str(ct2_data)], logs / "extract_ct2.log", threads))

    # 4. the students: the run's recorded Seq-KD training, on the new corpus (quick: both, shortened);
    # each --extra-seeds value: both students again with that seed, a measure of seed noise
    def train_cmd(corpus: Path, save: Path, seed: int | None) -> list[str]:
        cmd = [c.replace("<fairseq_seqkd>", PLUGIN) for c in map(str, train)]
        extra = {"save_dir": str(save), "user_dir": PLUGIN}
        if seed is not None:
            extra["seed"] = seed
        if a.quick:
            u = a.quick_updates
            extra.update(max_update=u, total_num_update=u, warmup_updates=min(int(option(cmd, "--warmup-updates")),
                                                                               u // 4))
        return with_options(cmd, str(corpus), **extra)

    def train_student(corpus: Path, name: str, seed: int | None = None) -> Path:
        save = out / f"student-{name}"
        done = save / "train.done"
        steps(f"train_{name}", done, lambda: run(train_cmd(corpus, save, seed), logs / f"train_{name}.log", threads))
        done.write_text(json.dumps(steps.done[f"train_{name}"]))
        return save / "checkpoint_last.pt"

    students = {}
    if a.quick:
        students["fairseq_teacher_seqkd"] = train_student(fs_data, "fairseq")
    else:
        students["fairseq_teacher_seqkd"] = run_dir / "seq_kd" / "checkpoint_last.pt"
    students["ct2_int8_teacher_seqkd"] = train_student(ct2_data, "ct2")
    ct2_train = steps.done["train_ct2"]
    for seed in a.extra_seeds:
        students[f"fairseq_teacher_seqkd_seed{seed}"] = train_student(fs_data, f"fairseq-seed{seed}", seed)
        students[f"ct2_int8_teacher_seqkd_seed{seed}"] = train_student(ct2_data, f"ct2-seed{seed}", seed)

    # 5. every student scored as the pipeline scores a system, on valid and test
    def score(name: str, ckpt: Path, split: str) -> dict:
        outputs = {}
        for decoding, b in zip(DECODINGS, (1, 5)):
            o = out / "eval" / split / f"{name}.{decoding}.txt"
            if not o.exists():
                log(f"decode {name} {split} {decoding} ...")
                run(with_options(evals[b], str(run_dir / "data-bin"), user_dir=PLUGIN, path=str(ckpt),
                                 gen_subset=split), Path(f"{o}.log"), threads, o)
            outputs[decoding] = o
        res = out / "results" / split / f"{name}.json"
        if not res.exists():
            run(["fairseq-seqkd", "evaluate", "--greedy-output", str(outputs["greedy"]), "--beam-output",
                 str(outputs["beam"]), "--ref", str(run_dir / "prepared" / f"{split}.{tgt}"), "--src",
                 str(run_dir / "prepared" / f"{split}.{src}"), "--tokenize", "none", "--name", name,
                 "--checkpoint", str(ckpt), "--results-dir", str(res.parent)], logs / "evaluate.log", threads)
        return json.loads(res.read_text())

    result: dict = {}
    splits = ("test",) if a.quick else SPLITS
    for split in splits:
        for name, ckpt in students.items():
            scores = score(name, ckpt, split)
            for decoding in DECODINGS:
                result[f"{name}_{split}_{decoding}"] = scores[f"bleu_{decoding}"]
    keys = [f"{split}_{d}" for split in splits for d in DECODINGS]
    gaps = {}
    for suffix in ["", *(f"_seed{s}" for s in a.extra_seeds)]:
        for k in keys:
            gaps[f"{suffix[1:]}_{k}_gap".lstrip("_")] = round(
                result[f"ct2_int8_teacher_seqkd{suffix}_{k}"] - result[f"fairseq_teacher_seqkd{suffix}_{k}"], 2)
    main_gaps = [gaps[f"{k}_gap"] for k in keys]
    if a.extra_seeds:  # the gap averaged over the seeds (the run's own seed included)
        n = 1 + len(a.extra_seeds)
        for k in keys:
            gaps[f"mean_{k}_gap"] = round((gaps[f"{k}_gap"] + sum(gaps[f"seed{s}_{k}_gap"] for s in a.extra_seeds))
                                          / n, 2)
        gaps["within_0_5_bleu_mean"] = all(abs(gaps[f"mean_{k}_gap"]) <= 0.5 for k in keys)

    # the translations: the two teachers against each other, and this fairseq rerun against the run's own
    fs_text, ct2_text = fs_data / "text" / f"train.{tgt}", ct2_data / "text" / f"train.{tgt}"
    run_text = run_dir / "data-bin-seqkd" / "text" / f"train.{tgt}"
    compared = fs_text if a.quick else run_text  # the corpus the compared fairseq-teacher student learned
    same, total = same_lines(compared, ct2_text)
    rerun_same, rerun_total = same_lines(fs_text, run_text, limit=None if not a.quick else a.quick_sentences)
    run_result = json.loads((run_dir / "results" / "seq_kd.json").read_text())

    print(json.dumps({
        "quick": a.quick,
        "note": ("quick: a check that the steps run, NOT the comparison" if a.quick
                 else "the run's Seq-KD student against one trained from its teacher's int8 CTranslate2 export"),
        "run": str(run_dir), "sentences": total, "beam": int(beam), "max_len_a": float(len_a),
        "max_len_b": float(len_b), "threads": threads,
        "identical_translations": same, "identical_share": round(same / total, 4),
        "fairseq_rerun_identical_to_run": rerun_same, "fairseq_rerun_sentences": rerun_total,
        **result, **gaps,
        "max_abs_gap": max(abs(g) for g in main_gaps),
        # quick: students of 300 updates score near 0, so their gap says nothing
        "within_0_5_bleu": None if a.quick else all(abs(g) <= 0.5 for g in main_gaps),
        "run_seq_kd_test_greedy": run_result.get("bleu_greedy"), "run_seq_kd_test_beam": run_result.get("bleu_beam"),
        "fairseq_generate_wall_s": fs_time["wall_s"], "fairseq_generate_cpu_s": fs_time["cpu_s"],
        "fairseq_generate_reported_s": fs_time["reported_s"],
        "ct2_int8_translate_wall_s": ct2_time["wall_s"], "ct2_int8_translate_cpu_s": ct2_time["cpu_s"],
        "ct2_int8_translate_reported_s": ct2_time["reported_s"],
        "ct2_int8_over_fairseq_wall": round(fs_time["wall_s"] / ct2_time["wall_s"], 2),
        "ct2_int8_over_fairseq_cpu": round(fs_time["cpu_s"] / ct2_time["cpu_s"], 2),
        "ct2_int8_over_fairseq_decode_only": (round(fs_time["reported_s"] / ct2_time["reported_s"], 2)
                                              if fs_time["reported_s"] and ct2_time["reported_s"] else None),
        "ct2_student_train_wall_s": ct2_train["wall_s"],
        "wall_s": round(time.perf_counter() - t0, 1),
    }))


if __name__ == "__main__":
    main()
