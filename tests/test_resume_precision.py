"""A training resumed under another precision (an fp32 attempt, then fp16 on the next machine): fairseq 0.12
resumes a checkpoint only with the same kind of optimizer and would stop with 'Optimizer does not match'.
The precision is part of what a training is (jobs.train): the fp16 attempt is a new training, the fp32 one is
kept under superseded/ and comes back with fp32. The real fairseq-train on CPU (fairseq builds its memory-
efficient fp16 optimizer there too)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from conftest import TINY_TRANSFORMER, TRAIN_COMMON, plugin_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import jobs  # noqa: E402

UPDATES = 4


def _state(ckpt: Path) -> tuple[str, int]:
    last = torch.load(ckpt, weights_only=False)["optimizer_history"][-1]
    return last["optimizer_name"], last["num_updates"]


def test_a_precision_change_is_a_new_training_and_the_old_one_comes_back(toy_data_bin, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save, log, done = tmp_path / "student", tmp_path / "logs/train.log", tmp_path / "student/train.done"
    cmd = ["fairseq-train", str(toy_data_bin), "--user-dir", plugin_dir(), "--task", "translation_kd",
           *TINY_TRANSFORMER, *TRAIN_COMMON, "--max-update", str(UPDATES), "--save-dir", str(save)]
    jobs.train(cmd, save, "checkpoint_last.pt", done, log, [])
    assert _state(save / "checkpoint_last.pt") == ("FairseqAdam", UPDATES)
    # an attempt that did not finish (its records gone), rerun on a machine that trains in fp16
    done.unlink()
    (save / jobs.DONE_RECORD).unlink()
    # --memory-efficient-fp16: fairseq's fp16 optimizer that builds without CUDA (--fp16's flat fp32 copy needs it)
    jobs.train(cmd, save, "checkpoint_last.pt", done, log, [], device=["--memory-efficient-fp16"])
    assert _state(save / "checkpoint_last.pt") == ("MemoryEfficientFP16Optimizer", UPDATES)
    assert "Optimizer does not match" not in log.read_text()
    [kept] = (tmp_path / jobs.SUPERSEDED).iterdir()
    assert _state(kept / "checkpoint_last.pt") == ("FairseqAdam", UPDATES)

    jobs.train(cmd, save, "checkpoint_last.pt", done, log, [])  # back to fp32: that training comes back
    assert _state(save / "checkpoint_last.pt")[0] == "FairseqAdam"
    text = log.read_text()
    assert f"restored from {kept}" in text and f"@ {UPDATES} updates)" in text.split("restored from")[-1]
