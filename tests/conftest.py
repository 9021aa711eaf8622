"""Session fixtures on real, tiny data: a toy corpus, its binarized form, a trained teacher.

Everything runs the real fairseq commands (no mocks); sizes are chosen so the whole session
setup takes well under a minute on 2 CPU cores. Helpers here are importable from tests as
``from conftest import run_cli, TINY_TRANSFORMER``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# One thread per process: the suite runs several torch processes at once on 2 cores, and
# oversubscribed threads stall (40 updates: 12 s with 1 thread, 100 s with 2 on busy cores).
os.environ.setdefault("OMP_NUM_THREADS", "1")

BIN = Path(sys.executable).parent
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TOY_SIZES = {"train": 800, "valid": 64, "test": 61}  # 61: not a multiple of 8, on purpose

# A transformer small enough to train 40 updates in seconds on 2 cores.
TINY_TRANSFORMER = [
    "--arch", "transformer", "--share-all-embeddings",
    "--encoder-layers", "1", "--decoder-layers", "1",
    "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
    "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64",
    "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
]
# --data-buffer-size 0: no prefetching thread. fairseq's is a daemon thread that can be inside torch
# when the interpreter exits, and the process then aborts after training finished ("terminate
# called without an active exception", exit -6; seen once in make test on busy cores)
TRAIN_COMMON = [
    "--data-buffer-size", "0", "--optimizer", "adam", "--lr", "0.005", "--lr-scheduler", "inverse_sqrt",
    "--warmup-updates", "10", "--max-tokens", "2000", "--required-batch-size-multiple", "1",
    "--no-progress-bar", "--log-interval", "10", "--seed", "1", "--cpu",
    "--no-epoch-checkpoints", "--disable-validation", "--num-workers", "0",
]


def run_cli(name: str, *args: str, cwd: str | os.PathLike | None = None, check: bool = True,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a console script of the venv (fairseq-train, fairseq-seqkd, ...) and capture output."""
    proc = subprocess.run([str(BIN / name), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} {' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def train_tiny(data_bin: Path, save_dir: Path, *extra: str, max_update: int = 40,
               task: str = "translation", arch_args: list[str] | None = None) -> Path:
    """Train a tiny transformer with the real fairseq-train; return checkpoint_last.pt."""
    run_cli("fairseq-train", data_bin, "--user-dir", plugin_dir(), "--task", task,
            *(arch_args or TINY_TRANSFORMER), *TRAIN_COMMON, "--max-update", str(max_update),
            "--save-dir", save_dir, *extra)
    ckpt = save_dir / "checkpoint_last.pt"
    assert ckpt.exists(), f"fairseq-train wrote no {ckpt}"
    return ckpt


def generate_in_process(data_bin: Path | str, teacher: Path | str, out: Path, *extra) -> Path:
    """fairseq-generate's own main in this process (the console script minus interpreter start-up);
    only what it prints to its output file (no log lines) ends up in ``out``."""
    from fairseq import options
    from fairseq_cli import generate

    import fairseq_seqkd

    fairseq_seqkd.register()  # --user-dir imports nothing where the package is imported already
    argv = [data_bin, "--user-dir", plugin_dir(), "--task", "translation_kd", "--path", teacher,
            "--required-batch-size-multiple", 1, "--cpu", "--num-workers", 0, *extra,
            "--results-path", out.parent / (out.name + ".d")]
    args = options.parse_args_and_arch(options.get_generation_parser(), [str(a) for a in argv])
    generate.main(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.parent / (out.name + ".d") / f"generate-{args.gen_subset}.txt").rename(out)
    return out


def process_commands(pgid: int | None = None) -> dict[int, str]:
    """The running processes (of process group ``pgid``, else all): pid -> command line."""
    out = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if pgid is None or os.getpgid(int(proc.name)) == pgid:
                    out[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (ProcessLookupError, FileNotFoundError, PermissionError):
                continue
    return out


def plugin_dir() -> str:
    """The --user-dir argument: the fairseq_seqkd package folder."""
    return str(Path(__file__).resolve().parents[1] / "fairseq_seqkd")


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory) -> Path:
    """Raw toy corpus: {train,valid,test}.{en,de}."""
    from fairseq_seqkd.data.toy_corpus import write_corpus

    out = tmp_path_factory.mktemp("toy_raw")
    write_corpus(str(out), TOY_SIZES, seed=7)
    return out


@pytest.fixture(scope="session")
def toy_data_bin(toy_corpus, tmp_path_factory) -> Path:
    """The toy corpus binarized by fairseq-preprocess with a joined dictionary."""
    out = tmp_path_factory.mktemp("toy_bin")
    run_cli("fairseq-preprocess", "--source-lang", "en", "--target-lang", "de",
            "--trainpref", toy_corpus / "train", "--validpref", toy_corpus / "valid",
            "--testpref", toy_corpus / "test", "--destdir", out, "--joined-dictionary",
            "--workers", "1")
    return out


@pytest.fixture(scope="session")
def toy_teacher(toy_data_bin, tmp_path_factory) -> Path:
    """A tiny transformer trained 40 updates on the toy corpus: checkpoint_last.pt."""
    return train_tiny(toy_data_bin, tmp_path_factory.mktemp("toy_teacher"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip where it is absent (a user's machine)."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present (only on the project's machines and CI)")
    return SHARED_DATA


# The quick tier (`make check`, after every change) leaves out the pipeline runs (marker recipes) and
# these, each of which trains or translates for 8 seconds or more on 2 cores; `make test` runs all.
SLOW = (
    "test_kbest.py::test_pooled_kbest_lists_of_a_fairseq_and_a_ctranslate2_teacher_chosen_by_mbr",  # two teachers
    "test_ct2_teacher.py",
    "test_teacher_folder.py",
    "test_atomic_checkpoint.py",
    "test_distributed_resume.py::test_resume_on_2_ranks",
    "test_distributed_resume.py::test_finetune_from_model_on_2_ranks",
    "test_distributed_resume.py::test_pruned_retraining_resumes_on_2_ranks_with_its_masks",
    "test_pruning.py::test_gradual_pruning_grows_nested_masks_and_resumes",
    "test_pruning.py::test_masks_hold_through_retraining_and_resume",
    "test_pruning.py::test_masks_identical_on_all_ranks",
    "test_seq_inter.py::test_generation_outside_distributed_translates_everything",
    "test_evaluation_report.py::test_evaluate_checkpoint_writes_what_the_separate_commands_write",
)


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        where = item.nodeid.split("tests/", 1)[-1]
        if any(where == s or where.startswith(f"{s}::") or where.startswith(f"{s}[") for s in SLOW):
            item.add_marker(pytest.mark.slow)
