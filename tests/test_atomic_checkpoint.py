"""fairseq's checkpoint copies (checkpoint_last.pt, ...) go through a temporary file and a rename."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import train_tiny
from fairseq import checkpoint_utils
from fairseq.dataclass.configs import CheckpointConfig
from fairseq.file_io import PathManager

import fairseq_seqkd
from fairseq_seqkd.checkpoints.save import AtomicCopyPathManager


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save_interval(save_dir: Path, updates: int, payload: torch.Tensor) -> None:
    """fairseq's own save_checkpoint at an interval update: it writes checkpoint_1_N.pt, copies it to _last."""
    cfg = CheckpointConfig(save_dir=str(save_dir), save_interval_updates=1, no_epoch_checkpoints=True)
    trainer = SimpleNamespace(
        data_parallel_rank=0, consolidate_optimizer=lambda: None, should_save_checkpoint_on_current_rank=True,
        checkpoint_suffix="", get_num_updates=lambda: updates, task=None,
        save_checkpoint=lambda path, extra: checkpoint_utils.torch_persistent_save({"payload": payload, **extra}, path))
    epoch_itr = SimpleNamespace(epoch=1, end_of_epoch=lambda: False, state_dict=lambda: {"epoch": 1})
    checkpoint_utils.save_checkpoint(cfg, trainer, epoch_itr, None)


def test_fairseq_train_replaces_checkpoint_last_and_resumes_from_it(toy_data_bin, tmp_path):
    save_dir = tmp_path / "ckpt"
    # an interval checkpoint at every update; the toy epoch is 6 updates long, and at an epoch's end fairseq
    # writes checkpoint_last.pt itself instead of copying it
    last = train_tiny(toy_data_bin, save_dir, "--save-interval-updates", "1", max_update=2, task="translation_kd")
    # a hard link keeps the inode the first run left: an in-place copy would overwrite it, a rename does not
    os.link(last, tmp_path / "first_last.pt")
    first = _sha(last)
    assert first == _sha(save_dir / "checkpoint_1_2.pt")  # checkpoint_last.pt is a copy of the interval's file
    train_tiny(toy_data_bin, save_dir, "--save-interval-updates", "1", max_update=4, task="translation_kd")
    assert _sha(last) == _sha(save_dir / "checkpoint_1_4.pt") != first  # the second run resumed and went on
    assert _sha(tmp_path / "first_last.pt") == first
    assert torch.load(last, weights_only=True)["optimizer_history"][-1]["num_updates"] == 4
    assert not list(save_dir.glob("*.tmp"))


def test_copy_that_fails_midway_leaves_the_old_checkpoint_whole(tmp_path, monkeypatch):
    fairseq_seqkd.register()
    _save_interval(tmp_path, 1, torch.zeros(10))
    last = tmp_path / "checkpoint_last.pt"
    old = _sha(last)

    real_copyfile = shutil.copyfile

    def torn_copyfile(src, dst, *args, **kwargs):  # a kill or a full disk half way through the bytes
        with open(src, "rb") as f, open(dst, "wb") as g:
            g.write(f.read()[:1000])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", torn_copyfile)
    with pytest.raises(OSError, match="No space left"):
        _save_interval(tmp_path, 2, torch.ones(100_000))
    monkeypatch.setattr(shutil, "copyfile", real_copyfile)

    assert (tmp_path / "checkpoint_1_2.pt").exists()  # the new interval file was written ...
    assert _sha(last) == old  # ... but checkpoint_last.pt is the previous one, whole
    assert torch.equal(torch.load(last, weights_only=True)["payload"], torch.zeros(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_1_1.pt", "checkpoint_1_2.pt",
                                                          "checkpoint_last.pt"]


def test_register_twice_wraps_once(tmp_path, monkeypatch):
    fairseq_seqkd.register()
    fairseq_seqkd.register()
    assert checkpoint_utils.PathManager is AtomicCopyPathManager
    assert AtomicCopyPathManager.__bases__ == (PathManager,)
    assert PathManager.copy is not AtomicCopyPathManager.copy  # fairseq's own class is left as it is

    calls = []
    real_copyfile = shutil.copyfile
    monkeypatch.setattr(shutil, "copyfile", lambda *a, **k: calls.append(a) or real_copyfile(*a, **k))
    _save_interval(tmp_path, 1, torch.zeros(3))
    assert len(calls) == 1
    assert torch.equal(torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)["payload"], torch.zeros(3))
