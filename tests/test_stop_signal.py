"""A training told by SIGURG (a cluster's warning before its time limit) saves, stops and is not done;
run again, it resumes from that checkpoint and finishes. The real fairseq-train, through jobs.train."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_TRANSFORMER, TRAIN_COMMON, plugin_dir, process_commands

from fairseq_seqkd import layout

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import jobs  # noqa: E402

MAX_UPDATE = 300


def _signal_when_training(log: Path, save: Path, after: str) -> threading.Thread:
    def send():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if log.exists() and after in log.read_text(errors="replace"):
                for pid in [p for p, c in process_commands().items() if "fairseq-train" in c and str(save) in c]:
                    os.kill(pid, signal.SIGURG)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def _updates(ckpt: Path) -> int:
    return torch.load(ckpt, weights_only=False)["optimizer_history"][-1]["num_updates"]


def test_sigurg_saves_stops_and_the_rerun_resumes(toy_data_bin, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save, log, done = tmp_path / "student", tmp_path / "logs/train.log", tmp_path / "student/train.done"
    cmd = ["fairseq-train", str(toy_data_bin), "--user-dir", plugin_dir(), "--task", "translation_kd",
           *TINY_TRANSFORMER, *TRAIN_COMMON, "--log-interval", "1", "--max-update", str(MAX_UPDATE),
           "--save-dir", str(save)]
    # the signal once the first logged update is there (--log-interval 1): mid-training, not at its end
    sender = _signal_when_training(log, save, "num_updates")
    with pytest.raises(jobs.JobFailed, match="stopped on the warning signal .* update [0-9]+"):
        jobs.train(cmd, save, "checkpoint_last.pt", done, log, [])
    sender.join()
    text = log.read_text()
    assert "got SIGURG" in text and "saving a checkpoint" in text
    stopped_at = _updates(save / "checkpoint_last.pt")
    assert 0 < stopped_at < MAX_UPDATE
    assert not done.exists() and not (save / jobs.DONE_RECORD).exists()  # not finished: not recorded as done
    assert not Path(layout.stopped_on_signal(save)).exists()

    jobs.train(cmd, save, "checkpoint_last.pt", done, log, [])  # the retry
    assert f"@ {stopped_at} updates)" in log.read_text()  # fairseq's "Loaded checkpoint ... (epoch E @ N updates)"
    assert _updates(save / "checkpoint_last.pt") == MAX_UPDATE
    assert done.exists()
