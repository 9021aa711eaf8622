"""Training on 2 data-parallel ranks resumes, fine-tunes and retrains pruned: real fairseq-train, 2 gloo ranks on CPU.

With more than one rank, fairseq 0.12 reads a checkpoint on rank 0 only and sends it to the other ranks
(``trainer.load_checkpoint`` -> ``distributed_utils.broadcast_object``), for a resume and for
``--finetune-from-model`` alike; these runs go through that path exactly as a multi-GPU run does.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import BIN, TINY_TRANSFORMER, TRAIN_COMMON, plugin_dir

from fairseq_seqkd.checkpoints.storage import load_checkpoint
from fairseq_seqkd.compress.pruning import find_checkpoint_masks, prunable_parameters

RANKS = 2
FIRST_UPDATES = 10
TIMEOUT_S = 300  # a rank whose peer died waits in a collective: never wait for it forever


def train_on_ranks(data_bin: Path, save_dir: Path, max_update: int, *extra: str) -> str:
    """fairseq-train on :data:`RANKS` gloo ranks, one process each, as a launcher would start them; return
    rank 0's log (the other ranks log warnings only)."""
    save_dir.mkdir(parents=True, exist_ok=True)
    attempt = len(list(save_dir.glob("rank0.*.log")))
    init = save_dir / f"dist-init.{attempt}"  # file:// rendezvous: a fresh file per run, no port to pick
    # --distributed-no-spawn: fairseq spawns one process per GPU, none on CPU; --ddp-backend legacy_ddp:
    # the c10d default needs a GPU
    command = [str(BIN / "fairseq-train"), str(data_bin), "--user-dir", plugin_dir(), "--task", "translation_kd",
               *TINY_TRANSFORMER, *TRAIN_COMMON, "--max-update", str(max_update), "--save-dir", str(save_dir),
               "--distributed-world-size", str(RANKS), "--distributed-init-method", f"file://{init}",
               "--distributed-no-spawn", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp",
               *map(str, extra)]
    logs = [save_dir / f"rank{rank}.{attempt}.log" for rank in range(RANKS)]
    procs = []
    try:
        for rank, log in enumerate(logs):  # logs to files: a full pipe would stall a rank and then its peers
            with open(log, "w") as out:
                procs.append(subprocess.Popen([*command, "--distributed-rank", str(rank)], stdout=out,
                                              stderr=subprocess.STDOUT))
        for proc in procs:
            proc.wait(timeout=TIMEOUT_S)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    texts = [log.read_text() for log in logs]
    if any(proc.returncode != 0 for proc in procs):
        raise AssertionError("fairseq-train on 2 ranks failed: " + ", ".join(
            f"rank {r} exited {p.returncode}" for r, p in enumerate(procs)) + "\n" + "\n".join(
            f"---- rank {r}, last lines:\n{text[-4000:]}" for r, text in enumerate(texts)))
    return texts[0]


def num_updates(ckpt: Path) -> int:
    return load_checkpoint(str(ckpt))["optimizer_history"][-1]["num_updates"]


@pytest.fixture(scope="module")
def trained_on_2_ranks(toy_data_bin, tmp_path_factory) -> Path:
    """A tiny transformer trained :data:`FIRST_UPDATES` updates on 2 ranks: its save dir."""
    save_dir = tmp_path_factory.mktemp("two_ranks")
    train_on_ranks(toy_data_bin, save_dir, FIRST_UPDATES)
    assert num_updates(save_dir / "checkpoint_last.pt") == FIRST_UPDATES
    return save_dir


def test_resume_on_2_ranks(toy_data_bin, trained_on_2_ranks, tmp_path):
    save_dir = tmp_path / "resumed"
    shutil.copytree(trained_on_2_ranks, save_dir)
    log = train_on_ranks(toy_data_bin, save_dir, FIRST_UPDATES + 6)
    assert f"@ {FIRST_UPDATES} updates)" in log and "Loaded checkpoint" in log, log[-3000:]
    assert "done training" in log
    assert num_updates(save_dir / "checkpoint_last.pt") == FIRST_UPDATES + 6


def test_finetune_from_model_on_2_ranks(toy_data_bin, trained_on_2_ranks, tmp_path):
    start = trained_on_2_ranks / "checkpoint_last.pt"
    log = train_on_ranks(toy_data_bin, tmp_path / "finetuned", 5, "--finetune-from-model", start)
    assert f"Loaded checkpoint {start}" in log and "done training" in log, log[-3000:]
    assert num_updates(tmp_path / "finetuned" / "checkpoint_last.pt") == 5  # counters reset by the fine-tune


def test_pruned_retraining_resumes_on_2_ranks_with_its_masks(toy_data_bin, trained_on_2_ranks, tmp_path):
    # as the pipeline's train_pruned does it: a fine-tune from a trained student, pruning before the first update
    start, save_dir = trained_on_2_ranks / "checkpoint_last.pt", tmp_path / "pruned"
    prune = ("--prune-ratio", "0.5", "--prune-scheme", "class-blind")
    log = train_on_ranks(toy_data_bin, save_dir, 5, "--finetune-from-model", start, *prune)
    assert "masks made from the current weights" in log and "done training" in log, log[-3000:]
    masks, spec = find_checkpoint_masks(load_checkpoint(str(save_dir / "checkpoint_last.pt")))
    assert spec["ratio"] == 0.5

    log = train_on_ranks(toy_data_bin, save_dir, 9, *prune)  # resumed from its own checkpoint_last.pt
    assert "@ 5 updates)" in log and "masks restored from the checkpoint" in log, log[-3000:]
    state = load_checkpoint(str(save_dir / "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == 9
    resumed, _ = find_checkpoint_masks(state)
    assert resumed.keys() == masks.keys() and all(torch.equal(resumed[n], masks[n]) for n in masks)
    params = prunable_parameters(state["model"].items())
    for name, keep in masks.items():
        assert torch.count_nonzero(params[name][~keep]) == 0, f"{name}: a pruned weight is not 0 after resume"


def test_only_the_broadcast_is_trusted_files_keep_the_weights_only_check(tmp_path):
    import pickle

    from omegaconf import OmegaConf

    import fairseq_seqkd

    fairseq_seqkd.register()
    from fairseq.distributed import utils as dist_utils

    installed = dist_utils._broadcast_object_slow
    assert installed.trusted_receive
    fairseq_seqkd.register()  # a second registration does not wrap the wrapper
    assert dist_utils._broadcast_object_slow is installed
    # a file holding what the broadcast holds is still refused by torch.load's default
    path = tmp_path / "with_dictconfig.pt"
    torch.save({"model": {}, "cfg": OmegaConf.create({"a": 1})}, path)
    with pytest.raises(pickle.UnpicklingError, match="DictConfig"):
        torch.load(path)


def test_ranks_started_by_torchrun_train_on_cpu(toy_data_bin, trained_on_2_ranks, tmp_path):
    """torchrun's environment (MASTER_ADDR, RANK, WORLD_SIZE) on a machine without CUDA: fairseq 0.12 takes
    the rank modulo the number of GPUs (ZeroDivisionError); the plugin starts the ranks without a device.
    The checkpoint is of the same kind as one written by ranks started one by one."""
    save_dir = tmp_path / "torchrun"
    proc = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(RANKS), "--no-python",
         str(BIN / "fairseq-train"), str(toy_data_bin), "--user-dir", plugin_dir(), "--task", "translation_kd",
         *TINY_TRANSFORMER, *TRAIN_COMMON, "--max-update", str(FIRST_UPDATES), "--save-dir", str(save_dir),
         "--distributed-world-size", str(RANKS), "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp"],
        capture_output=True, text=True, timeout=TIMEOUT_S)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "distributed init (rank 1)" in log, log[-3000:]
    ours, theirs = (load_checkpoint(str(d / "checkpoint_last.pt")) for d in (save_dir, trained_on_2_ranks))
    assert ours["cfg"]["distributed_training"]["distributed_world_size"] == RANKS
    assert {k: v.shape for k, v in ours["model"].items()} == {k: v.shape for k, v in theirs["model"].items()}
    assert num_updates(save_dir / "checkpoint_last.pt") == FIRST_UPDATES
